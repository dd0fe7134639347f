/* int8 conv and linear: the twin of qconv2d / qlinear in sbnn_runtime.ops (the arithmetic of
   sbnn_runtime.qkernels): the input quantised to uint8, int8 weights (1 byte of flash each), an
   exact int32 sum, a float output. Compile without fused multiply-adds (-std=c99 turns them
   off in GCC) for outputs equal to the engine's. */
#include "sbnn_micro.h"

/* to nearest, ties to even; |v| <= 1024 */
static int32_t sbnn_round_even(float v)
{
    int32_t i = (int32_t)v;
    const float f = v - (float)i; /* exact */
    if (f > 0.5f || (f == 0.5f && (i & 1)))
        ++i;
    else if (f < -0.5f || (f == -0.5f && (i & 1)))
        --i;
    return i;
}

void sbnn_quantize_u8(const float *x, uint8_t *q, int n, float scale, int zero)
{
    int i;
    for (i = 0; i < n; ++i) {
        float v = x[i] / scale;
        int32_t t;
        if (!(v > -1024.0f)) /* NaN too: gives 0 */
            v = -1024.0f;
        if (v > 1024.0f)
            v = 1024.0f;
        t = sbnn_round_even(v) + zero;
        q[i] = (uint8_t)(t < 0 ? 0 : (t > 255 ? 255 : t));
    }
}

void sbnn_qconv2d(const float *x, float *y, const int8_t *wt, const float *scale,
                  const float *bias, float x_scale, int x_zero, int ci, int h, int w, int co,
                  int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                  int oh, int ow, uint8_t *xq, const int32_t *ithr, int pad, float *plane,
                  float *tmp, const float *res, const sbnn_epi *e)
{
    const int cig = ci / groups, cog = co / groups, wp = ow + 2 * pad, nm = (oh + 2 * pad) * wp;
    int o, oy, ox, c, ky, kx;
    sbnn_quantize_u8(x, xq, ci * h * w, x_scale, x_zero);
    for (o = 0; o < co; ++o) {
        const int c0 = (o / cog) * cig;
        const int8_t *wo = wt + o * cig * kh * kw;
        float *yo = e ? plane : y + o * oh * ow;
        int8_t *mo = (int8_t *)y + o * nm; /* ithr: the int8 map of channel o */
        for (c = 0; ithr && c < nm; ++c)
            mo[c] = 0; /* its padding */
        for (oy = 0; oy < oh; ++oy) {
            for (ox = 0; ox < ow; ++ox) {
                int32_t acc = 0;
                float m;
                /* a padded tap holds the zero point: (q - zero) = 0, so it is skipped */
                for (c = 0; c < cig; ++c) {
                    const uint8_t *xc = xq + (c0 + c) * h * w;
                    for (ky = 0; ky < kh; ++ky) {
                        const int iy = oy * sh - pt + ky * dh;
                        if (iy < 0 || iy >= h)
                            continue;
                        for (kx = 0; kx < kw; ++kx) {
                            const int ix = ox * sw - pl + kx * dw;
                            if (ix < 0 || ix >= w)
                                continue;
                            acc += (int32_t)wo[(c * kh + ky) * kw + kx] *
                                   ((int32_t)xc[iy * w + ix] - x_zero);
                        }
                    }
                }
                if (ithr) { /* folded: acc >= ithr[o] exactly where y >= the threshold */
                    mo[(oy + pad) * wp + ox + pad] = (int8_t)(acc >= ithr[o] ? 1 : -1);
                    continue;
                }
                m = (float)acc * scale[o];
                yo[oy * ow + ox] = bias ? m + bias[o] : m;
            }
        }
        if (e)
            sbnn_epilogue(e, plane, oh, ow, o, y, tmp, res);
    }
}
