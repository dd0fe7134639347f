/* Float conv: the twin of conv2d in sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_conv2d(const float *x, float *y, const float *wt, const float *bias, int ci, int h,
                 int w, int co, int kh, int kw, int s, int p, int oh, int ow, float *plane,
                 float *tmp, const float *res, const sbnn_epi *e)
{
    int o, oy, ox, c, ky, kx;
    for (o = 0; o < co; ++o) {
        float *yo = e ? plane : y + o * oh * ow;
        for (oy = 0; oy < oh * ow; ++oy)
            yo[oy] = 0.0f;
        /* tap by tap over the output pixels it reaches: the taps of each pixel still add up
           in (c, ky, kx) order, and no bounds test sits in the inner loop */
        for (c = 0; c < ci; ++c) {
            for (ky = 0; ky < kh; ++ky) {
                /* output rows whose input row oy*s - p + ky lies in [0, h) */
                const int oy0 = ky >= p ? 0 : (p - ky + s - 1) / s;
                const int oy1 = (h - 1 + p - ky) < 0 ? 0 : (h - 1 + p - ky) / s + 1;
                for (kx = 0; kx < kw; ++kx) {
                    const float wv = wt[((o * ci + c) * kh + ky) * kw + kx];
                    const int ox0 = kx >= p ? 0 : (p - kx + s - 1) / s;
                    const int ox1 = (w - 1 + p - kx) < 0 ? 0 : (w - 1 + p - kx) / s + 1;
                    const int oye = oy1 < oh ? oy1 : oh, oxe = ox1 < ow ? ox1 : ow;
                    for (oy = oy0; oy < oye; ++oy) {
                        const float *xr = x + (c * h + oy * s - p + ky) * w - p + kx;
                        float *yr = yo + oy * ow;
                        if (s == 1) /* the common case: contiguous, no multiply per tap */
                            for (ox = ox0; ox < oxe; ++ox)
                                yr[ox] += wv * xr[ox];
                        else
                            for (ox = ox0; ox < oxe; ++ox)
                                yr[ox] += wv * xr[ox * s];
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
