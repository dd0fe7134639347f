/* A conv's per-channel epilogue: residual add, pooling, float or int8-map output. */
#include "sbnn_micro.h"

void sbnn_epilogue(const sbnn_epi *e, float *plane, int h, int w, int o, float *y, float *tmp,
                   const float *res)
{
    const float *src = plane;
    int i, j;
    if (e->add) {
        const float *r = res + o * h * w;
        for (i = 0; i < h * w; ++i)
            plane[i] += r[i];
    }
    if (e->pool) {
        float *dst = e->bin ? tmp : y + o * e->oh * e->ow;
        sbnn_pool(plane, dst, 1, h, w, e->k, e->s, e->p, e->oh, e->ow, e->is_max, e->cip);
        src = dst;
        h = e->oh;
        w = e->ow;
    } else if (!e->bin) {
        float *dst = y + o * h * w;
        for (i = 0; i < h * w; ++i)
            dst[i] = plane[i];
    }
    if (e->bin) {
        const int wp = w + 2 * e->pad, hp = h + 2 * e->pad;
        const float t = e->thr ? e->thr[o] : 0.0f;
        int8_t *m = (int8_t *)y + o * hp * wp;
        for (i = 0; i < hp * wp; ++i)
            m[i] = 0;
        for (i = 0; i < h; ++i)
            for (j = 0; j < w; ++j)
                m[(i + e->pad) * wp + j + e->pad] = (int8_t)(src[i * w + j] >= t ? 1 : -1);
    }
}
