// Full-precision helpers of the engine: float conv2d (im2col + blocked GEMM), linear.
#pragma once
#include <vector>

#include "core/isa.h"
#include "core/kernels.h"
#include "core/threadpool.h"

namespace sbnn {

// A conv's geometry beyond the kernel size: strides, pads (top, left, bottom, right),
// dilations, groups (sbnn_runtime.ops.conv_geometry's 9 numbers, in its order).
struct ConvGeometry {
  int sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0, dh = 1, dw = 1, groups = 1;
};

// Float conv2d: im2col written straight into the GEMM's column panels, then the ISA's register-
// tiled FMA GEMM (KernelTable::sgemm) against the weights packed once here. Isa::Ref runs the
// plain blocked loops of gemm_f32 (the reference twin).
class FloatConv {
 public:
  // w: (Co, Ci, kh, kw), bias: (Co) or null.
  FloatConv(const float* w, int Co, int Ci, int kh, int kw, const float* bias, int stride, int pad,
            int H, int W, Isa isa = default_isa());
  // Any geometry: Ci input channels, w: (Co, Ci / groups, kh, kw). A depthwise conv (groups ==
  // Ci) runs a direct kernel (per output channel, tap by tap over the pixels it reaches; AVX2
  // or portable) instead of im2col; other groups run one im2col + GEMM each.
  FloatConv(const float* w, int Co, int Ci, int kh, int kw, const float* bias,
            const ConvGeometry& geo, int H, int W, Isa isa = default_isa());
  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo); with clamp, y = min(max(y, lo), hi) on the rows
  // of each GEMM task while they are in cache (the engine's conv + hardtanh fusion).
  void forward(const float* x, int N, float* y, ThreadPool* pool, bool clamp = false,
               float lo = 0.0f, float hi = 0.0f) const;
  int Ho() const { return Ho_; }
  int Wo() const { return Wo_; }
  // The GEMM that runs it: the table's name (ISA), or "ref".
  const char* gemm_name() const { return kt_ ? kt_->name : "ref"; }

 private:
  void image(const float* x, float* y, ThreadPool* pool, bool clamp, float lo, float hi) const;
  void image_ref(const float* x, float* y, ThreadPool* pool) const;
  void image_depthwise(const float* x, float* y, ThreadPool* pool) const;
  bool depthwise() const { return G_ == Ci_ && G_ > 1; }
  // im2col of one group's channels, pixels [p0, p1) (p0 a multiple of nr_), into column
  // panels of nr_ columns (see image())
  void columns(const float* x, float* B, int p0, int p1) const;
  // Column panels written and multiplied per block of at most this many bytes (image()).
  static constexpr int kColBlockBytes = 24 * 1024;
  int Co_, Ci_, kh_, kw_, H_, W_, Ho_, Wo_;
  int sh_, sw_, pt_, pl_, dh_, dw_, G_, Cig_, Cog_;
  Isa isa_;
  const KernelTable* kt_ = nullptr;  // the table whose sgemm runs (scalar when the ISA has none)
  int nr_ = 0;                       // columns per B panel
  std::vector<float> w_, bias_;
  std::vector<float> apack_;  // w in panels of kt_->sgemm_mr rows: [g][ib][k][r]
};

// The kernel table of an ISA (scalar for Ref); defined in bconv.cpp.
const KernelTable& kernel_table(Isa isa);

// y (Co-block rows) = bias + w (rows c0..c1 of (Co, K)) @ col (K, P)
void gemm_f32(const float* w, int K, const float* col, int P, const float* bias, int c0, int c1,
              float* y);

// A max pooling's window: input plane, kernel, strides, leading pads, output plane (the
// trailing pads and ceil_mode are in Ho, Wo: cells past the input are skipped like padding).
struct MaxPoolGeom {
  int H, W, kh, kw, sh, sw, pt, pl, Ho, Wo;
};

// nplanes (H, W) planes -> nplanes (Ho, Wo) planes: the max of each window's cells inside the
// input, a NaN in a window wins (the same values as sbnn_runtime.ops' reference). Isa::Ref: the
// plain loop per window (the twin); others: separable passes (AVX2 where the ISA has it).
void maxpool_planes(const float* x, int nplanes, const MaxPoolGeom& g, float* y, Isa isa);

// Float linear: y (N, O) = x (N, I) @ w^T + bias through the ISA's register-tiled FMA GEMM
// (KernelTable::sgemm) with the batch as the tile's rows: w^T is packed once into column panels,
// each run packs x into row panels; the bias is added after the sum, as the reference does.
// Isa::Ref runs linear_f32's plain loops (the twin).
class FloatLinear {
 public:
  // w: (O, I), bias: (O) or null.
  FloatLinear(const float* w, int O, int I, const float* bias, Isa isa = default_isa());
  void forward(const float* x, int N, float* y, ThreadPool* pool) const;
  const char* gemm_name() const { return kt_ ? kt_->name : "ref"; }

 private:
  int O_, I_;
  Isa isa_;
  const KernelTable* kt_ = nullptr;
  int nr_ = 0;
  std::vector<float> w_, bias_;
  std::vector<float> bpack_;  // w^T in panels of nr_ columns: [jb][i][j]
};

// x: (N, I) -> y: (N, O) = x @ w^T + bias (bias may be null)
void linear_f32(const float* x, int N, const float* w, int O, int I, const float* bias, float* y,
                ThreadPool* pool);

}  // namespace sbnn
