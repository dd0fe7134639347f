/* Pooling: the twins of maxpool, avgpool and global_avgpool in sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_pool(const float *x, float *y, int c, int h, int w, int k, int s, int p, int oh,
               int ow, int is_max, int cip)
{
    int i, oy, ox, ky, kx;
    for (i = 0; i < c; ++i) {
        for (oy = 0; oy < oh; ++oy) {
            const int iy = oy * s - p;
            const int ky0 = iy < 0 ? -iy : 0, ky1 = iy + k > h ? h - iy : k;
            for (ox = 0; ox < ow; ++ox) {
                const int ix = ox * s - p;
                const int kx0 = ix < 0 ? -ix : 0, kx1 = ix + k > w ? w - ix : k;
                float acc = is_max ? x[(i * h + iy + ky0) * w + ix + kx0] : 0.0f;
                for (ky = ky0; ky < ky1; ++ky) {
                    for (kx = kx0; kx < kx1; ++kx) {
                        const float v = x[(i * h + iy + ky) * w + ix + kx];
                        if (is_max)
                            acc = v > acc ? v : acc;
                        else
                            acc += v;
                    }
                }
                if (!is_max)
                    acc = acc / (float)(cip ? k * k : (ky1 - ky0) * (kx1 - kx0));
                y[(i * oh + oy) * ow + ox] = acc;
            }
        }
    }
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
