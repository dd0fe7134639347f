/* Pooling: the twins of maxpool, avgpool and global_avgpool in sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_pool2d(const float *x, float *y, int c, int h, int w, int kh, int kw, int sh, int sw,
                 int pt, int pl, int pb, int pr, int oh, int ow, int is_max, int cip)
{
    int i, oy, ox, iy, ix;
    for (i = 0; i < c; ++i) {
        const float *xc = x + i * h * w;
        for (oy = 0; oy < oh; ++oy) {
            const int y0 = oy * sh - pt;
            const int y1 = y0 + kh < h + pb ? y0 + kh : h + pb; /* past the trailing pad: out */
            const int a0 = y0 < 0 ? 0 : y0, a1 = y1 < h ? y1 : h;
            for (ox = 0; ox < ow; ++ox) {
                const int x0 = ox * sw - pl;
                const int x1 = x0 + kw < w + pr ? x0 + kw : w + pr;
                const int b0 = x0 < 0 ? 0 : x0, b1 = x1 < w ? x1 : w;
                float acc = is_max ? xc[a0 * w + b0] : 0.0f;
                for (iy = a0; iy < a1; ++iy) {
                    for (ix = b0; ix < b1; ++ix) {
                        const float v = xc[iy * w + ix];
                        if (is_max)
                            acc = v > acc ? v : acc;
                        else
                            acc += v;
                    }
                }
                if (!is_max)
                    acc = acc / (float)(cip ? (y1 - y0) * (x1 - x0) : (a1 - a0) * (b1 - b0));
                y[(i * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

void sbnn_pool(const float *x, float *y, int c, int h, int w, int k, int s, int p, int oh,
               int ow, int is_max, int cip)
{
    sbnn_pool2d(x, y, c, h, w, k, k, s, s, p, p, p, p, oh, ow, is_max, cip);
}

void sbnn_global_avgpool(const float *x, float *y, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        float acc = 0.0f;
        for (j = 0; j < hw; ++j)
            acc += x[i * hw + j];
        y[i] = acc / (float)hw;
    }
}
