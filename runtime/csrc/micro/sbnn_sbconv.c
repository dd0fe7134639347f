/* Binary convs: the twins of sbconv2d in sbnn_runtime.ops, on binarised (binary_input) and on
   real inputs. Both visit only the 1-bits of each output channel:
       y_c = eta_c * conv(x, b_c) + xi_c * conv(x, 1) + bias_c   */
#include "sbnn_micro.h"

void sbnn_window_sums(const float *cs, float *ws, int wp, int kh, int kw, int s, int oh, int ow)
{
    const int kk = kh * kw;
    int oy, ox, k;
    for (oy = 0; oy < oh; ++oy) {
        for (ox = 0; ox < ow; ++ox) {
            const float *r = cs + oy * s * wp + ox * s;
            float acc = 0.0f;
            for (k = 0; k < kk; ++k)
                acc += r[k / kw * wp + k % kw];
            ws[oy * ow + ox] = acc;
        }
    }
}

void sbnn_sbconv_bin(const sbnn_sb_layer *L, const float *x, float *y, int8_t *xp, float *ws,
                     int32_t *offs, float *plane, float *tmp, const float *res,
                     const sbnn_epi *e)
{
    const int hp = L->h + 2 * L->p, wp = L->w + 2 * L->p;
    const int co = L->co, oh = L->oh, ow = L->ow, s = L->s; /* in registers, not reloaded */
    float *cs = ws + L->oh * L->ow;
    int c, i, j, o, oy, ox, k, n;
    for (i = 0; x && i < L->ci * hp * wp; ++i)
        xp[i] = 0;
    for (c = 0; x && c < L->ci; ++c) {
        const float t = L->thr ? L->thr[c] : 0.0f;
        for (i = 0; i < L->h; ++i)
            for (j = 0; j < L->w; ++j)
                xp[(c * hp + i + L->p) * wp + j + L->p] =
                    (int8_t)(x[(c * L->h + i) * L->w + j] >= t ? 1 : -1);
    }
    /* conv(x, 1): the window sum over all input channels, exact in float (|sum| < 2^24):
       the channels summed into one plane cs, then a kh x kw box sum of cs */
    for (i = 0; i < hp * wp; ++i)
        cs[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < hp * wp; ++i)
            cs[i] += (float)xp[c * hp * wp + i];
    sbnn_window_sums(cs, ws, wp, L->kh, L->kw, L->s, L->oh, L->ow);
    for (o = 0; o < co; ++o) {
        const float eta = L->eta[o], xi = L->xi[o], b = L->bias[o];
        float *yo = e ? plane : y + o * oh * ow;
        n = sbnn_sb_offsets(L, o, offs);
        for (oy = 0; oy < oh; ++oy) {
            for (ox = 0; ox < ow; ++ox) {
                const int8_t *q = xp + oy * s * wp + ox * s;
                int32_t acc = 0;
                for (k = 0; k < n; ++k)
                    acc += q[offs[k]];
                yo[oy * ow + ox] = eta * (float)acc + (xi * ws[oy * ow + ox] + b);
            }
        }
        if (e)
            sbnn_epilogue(e, plane, oh, ow, o, y, tmp, res);
    }
}

void sbnn_sbconv_real(const sbnn_sb_layer *L, const float *x, float *y, float *xp, float *ws,
                      int32_t *offs, float *plane, float *tmp, const float *res,
                      const sbnn_epi *e)
{
    const int hp = L->h + 2 * L->p, wp = L->w + 2 * L->p;
    const int co = L->co, oh = L->oh, ow = L->ow, s = L->s; /* in registers, not reloaded */
    float *cs = ws + L->oh * L->ow;
    int c, i, j, o, oy, ox, k, n;
    for (i = 0; i < L->ci * hp * wp; ++i)
        xp[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < L->h; ++i)
            for (j = 0; j < L->w; ++j)
                xp[(c * hp + i + L->p) * wp + j + L->p] = x[(c * L->h + i) * L->w + j];
    for (i = 0; i < hp * wp; ++i)
        cs[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < hp * wp; ++i)
            cs[i] += xp[c * hp * wp + i];
    sbnn_window_sums(cs, ws, wp, L->kh, L->kw, L->s, L->oh, L->ow);
    for (o = 0; o < co; ++o) {
        const float eta = L->eta[o], xi = L->xi[o], b = L->bias[o];
        float *yo = e ? plane : y + o * oh * ow;
        n = sbnn_sb_offsets(L, o, offs);
        for (oy = 0; oy < oh; ++oy) {
            for (ox = 0; ox < ow; ++ox) {
                const float *q = xp + oy * s * wp + ox * s;
                float acc = 0.0f;
                for (k = 0; k < n; ++k)
                    acc += q[offs[k]];
                yo[oy * ow + ox] = eta * acc + (xi * ws[oy * ow + ox] + b);
            }
        }
        if (e)
            sbnn_epilogue(e, plane, oh, ow, o, y, tmp, res);
    }
}
