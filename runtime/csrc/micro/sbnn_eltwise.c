/* Element-wise and per-channel ops: the twins of affine, hardtanh, relu, rprelu and add in
   sbnn_runtime.ops. */
#include "sbnn_micro.h"

void sbnn_affine(const float *x, float *y, const float *scale, const float *shift, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i)
        for (j = 0; j < hw; ++j)
            y[i * hw + j] = x[i * hw + j] * scale[i] + shift[i];
}

void sbnn_hardtanh(const float *x, float *y, float lo, float hi, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}

void sbnn_relu(const float *x, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void sbnn_rprelu(const float *x, float *y, const float *shift_in, const float *slope,
                 const float *shift_out, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        for (j = 0; j < hw; ++j) {
            const float z = x[i * hw + j] - shift_in[i];
            y[i * hw + j] = (z >= 0.0f ? z : z * slope[i]) + shift_out[i];
        }
    }
}

void sbnn_add(const float *a, const float *b, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = a[i] + b[i];
}

void sbnn_eltwise(const float *a, const float *b, float *y, int kind, int c, int hw, int bhw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        for (j = 0; j < hw; ++j) {
            const float v = b[i * bhw + (bhw == 1 ? 0 : j)];
            y[i * hw + j] = kind == 0 ? a[i * hw + j] * v : a[i * hw + j] + v;
        }
    }
}

void sbnn_concat(const float *a, const float *b, float *y, int na, int nb)
{
    int i;
    for (i = 0; i < na; ++i)
        y[i] = a[i];
    for (i = 0; i < nb; ++i)
        y[na + i] = b[i];
}
