// int8 conv / linear for the layers a sparse-binary network keeps in float (qconv2d, qlinear
// in sbnn_runtime.ops). The arithmetic is sbnn_runtime.qkernels': the input quantised per tensor
// to uint8, q = clamp(rint(x / s) + z, 0, 255) (NaN -> 0); per-output-channel int8 weights; an
// exact int32 sum acc_c = sum (q - z) * w_c; y_c = float(acc_c) * scale_c + bias_c in float32
// (two roundings: this file is compiled without FMA contraction, see CMakeLists.txt).
//
// The sum is a GEMM of int8 weight rows against uint8 im2col columns, both padded with zeros to
// a multiple of 64 taps. Per ISA (QGemmFn, picked once per layer):
//   scalar   portable C++, the twin the others are tested against;
//   avx2     vpmaddwd on operands widened to int16: vpmaddubsw (uint8 x int8 pairs summed in
//            int16) saturates at 255 * 127 * 2 > 32767, widening cannot;
//   vnni     AVX-512 VNNI vpdpbusd (uint8 x int8, four products summed straight into int32);
//   neon     AArch64 sdot (int8 x int8): columns biased to int8 by q - 128, then + 128 * sum(w).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/isa.h"
#include "core/threadpool.h"

namespace sbnn {

// acc[c * ldc + p] = sum_k w[c * Kp + k] * col[p * Kp + k] for c < Co, p < P; Kp % 64 == 0.
// wsum[c] = sum_k w[c * Kp + k] (the neon kernel needs it; the others ignore it).
using QGemmFn = void (*)(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P,
                         int Kp, int32_t* acc, int ldc);

void qgemm_scalar(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P, int Kp,
                  int32_t* acc, int ldc);
#ifdef SBNN_HAVE_X86_KERNELS
void qgemm_avx2(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P, int Kp,
                int32_t* acc, int ldc);
// The AVX2 layout QConv uses (no horizontal sums, taps padded to 2 only): columns as int16
// pairs col[(j * Pp + p) * 2 + e] = q[2j + e][p] - z (0 past K and past P, Pp % 16 == 0),
// weights as pairs wp[c * K2 + j] = (w[c][2j], w[c][2j + 1]) in one int32; acc[c * ldc + p]
// for p0 <= p < p1 (p0 % 16 == 0).
void qgemm_avx2_pairs(const int32_t* wp, const int16_t* col, int Co, int K2, int Pp, int p0,
                      int p1, int32_t* acc, int ldc);
// quantize_u8 eight floats at a time (bit for bit the same: IEEE division, round to nearest
// even, NaN -> 0)
void quantize_u8_avx2(const float* x, size_t n, float scale, int zero, uint8_t* q);
void qgemm_vnni(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P, int Kp,
                int32_t* acc, int ldc);
#endif
#if defined(__aarch64__)
void qgemm_neon(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P, int Kp,
                int32_t* acc, int ldc);
#endif

// The int8 GEMM an ISA runs, and its name ("scalar", "avx2", "vnni", "neon"): avx512 runs
// vnni where the CPU has AVX-512 VNNI (else avx2), neon runs sdot where the CPU has the dot
// product extension (else scalar).
QGemmFn qgemm_for(Isa isa, const char** name);
// Whether this CPU runs the VNNI / sdot kernels.
bool cpu_has_vnni();
bool cpu_has_sdot();

// uint8 quantisation of n floats (see the top of this file).
void quantize_u8(const float* x, size_t n, float scale, int zero, uint8_t* q);

struct QGeom {
  int Ci = 0, H = 1, W = 1, Co = 0, kh = 1, kw = 1;
  int sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0, dh = 1, dw = 1, groups = 1;
  int Ho = 1, Wo = 1;
};

// An int8 conv (a linear is one with H = W = kh = kw = 1). w: (Co, Ci / groups, kh, kw) int8;
// scale: (Co) = float32(x_scale * w_scale_c); bias: (Co) or null.
class QConv {
 public:
  QConv(const int8_t* w, const float* scale, const float* bias, float x_scale, int x_zero,
        QGeom g, Isa isa);
  // x: (N, Ci, H, W) float -> y: (N, Co, Ho, Wo) float
  void forward(const float* x, int N, float* y, ThreadPool* pool) const;
  const QGeom& geom() const { return g_; }
  const char* kernel_name() const { return name_; }

 private:
  void im2col(const uint8_t* q, int grp, uint8_t* col) const;
  void im2col_pairs(const uint8_t* q, int grp, int16_t* col) const;
  size_t col_bytes() const;
  void layout(const uint8_t* q, int grp, uint8_t* col) const;
  // acc rows c0.. of group grp, positions p0..p1, from the group's laid-out columns
  void gemm(const uint8_t* col, int grp, int p0, int p1, int32_t* acc) const;
  void rows(const int32_t* acc, int c0, int c1, int p0, int p1, float* y) const;
  QGeom g_;
  int Cig_, Cog_, K_, Kp_, P_;
  bool pairs_ = false;  // the AVX2 layout: centred int16 pairs, sums need no correction
  int K2_ = 0, Pp_ = 0;
  std::vector<int32_t> wp_;   // (Co, K2) weight pairs (pairs_)
  void (*quant_)(const float*, size_t, float, int, uint8_t*) = quantize_u8;
  float xs_;
  int xz_;
  QGemmFn fn_;
  const char* name_;
  std::vector<int8_t> w_;     // (Co, Kp), zero past K
  std::vector<int32_t> wsum_; // (Co)
  std::vector<float> scale_, bias_;
};

}  // namespace sbnn
