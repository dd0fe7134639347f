/* sbnn micro kernels: the C99 kernels a C export of a .sbnn model calls.
 *
 * Plain C99: no allocation, no libc call (only <stdint.h>; a compiler may still turn a zeroing
 * loop into memset), no threads, no writable statics: every buffer is the caller's. Each
 * kernel is the C twin of an op's numpy reference in sbnn_runtime.ops, tested against it on
 * many shapes (runtime/tests/test_micro.py). These files are the same for every exported
 * model, so two models link together with one copy of them.
 *
 * Layouts: one image, channels first: x (c, h, w) with index (c * h + y) * w + x.
 * Floating point: a * b + c rounds twice, as the engine does: build with -ffp-contract=off
 * where the compiler contracts by default (gcc does with -std=gnu99; it does not with
 * -std=c99); clang is told by the pragma below.
 */
#ifndef SBNN_MICRO_H
#define SBNN_MICRO_H

#include <stdint.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* the engine rounds a*b + c as two operations */
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* -- element-wise and per-channel ops (sbnn_eltwise.c); y may be x (in place) ---------------- */

/* y = x * scale[c] + shift[c]; x: (c, hw) */
void sbnn_affine(const float *x, float *y, const float *scale, const float *shift, int c, int hw);
/* y = min(max(x, lo), hi) */
void sbnn_hardtanh(const float *x, float *y, float lo, float hi, int n);
/* y = max(x, 0) */
void sbnn_relu(const float *x, float *y, int n);
/* y = a * b (kind 0) or a + b (kind 1) over c channels of hw values; b holds bhw values per
   channel: hw, or 1 (one per channel, broadcast) */
void sbnn_eltwise(const float *a, const float *b, float *y, int kind, int c, int hw, int bhw);
/* y = the na values of a, then the nb values of b (a channel concat of one image) */
void sbnn_concat(const float *a, const float *b, float *y, int na, int nb);
/* z = x - shift_in[c]; y = (z >= 0 ? z : slope[c] z) + shift_out[c]; x: (c, hw) */
void sbnn_rprelu(const float *x, float *y, const float *shift_in, const float *slope,
                 const float *shift_out, int c, int hw);
/* y = a + b */
void sbnn_add(const float *a, const float *b, float *y, int n);

/* -- pooling (sbnn_pool.c) --------------------------------------------------------------------- */

/* max (is_max) or average pooling, k x k window, stride s, padding p (ignored by max; counted
   by average when cip, else the divisor is the taps inside the input).
   x: (c, h, w) -> y: (c, oh, ow) */
void sbnn_pool(const float *x, float *y, int c, int h, int w, int k, int s, int p, int oh,
               int ow, int is_max, int cip);
/* any window: kh x kw, strides sh, sw, pads pt, pl, pb, pr (top, left, bottom, right); an
   average counts the taps inside the padded input (cip) or inside the input, never those past
   the trailing pad that only PyTorch's ceil_mode reaches (oh, ow say how many windows) */
void sbnn_pool2d(const float *x, float *y, int c, int h, int w, int kh, int kw, int sh, int sw,
                 int pt, int pl, int pb, int pr, int oh, int ow, int is_max, int cip);
/* y[c] = mean of x (c, hw) */
void sbnn_global_avgpool(const float *x, float *y, int c, int hw);

/* -- moving values: channel shuffle, upsampling (sbnn_shape.c) ---------------------------------- */

/* channel j * groups + i of y is channel i * (c / groups) + j of x; x, y: (c, hw) */
void sbnn_channel_shuffle(const float *x, float *y, int c, int hw, int groups);
/* x: (c, h, w) -> y: (c, h * scale, w * scale), nearest (mode 0) or bilinear (mode 1; PyTorch's
   half-pixel centres, or its align_corners) */
void sbnn_upsample(const float *x, float *y, int c, int h, int w, int scale, int mode,
                   int align_corners);

/* -- what a conv does with each output channel (sbnn_epilogue.c) ------------------------------- */

/* A conv computes one output channel at a time into a plane; its epilogue then adds a residual
   (y = conv + res, possibly written over res) and/or pools, and stores either floats or, when
   every reader is a binary conv, the +-1 int8 map that reader binarises to (padded by pad,
   +1 where x >= thr[c]): the float tensor never exists. */
