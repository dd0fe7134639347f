/* Float conv: the twin of conv2d in sbnn_runtime.ops; and a binary conv of any geometry from
   its packed bits (the float conv of its folded weight, whose values it looks up). */
#include "sbnn_micro.h"

/* any geometry; tap t of output o weighs wt[t], or w01[2 o + bit t of bits] when packed (a
   constant at each call, so each entry point compiles to its own loop) */
static void sbnn_conv_any(const float *x, float *y, const float *wt, const uint8_t *bits,
                          const float *w01, int packed, const float *bias, int ci, int h, int w,
                          int co, int kh, int kw, const int *g, int oh, int ow, float *plane,
                          float *tmp, const float *res, const sbnn_epi *e)
{
    const int sh = g[0], sw = g[1], pt = g[2], pl = g[3], dh = g[4], dw = g[5];
    const int cig = ci / g[6], cog = co / g[6];
    int o, oy, ox, c, ky, kx;
    for (o = 0; o < co; ++o) {
        float *yo = e ? plane : y + o * oh * ow;
        const float *xg = x + (o / cog) * cig * h * w; /* the group's first input channel */
        for (oy = 0; oy < oh * ow; ++oy)
            yo[oy] = 0.0f;
        /* tap by tap over the output pixels it reaches: the taps of each pixel still add up
           in (c, ky, kx) order, and no bounds test sits in the inner loop */
        for (c = 0; c < cig; ++c) {
            for (ky = 0; ky < kh; ++ky) {
                /* output rows whose input row oy*sh + iy lies in [0, h) */
                const int iy = ky * dh - pt;
                const int oy0 = iy >= 0 ? 0 : (sh - 1 - iy) / sh;
                const int oy1 = (h - 1 - iy) < 0 ? 0 : (h - 1 - iy) / sh + 1;
                for (kx = 0; kx < kw; ++kx) {
                    const int t = ((o * cig + c) * kh + ky) * kw + kx;
                    const float wv =
                        packed ? w01[2 * o + ((bits[t >> 3] >> (t & 7)) & 1)] : wt[t];
                    const int ix = kx * dw - pl;
                    const int ox0 = ix >= 0 ? 0 : (sw - 1 - ix) / sw;
                    const int ox1 = (w - 1 - ix) < 0 ? 0 : (w - 1 - ix) / sw + 1;
                    const int oye = oy1 < oh ? oy1 : oh, oxe = ox1 < ow ? ox1 : ow;
                    for (oy = oy0; oy < oye; ++oy) {
                        const float *xr = xg + (c * h + oy * sh + iy) * w + ix;
                        float *yr = yo + oy * ow;
                        if (sw == 1) /* the common case: contiguous, no multiply per tap */
                            for (ox = ox0; ox < oxe; ++ox)
                                yr[ox] += wv * xr[ox];
                        else
                            for (ox = ox0; ox < oxe; ++ox)
                                yr[ox] += wv * xr[ox * sw];
                    }
                }
            }
        }
        if (bias)
            for (oy = 0; oy < oh * ow; ++oy)
                yo[oy] += bias[o];
        if (e)
            sbnn_epilogue(e, plane, oh, ow, o, y, tmp, res);
    }
}

void sbnn_conv2d_ex(const float *x, float *y, const float *wt, const float *bias, int ci, int h,
                    int w, int co, int kh, int kw, const int *g, int oh, int ow, float *plane,
                    float *tmp, const float *res, const sbnn_epi *e)
{
    sbnn_conv_any(x, y, wt, 0, 0, 0, bias, ci, h, w, co, kh, kw, g, oh, ow, plane, tmp, res, e);
}

void sbnn_conv2d_bits(const float *x, float *y, const uint8_t *bits, const float *w01,
                      const float *bias, int ci, int h, int w, int co, int kh, int kw,
                      const int *g, int oh, int ow, float *plane, float *tmp, const float *res,
                      const sbnn_epi *e)
{
    sbnn_conv_any(x, y, 0, bits, w01, 1, bias, ci, h, w, co, kh, kw, g, oh, ow, plane, tmp, res,
                  e);
}

void sbnn_conv2d(const float *x, float *y, const float *wt, const float *bias, int ci, int h,
                 int w, int co, int kh, int kw, int s, int p, int oh, int ow, float *plane,
                 float *tmp, const float *res, const sbnn_epi *e)
{
    int g[7];
    g[0] = g[1] = s;
    g[2] = g[3] = p;
    g[4] = g[5] = g[6] = 1;
    sbnn_conv2d_ex(x, y, wt, bias, ci, h, w, co, kh, kw, g, oh, ow, plane, tmp, res, e);
}

void sbnn_sign_planes(const float *x, float *y, const float *thr, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        const float t = thr ? thr[i] : 0.0f;
        for (j = 0; j < hw; ++j)
            y[i * hw + j] = x[i * hw + j] >= t ? 1.0f : -1.0f;
    }
}
