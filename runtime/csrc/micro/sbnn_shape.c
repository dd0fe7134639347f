/* Ops that move values: the twins of channel_shuffle and upsample in sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_channel_shuffle(const float *x, float *y, int c, int hw, int groups)
{
    const int per = c / groups;
    int i, j, k;
    for (i = 0; i < groups; ++i)
        for (j = 0; j < per; ++j)
            for (k = 0; k < hw; ++k)
                y[(j * groups + i) * hw + k] = x[(i * per + j) * hw + k];
}

/* source index i0, its neighbour i1 and the neighbour's weight l1 of output o along an axis of
   n inputs, as PyTorch's upsample_bilinear2d computes them in float */
static void sbnn_bilinear_tap(int o, int n, int scale, int align_corners, int *i0, int *i1,
                              float *l1)
{
    float src;
    if (align_corners) {
        const int on = n * scale;
        src = on > 1 ? (float)(n - 1) / (float)(on - 1) * (float)o : 0.0f;
    } else {
        src = (1.0f / (float)scale) * ((float)o + 0.5f) - 0.5f;
        if (src < 0.0f)
            src = 0.0f;
    }
    *i0 = (int)src < n - 1 ? (int)src : n - 1;
    *i1 = *i0 + 1 < n - 1 ? *i0 + 1 : n - 1;
    *l1 = src - (float)*i0;
}

void sbnn_upsample(const float *x, float *y, int c, int h, int w, int scale, int mode,
                   int align_corners)
{
    const int oh = h * scale, ow = w * scale;
    int i, oy, ox, h0, h1, w0, w1;
    float lh, lw;
    for (i = 0; i < c; ++i) {
        const float *xc = x + i * h * w;
        float *yc = y + i * oh * ow;
        for (oy = 0; oy < oh; ++oy) {
            if (mode == 0) {
                for (ox = 0; ox < ow; ++ox)
                    yc[oy * ow + ox] = xc[(oy / scale) * w + ox / scale];
                continue;
            }
            sbnn_bilinear_tap(oy, h, scale, align_corners, &h0, &h1, &lh);
            for (ox = 0; ox < ow; ++ox) {
                sbnn_bilinear_tap(ox, w, scale, align_corners, &w0, &w1, &lw);
                yc[oy * ow + ox] = (1.0f - lh) * ((1.0f - lw) * xc[h0 * w + w0] + lw * xc[h0 * w + w1])
                                   + lh * ((1.0f - lw) * xc[h1 * w + w0] + lw * xc[h1 * w + w1]);
            }
        }
    }
}