typedef struct {
    int pool, k, s, p, oh, ow, is_max, cip; /* the fused pooling (pool = 0: none) */
    int add;                                /* add = 1: add the residual res */
    int bin, pad;                           /* bin = 1: write the int8 map */
    const float *thr;                       /* bin: thresholds per channel (0: all 0) */
} sbnn_epi;

/* channel o, computed into plane (h, w) -> y; tmp: (oh, ow) when pooled and binarised;
   res: the residual (c, h, w) when e->add */
void sbnn_epilogue(const sbnn_epi *e, float *plane, int h, int w, int o, float *y, float *tmp,
                   const float *res);

/* -- float conv and linear (sbnn_conv2d.c, sbnn_linear.c) -------------------------------------- */

/* zero-padded conv, taps summed in (c, ky, kx) order. x: (ci, h, w) -> y: (co, oh, ow);
   wt: (co, ci, kh, kw); bias: (co) or 0. With an epilogue e (else 0), each channel goes through
   plane (oh, ow) and e (see sbnn_epilogue for tmp and res). */
void sbnn_conv2d(const float *x, float *y, const float *wt, const float *bias, int ci, int h,
                 int w, int co, int kh, int kw, int s, int p, int oh, int ow, float *plane,
                 float *tmp, const float *res, const sbnn_epi *e);
/* any geometry: g = {sh, sw, pt, pl, dh, dw, groups} (the bottom and right pads follow from oh
   and ow); wt: (co, ci / groups, kh, kw), output o reads the input channels of its group
   (depthwise: groups = ci). sbnn_conv2d is this with g = {s, s, p, p, 1, 1, 1}. */
void sbnn_conv2d_ex(const float *x, float *y, const float *wt, const float *bias, int ci, int h,
                    int w, int co, int kh, int kw, const int *g, int oh, int ow, float *plane,
                    float *tmp, const float *res, const sbnn_epi *e);
/* A grouped, dilated or non-square binary conv: sbnn_conv2d_ex of its folded weight
   (eta * b + xi, float32), read from its bits (co, ci / groups, kh, kw; packed LSB first, 1 bit
   per weight in flash): a tap's weight is w01[2 o + b], w01 holding per output channel the
   folded weight of a 0-bit, then of a 1-bit. The same outputs as sbnn_conv2d_ex. */
void sbnn_conv2d_bits(const float *x, float *y, const uint8_t *bits, const float *w01,
                      const float *bias, int ci, int h, int w, int co, int kh, int kw,
                      const int *g, int oh, int ow, float *plane, float *tmp, const float *res,
                      const sbnn_epi *e);
/* y = +1 where x >= thr[c] (0 when thr is 0) else -1, as floats: the input of a grouped,
   dilated or non-square binary conv on binarised inputs (then sbnn_conv2d_bits).
   x, y: (c, hw) */
void sbnn_sign_planes(const float *x, float *y, const float *thr, int c, int hw);
/* y = W x + b; W: (o, n); bias: (o) or 0 */
void sbnn_linear(const float *x, float *y, const float *wt, const float *bias, int o, int n);

/* -- int8 conv and linear (sbnn_qconv.c): the float layers kept in int8 ------------------------ */

/* q = clamp(rint(x / scale) + zero, 0, 255), ties to even, NaN -> 0 (sbnn_runtime.qkernels) */
void sbnn_quantize_u8(const float *x, uint8_t *q, int n, float scale, int zero);
/* x: (ci, h, w) float -> y: (co, oh, ow) float; wt: (co, ci / groups, kh, kw) int8; scale: (co)
   = x_scale * the weight's scale; bias: (co) or 0; stride (sh, sw), top/left pads (pt, pl),
   dilation (dh, dw); xq: ci * h * w bytes of scratch (the uint8 input). A linear is the
   case h = w = kh = kw = 1. With an epilogue e (else 0), each channel goes through plane
   (oh, ow) and e, as for sbnn_conv2d. With int32 thresholds ithr (else 0; scale, bias and e
   are then not read), y is the binary readers' int8 map (co, oh + 2 pad, ow + 2 pad): +1
   where the int32 sum >= ithr[o], else -1, 0 in the padding; sbnn_runtime.passes
   (int8_thresholds) makes ithr give the bits of the float output's binarisation. */
