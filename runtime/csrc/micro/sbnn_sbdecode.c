/* Binary conv weight decoders: one output channel's 1-bits from each encoding (see
   sbnn_micro.h; the encoder is sbnn_runtime.lower_c). */
#include "sbnn_micro.h"

int32_t sbnn_read_uint(const void *table, int bytes, int32_t i)
{
    if (bytes == 1)
        return ((const uint8_t *)table)[i];
    if (bytes == 2)
        return ((const uint16_t *)table)[i];
    return (int32_t)((const uint32_t *)table)[i];
}

int sbnn_taps_packed(const uint8_t *bits, int32_t base, int32_t n_taps, int32_t *taps)
{
    int n = 0;
    int32_t k;
    for (k = 0; k < n_taps; ++k) {
        const int32_t j = base + k;
        if ((bits[j >> 3] >> (j & 7)) & 1)
            taps[n++] = k;
    }
    return n;
}

int sbnn_taps_idx(const void *idx, int bytes, int32_t k0, int32_t k1, int32_t *taps)
{
    int n = 0;
    int32_t k;
    /* one loop per width: no test per tap */
    if (bytes == 1)
        for (k = k0; k < k1; ++k)
            taps[n++] = ((const uint8_t *)idx)[k];
    else if (bytes == 2)
        for (k = k0; k < k1; ++k)
            taps[n++] = ((const uint16_t *)idx)[k];
    else
        for (k = k0; k < k1; ++k)
            taps[n++] = (int32_t)((const uint32_t *)idx)[k];
    return n;
}

int sbnn_taps_gap8(const uint8_t *gaps, int32_t k0, int32_t k1, int32_t *taps)
{
    int n = 0;
    int32_t k, t = -1, d = 0;
    for (k = k0; k < k1; ++k) {
        d += gaps[k];
        if (gaps[k] < 255) {
            t += 1 + d;
            d = 0;
            taps[n++] = t;
        }
    }
    return n;
}

int sbnn_sb_offsets(const sbnn_sb_layer *L, int o, int32_t *offs)
{
    const int kk = L->kh * L->kw, wp = L->w + 2 * L->p, plane = (L->h + 2 * L->p) * wp;
    int n, i;
    if (L->fmt == SBNN_PACKED) {
        n = sbnn_taps_packed(L->bits, (int32_t)o * L->ci * kk, L->ci * kk, offs);
    } else {
        const int32_t k0 = sbnn_read_uint(L->start, L->start_bytes, o);
        const int32_t k1 = sbnn_read_uint(L->start, L->start_bytes, o + 1);
        if (L->fmt == SBNN_GAP8)
            n = sbnn_taps_gap8((const uint8_t *)L->idx, k0, k1, offs);
        else
            n = sbnn_taps_idx(L->idx, L->fmt, k0, k1, offs);
    }
    for (i = 0; i < n; ++i) {
        const int32_t t = offs[i];
        offs[i] = (t / kk) * plane + (t % kk) / L->kw * wp + (t % kk) % L->kw;
    }
    return n;
}
