// A binary conv for tiny output maps (Ho * Wo <= 16: ReActNet-18's 2x2 and 4x4 stages).
//
// The sparse kernel (bconv.h) adds each 1-bit's input over a grid of 32-byte rows of int8: at
// 2x2 most lanes of the vector are padding and junk columns, and a filter with more than 127
// 1-bits widens to int32 (4 adds per vector). Here every input value a 1-bit can reach is
// gathered once per image into a table V[k][lane], k = (ci * kh + ky) * kw + kx the tap, lane =
// n * P + p (image n of a group, output pixel p), in int16: a filter's count is the sum of its
// 1-bits' rows of V, one vector add per 1-bit for all P pixels of up to 16 / P images, exact
// for any fan-in up to 32767 (|count| <= Ci * kh * kw). The lanes are exactly the outputs, so
// the work scales with the 1-bits times the lanes the outputs need. The epilogue (affine, then
// the fused residual add / clamp / RPReLU) is the kernel table's, so the floats round as the
// sparse kernel's do.
#pragma once
#include <cstdint>
#include <vector>

#include "core/bconv.h"
#include "core/isa.h"
#include "core/kernels.h"
#include "core/threadpool.h"

namespace sbnn {

class BConvSmall {
 public:
  // The lanes of one accumulation vector (int16): 16 (one AVX2 register, two SSE/NEON ones).
  static constexpr int kLanes = 16;
  // Whether a conv's geometry suits this kernel: Ho * Wo <= kLanes, Ci * kh * kw <= 32767.
  static bool fits(int Ci, int kh, int kw, int Ho, int Wo);

  // bits: (Co, Ci, kh, kw) 0/1; eta, xi, bias: (Co); thr: (Ci) or null (threshold 0).
  // Throws std::invalid_argument where fits() is false or the ISA is Ref or not supported.
  BConvSmall(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
             const float* xi, const float* bias, const float* thr, int stride, int pad, int H,
             int W, Isa isa);

  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo), then post (if any), as BConvLayer::forward.
  void forward(const float* x, int N, float* y, ThreadPool* pool,
               const BConvPost& post = BConvPost()) const;
  // The integer parts: cnt (N, Co, Ho, Wo) = conv(x, b), ws (N, Ho, Wo) = conv(x, 1).
  void counts(const float* x, int N, int32_t* cnt, int32_t* ws, ThreadPool* pool) const;

  int Ho() const { return Ho_; }
  int Wo() const { return Wo_; }
  int images_per_group() const { return G_; }
  Isa isa() const { return isa_; }

 private:
  void run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
           const BConvPost& post) const;
  // nimg <= G_ images: the table, the window sums, every filter's counts and epilogue.
  void group(const float* x, int nimg, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
             const BConvPost& post) const;

  int Co_, Ci_, kh_, kw_, s_, pad_, H_, W_, Hp_, Wp_, Ho_, Wo_, P_, G_;
  Isa isa_;
  const KernelTable* kt_;
  std::vector<float> eta_, xi_, bias_, thr_;
  std::vector<int32_t> taps_;   // per filter: its 1-bits' tap indices k, taps_[start_[c] ..]
  std::vector<int64_t> start_;  // (Co + 1)
};

}  // namespace sbnn