void sbnn_qconv2d(const float *x, float *y, const int8_t *wt, const float *scale,
                  const float *bias, float x_scale, int x_zero, int ci, int h, int w, int co,
                  int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int groups,
                  int oh, int ow, uint8_t *xq, const int32_t *ithr, int pad, float *plane,
                  float *tmp, const float *res, const sbnn_epi *e);

/* -- binary convs: weights, decoders, kernels (sbnn_sbdecode.c, sbnn_sbconv.c) ---------------- */

/* Weight encodings of a binary conv (co, ci, kh, kw) of 0/1 bits; a tap is
   t = ci * kh * kw + ky * kw + kx within its output channel. */
enum {
    SBNN_PACKED = 0, /* bits: every bit, C order, LSB first (bit j in byte j >> 3) */
    SBNN_IDX8 = 1,   /* idx: the taps of the 1-bits, uint8_t, channel by channel */
    SBNN_IDX16 = 2,  /* ... uint16_t */
    SBNN_IDX32 = 4,  /* ... uint32_t */
    SBNN_GAP8 = 8    /* idx: one byte per 1-bit, the 0-bits before it (255: add 255, read on) */
};

/* One binary conv layer: its shape and its weights (flash). */
typedef struct {
    int ci, h, w, co, kh, kw, s, p, oh, ow;
    int fmt;             /* SBNN_PACKED, SBNN_IDX8/16/32 or SBNN_GAP8 */
    int start_bytes;     /* 1, 2 or 4: the type of the start table */
    const void *idx;     /* sparse formats: the tap stream */
    const void *start;   /* sparse formats: co + 1 starts into idx */
    const uint8_t *bits; /* SBNN_PACKED */
    const float *eta, *xi, *bias, *thr; /* per output channel; thr per input channel or 0 */
} sbnn_sb_layer;

/* Decoders: the taps of one output channel's 1-bits, ascending, into taps; return their count.
   packed: bits of the channel are bits[base .. base + n_taps); sparse: entries [k0, k1). */
int sbnn_taps_packed(const uint8_t *bits, int32_t base, int32_t n_taps, int32_t *taps);
int sbnn_taps_idx(const void *idx, int bytes, int32_t k0, int32_t k1, int32_t *taps);
int sbnn_taps_gap8(const uint8_t *gaps, int32_t k0, int32_t k1, int32_t *taps);
/* entry i of a table of unsigned ints of 1, 2 or 4 bytes */
int32_t sbnn_read_uint(const void *table, int bytes, int32_t i);
/* The offsets, into the zero-padded input planes (ci, h + 2p, w + 2p), of output channel o's
   1-bits (any format); returns their count. offs: at least the channel's ones. */
int sbnn_sb_offsets(const sbnn_sb_layer *L, int o, int32_t *offs);

/* ws (oh, ow): the kh x kw window sums, stride s, of cs (rows of wp floats) */
void sbnn_window_sums(const float *cs, float *ws, int wp, int kh, int kw, int s, int oh,
                      int ow);

/* Binary conv on binarised inputs (x >= thr[c] -> +1, else -1; padding 0): exact integer
   counts over the 1-bits, then y = eta * count + (xi * window sum + bias).
   x: (ci, h, w) -> y: (co, oh, ow), or x = 0 when xp already holds the int8 map.
   xp: int8 (ci, h+2p, w+2p); ws: floats (oh * ow + (h+2p)(w+2p)); offs: int32 (max ones of a
   channel); plane, tmp, res, e: the epilogue as for sbnn_conv2d. */
void sbnn_sbconv_bin(const sbnn_sb_layer *L, const float *x, float *y, int8_t *xp, float *ws,
                     int32_t *offs, float *plane, float *tmp, const float *res,
                     const sbnn_epi *e);
/* Binary weights on real inputs: y = eta * (sum over the 1-bits) + (xi * window sum + bias).
   xp: floats (ci, h+2p, w+2p); the rest as sbnn_sbconv_bin. */
void sbnn_sbconv_real(const sbnn_sb_layer *L, const float *x, float *y, float *xp, float *ws,
                      int32_t *offs, float *plane, float *tmp, const float *res,
                      const sbnn_epi *e);

#ifdef __cplusplus
}
#endif

#endif /* SBNN_MICRO_H */
