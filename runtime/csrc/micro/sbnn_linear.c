/* Linear: the twin of linear in sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_linear(const float *x, float *y, const float *wt, const float *bias, int o, int n)
{
    int i, j;
    for (i = 0; i < o; ++i) {
        float acc = 0.0f;
        for (j = 0; j < n; ++j)
            acc += wt[i * n + j] * x[j];
        y[i] = bias ? acc + bias[i] : acc;
    }
}
