// A binary conv for tiny output maps (Ho * Wo <= 16: ResNet-18's 4x4 stage, ReActNet-18's 2x2
// stage), vectorised across OUTPUT CHANNELS instead of pixels (issue 20).
//
// With x in {-1, +1} (0 in the padding) and bits b in {0, 1}, for output pixel p and filter co:
//
//   conv(x, b)[co, p] = 2 * c[co, p] - n[co, p],
//   c[co, p] = sum of b[co, ci, ky, kx] over the valid taps (ci, ky, kx) of p where x = +1,
//   n[co, p] = sum of b[co, ci, ky, kx] over the valid taps of p (a constant, made at load).
//
// The weights are stored bit-transposed: for each row r = (ky * kw + kx) * Ci + ci, the Co bits
// b[., ci, ky, kx] in blocks of one vector (256 filters on AVX2 and the portable build, 512 on
// AVX-512). For one pixel the rows of its valid taps whose input is +1 are summed bit-sliced
// (a Harley-Seal tree of carry-save adders over 16 rows at a time, its carries rippled into
// counter planes), and the planes are turned into one integer per filter once per pixel. The
// work is ~(valid taps x Ci / 2) rows x (Co / 256) vectors x ~6 logic ops per pixel, whatever
// the 1-bits; padded taps cost nothing. The epilogue (affine, then the fused residual add /
// clamp / RPReLU) is the kernel table's, so the floats round as the sparse kernel's do.
//
// Groups and dilation are not supported (the engine keeps its other kernels for those).
#pragma once
#include <cstdint>
#include <vector>

#include "core/bconv.h"
#include "core/isa.h"
#include "core/kernels.h"
#include "core/threadpool.h"

namespace sbnn {

class BConvTiny {
 public:
  // The most output pixels per image this kernel takes.
  static constexpr int kMaxPixels = 16;
  // Whether a conv's geometry suits this kernel: Ho * Wo <= kMaxPixels, Ci * kh * kw <= 32767
  // (the per-filter counts are summed in int16).
  static bool fits(int Ci, int kh, int kw, int Ho, int Wo);
  // The kernel's work on one image, in row-vectors: every output pixel's valid taps x Ci / 2
  // (the +1 inputs of random signs) x the blocks of filters; a row-vector is ~12 instructions
  // on AVX2 (the tree, its loads, the ripple), against ~4 for one 1-bit of the sparse kernel.
  static int64_t row_vectors(int Co, int Ci, int kh, int kw, int stride, int pad, int H, int W,
                             Isa isa);

  // bits: (Co, Ci, kh, kw) 0/1; eta, xi, bias: (Co); thr: (Ci) or null (threshold 0).
  // Throws std::invalid_argument where fits() is false or the ISA is Ref or not supported.
  BConvTiny(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
            const float* xi, const float* bias, const float* thr, int stride, int pad, int H,
            int W, Isa isa);

  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo), then post (if any), as BConvLayer::forward.
  void forward(const float* x, int N, float* y, ThreadPool* pool,
               const BConvPost& post = BConvPost()) const;
  // The integer parts: cnt (N, Co, Ho, Wo) = conv(x, b), ws (N, Ho, Wo) = conv(x, 1).
  void counts(const float* x, int N, int32_t* cnt, int32_t* ws, ThreadPool* pool) const;

  int Ho() const { return Ho_; }
  int Wo() const { return Wo_; }
  // Filters per block (one vector of bits): 256, or 512 on AVX-512.
  int block() const { return 8 * VB_; }
  Isa isa() const { return isa_; }

 private:
  void run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
           const BConvPost& post) const;
  // One image, filters [b0 * block, b1 * block): counts, then the epilogue.
  void image(const float* x, int b0, int b1, float* y, int32_t* cnt, int32_t* ws,
             const BConvPost& post) const;

  int Co_, Ci_, kh_, kw_, s_, pad_, H_, W_, Ho_, Wo_, P_;
  int VB_;      // bytes per row of one block: 32 or 64
  int nblk_;    // blocks of filters
  int R_;       // rows: kh * kw * Ci (row R_ of each block is zero: the lists' padding)
  Isa isa_;
  const KernelTable* kt_;
  std::vector<float> eta_, xi_, bias_, thr_;
  std::vector<uint8_t> tab_;      // (nblk, R + 1, VB): the bit-transposed weights
  std::vector<int32_t> nvalid_;   // (P, nblk * 8 * VB): n[co, p], the 1-bits on p's valid taps
  std::vector<int32_t> taps_;     // per pixel p: its valid taps' (ky * kw + kx, iy * W + ix)
  std::vector<int32_t> tstart_;   // (P + 1)
};

}  // namespace sbnn
