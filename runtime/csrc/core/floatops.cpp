#include "core/floatops.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace sbnn {

#if defined(__aarch64__) && defined(__ARM_NEON)
// AArch64: register tiles of R rows x 4V columns (R*V float32x4 accumulators), the weights
// broadcast (ld1r), one product and one sum per multiply-accumulate in the same order as the
// portable loop below (bias first, then k = 0..K-1): the outputs equal it bit for bit, and x86's
// (a fused vfmaq would halve the instructions but round differently).
namespace {

template <int R, int V>
inline void gemm_tile_neon(const float* w, int K, const float* col, int P, const float* bias,
                           int c, int j, float* y) {
  float32x4_t acc[R][V];
  for (int r = 0; r < R; ++r) {
    const float32x4_t b = vdupq_n_f32(bias ? bias[c + r] : 0.0f);
    for (int v = 0; v < V; ++v) acc[r][v] = b;
  }
  for (int k = 0; k < K; ++k) {
    const float* cr = col + static_cast<size_t>(k) * P + j;
    float32x4_t x[V];
    for (int v = 0; v < V; ++v) x[v] = vld1q_f32(cr + 4 * v);
    for (int r = 0; r < R; ++r) {
      const float32x4_t wv = vld1q_dup_f32(w + static_cast<size_t>(c + r) * K + k);
      for (int v = 0; v < V; ++v) acc[r][v] = vaddq_f32(acc[r][v], vmulq_f32(wv, x[v]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v)
      vst1q_f32(y + static_cast<size_t>(c + r) * P + j + 4 * v, acc[r][v]);
}

// Rows c..c+R of columns [j0, j1): tiles of 16 columns, then of 4, then single columns.
template <int R>
void gemm_rows_neon(const float* w, int K, const float* col, int P, const float* bias, int c,
                    int j0, int j1, float* y) {
  int j = j0;
  for (; j + 16 <= j1; j += 16) gemm_tile_neon<R, 4>(w, K, col, P, bias, c, j, y);
  for (; j + 4 <= j1; j += 4) gemm_tile_neon<R, 1>(w, K, col, P, bias, c, j, y);
  for (; j < j1; ++j)
    for (int r = 0; r < R; ++r) {
      float a = bias ? bias[c + r] : 0.0f;
      for (int k = 0; k < K; ++k)
        a += w[static_cast<size_t>(c + r) * K + k] * col[static_cast<size_t>(k) * P + j];
      y[static_cast<size_t>(c + r) * P + j] = a;
    }
}

}  // namespace

void gemm_f32(const float* w, int K, const float* col, int P, const float* bias, int c0, int c1,
              float* y) {
  constexpr int PB = 256;  // columns per block: its K x PB slice of col is reused by every row
  for (int p0 = 0; p0 < P; p0 += PB) {
    const int p1 = std::min(P, p0 + PB);
    int c = c0;
    for (; c + 4 <= c1; c += 4) gemm_rows_neon<4>(w, K, col, P, bias, c, p0, p1, y);
    switch (c1 - c) {
      case 3: gemm_rows_neon<3>(w, K, col, P, bias, c, p0, p1, y); break;
      case 2: gemm_rows_neon<2>(w, K, col, P, bias, c, p0, p1, y); break;
      case 1: gemm_rows_neon<1>(w, K, col, P, bias, c, p0, p1, y); break;
      default: break;
    }
  }
}
#else  // portable (x86)
void gemm_f32(const float* w, int K, const float* col, int P, const float* bias, int c0, int c1,
              float* y) {
  constexpr int PB = 256, CB = 4;
  float acc[CB][PB];
  for (int p0 = 0; p0 < P; p0 += PB) {
    const int pn = std::min(PB, P - p0);
    for (int c = c0; c < c1; c += CB) {
      const int cn = std::min(CB, c1 - c);
      for (int r = 0; r < cn; ++r) {
        const float b = bias ? bias[c + r] : 0.0f;
        for (int j = 0; j < pn; ++j) acc[r][j] = b;
      }
      for (int k = 0; k < K; ++k) {
        const float* cr = col + static_cast<size_t>(k) * P + p0;
        for (int r = 0; r < cn; ++r) {
          const float wv = w[static_cast<size_t>(c + r) * K + k];
          float* a = acc[r];
          for (int j = 0; j < pn; ++j) a[j] += wv * cr[j];
        }
      }
      for (int r = 0; r < cn; ++r)
        std::copy(acc[r], acc[r] + pn, y + static_cast<size_t>(c + r) * P + p0);
    }
  }
}
#endif  // __aarch64__

FloatConv::FloatConv(const float* w, int Co, int Ci, int kh, int kw, const float* bias, int stride,
                     int pad, int H, int W, Isa isa)
    : Co_(Co), Ci_(Ci), kh_(kh), kw_(kw), stride_(stride), pad_(pad), H_(H), W_(W), isa_(isa) {
  if (Co < 1 || Ci < 1 || kh < 1 || kw < 1)
    throw std::invalid_argument("conv2d: weight dimensions must be >= 1");
  if (stride < 1 || pad < 0) throw std::invalid_argument("conv2d: stride >= 1 and padding >= 0");
  Ho_ = (H + 2 * pad - kh) / stride + 1;
  Wo_ = (W + 2 * pad - kw) / stride + 1;
  if (H + 2 * pad < kh || W + 2 * pad < kw || Ho_ < 1 || Wo_ < 1)
    throw std::invalid_argument("conv2d: kernel larger than the padded input");
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("conv2d: impl '") + isa_name(isa) +
                                "' is not supported by this CPU");
  w_.assign(w, w + static_cast<size_t>(Co) * Ci * kh * kw);
  if (bias) bias_.assign(bias, bias + Co);
  if (isa_ == Isa::Ref) return;
  kt_ = &kernel_table(isa_);
  if (!kt_->sgemm) kt_ = &kernels_scalar();
  const int mr = kt_->sgemm_mr, vl = kt_->sgemm_vl, K = Ci * kh * kw;
  // One vector of columns when a whole image fits it (4x4 maps: 16 pixels), else two.
  nr_ = Ho_ * Wo_ <= vl ? vl : 2 * vl;
  const int npan = (Co + mr - 1) / mr;
  apack_.assign(static_cast<size_t>(npan) * K * mr, 0.0f);
  for (int c = 0; c < Co; ++c)
    for (int k = 0; k < K; ++k)
      apack_[(static_cast<size_t>(c / mr) * K + k) * mr + c % mr] =
          w_[static_cast<size_t>(c) * K + k];
}

void FloatConv::image(const float* x, float* y, ThreadPool* pool, bool clamp, float lo,
                      float hi) const {
  if (isa_ == Isa::Ref) {
    image_ref(x, y, pool);
    if (clamp)
      for (size_t i = 0; i < static_cast<size_t>(Co_) * Ho_ * Wo_; ++i)
        y[i] = std::min(std::max(y[i], lo), hi);
    return;
  }
  const int P = Ho_ * Wo_, K = Ci_ * kh_ * kw_, nr = nr_, mr = kt_->sgemm_mr;
  const int njb = (P + nr - 1) / nr;
  // x (Ci, H, W) -> column panels Bp[jb][k][j] = x[ci][oh*s + ky - pad][ow*s + kx - pad] of
  // pixel p = jb*nr + j = oh*Wo + ow, k = (ci*kh + ky)*kw + kx; zero in the padding and in the
  // columns past P.
  std::unique_ptr<float[]> bp(new float[static_cast<size_t>(njb) * K * nr]);
  float* B = bp.get();
  if (P % nr) std::fill(B + static_cast<size_t>(njb - 1) * K * nr, B + static_cast<size_t>(njb) * K * nr, 0.0f);
  for (int ci = 0; ci < Ci_; ++ci)
    for (int ky = 0; ky < kh_; ++ky)
      for (int kx = 0; kx < kw_; ++kx) {
        const int k = (ci * kh_ + ky) * kw_ + kx;
        const float* xc = x + static_cast<size_t>(ci) * H_ * W_;
        // Valid output columns of this tap: ow*s + kx - pad in [0, W), i.e. ow in
        // [ceil((pad - kx) / s), floor((W - 1 + pad - kx) / s)]. C++ division truncates toward
        // zero, so a negative numerator is handled apart: on the left it clamps to 0 anyway; on
        // the right it means the tap never lands inside the row (no valid column at all).
        const int ow0 = std::min(Wo_, std::max(0, (pad_ - kx + stride_ - 1) / stride_));
        const int last = W_ - 1 + pad_ - kx;
        const int ow1 = last < 0 ? ow0 : std::max(ow0, std::min(Wo_, last / stride_ + 1));
        for (int oh = 0; oh < Ho_; ++oh) {
          const int h = oh * stride_ + ky - pad_;
          const bool hin = h >= 0 && h < H_;
          const float* xr = xc + static_cast<size_t>(hin ? h : 0) * W_ + (kx - pad_);
          // Runs of one output row that stay inside one panel are contiguous there.
          for (int ow = 0; ow < Wo_;) {
            const int p = oh * Wo_ + ow, j = p % nr;
            const int n = std::min(nr - j, Wo_ - ow);
            float* d = B + (static_cast<size_t>(p / nr) * K + k) * nr + j;
            // zeros left of the valid columns, the copy, zeros right of them: three plain
            // loops (the copy vectorises at stride 1) instead of a select per element
            const int a0 = hin ? std::min(std::max(ow0 - ow, 0), n) : n;
            const int a1 = hin ? std::min(std::max(ow1 - ow, a0), n) : n;
            for (int q = 0; q < a0; ++q) d[q] = 0.0f;
            if (stride_ == 1) {
              const float* src = xr + ow;
              for (int q = a0; q < a1; ++q) d[q] = src[q];
            } else {
              for (int q = a0; q < a1; ++q) d[q] = xr[(ow + q) * stride_];
            }
            for (int q = a1; q < n; ++q) d[q] = 0.0f;
            ow += n;
          }
        }
      }
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  const int npan = (Co_ + mr - 1) / mr;
  const int T = pool ? pool->size() : 1;
  // Whole A panels per task: several tasks per thread for balance, one when single-threaded.
  const int ppt = T > 1 ? std::max(1, npan / (2 * T)) : npan;
  const int ntask = (npan + ppt - 1) / ppt;
  auto task = [&](int t) {
    const int i0 = t * ppt * mr, i1 = std::min(Co_, (t + 1) * ppt * mr);
    kt_->sgemm(apack_.data() + static_cast<size_t>(t) * ppt * K * mr, B, i1 - i0, P, K, nr,
               bias ? bias + i0 : nullptr, y + static_cast<size_t>(i0) * P, P);
    if (clamp) {
      float* r = y + static_cast<size_t>(i0) * P;
      for (size_t i = 0; i < static_cast<size_t>(i1 - i0) * P; ++i)
        r[i] = std::min(std::max(r[i], lo), hi);
    }
  };
  if (T > 1 && ntask > 1)
    pool->parallel_for(ntask, task);
  else
    for (int t = 0; t < ntask; ++t) task(t);
}

void FloatConv::image_ref(const float* x, float* y, ThreadPool* pool) const {
  const int P = Ho_ * Wo_, K = Ci_ * kh_ * kw_;
  const bool direct = kh_ == 1 && kw_ == 1 && stride_ == 1 && pad_ == 0;
  std::unique_ptr<float[]> colbuf;
  const float* col = x;
  if (!direct) {
    colbuf.reset(new float[static_cast<size_t>(K) * P]);
    float* cb = colbuf.get();
    for (int ci = 0; ci < Ci_; ++ci)
      for (int ky = 0; ky < kh_; ++ky)
        for (int kx = 0; kx < kw_; ++kx) {
          float* dst = cb + static_cast<size_t>((ci * kh_ + ky) * kw_ + kx) * P;
          for (int oh = 0; oh < Ho_; ++oh) {
            const int h = oh * stride_ + ky - pad_;
            for (int ow = 0; ow < Wo_; ++ow) {
              const int w = ow * stride_ + kx - pad_;
              dst[oh * Wo_ + ow] = (h >= 0 && h < H_ && w >= 0 && w < W_)
                                       ? x[(static_cast<size_t>(ci) * H_ + h) * W_ + w]
                                       : 0.0f;
            }
          }
        }
    col = cb;
  }
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  constexpr int CB = 16;
  const int nblk = (Co_ + CB - 1) / CB;
  auto block = [&](int b) {
    gemm_f32(w_.data(), K, col, P, bias, b * CB, std::min(Co_, (b + 1) * CB), y);
  };
  if (pool && pool->size() > 1)
    pool->parallel_for(nblk, block);
  else
    for (int b = 0; b < nblk; ++b) block(b);
}

void FloatConv::forward(const float* x, int N, float* y, ThreadPool* pool, bool clamp, float lo,
                        float hi) const {
  const size_t in_sz = static_cast<size_t>(Ci_) * H_ * W_;
  const size_t out_sz = static_cast<size_t>(Co_) * Ho_ * Wo_;
  if (pool && pool->size() > 1 && N >= pool->size()) {
    pool->parallel_for(N, [&](int n) {
      image(x + n * in_sz, y + n * out_sz, nullptr, clamp, lo, hi);
    });
  } else {
    for (int n = 0; n < N; ++n) image(x + n * in_sz, y + n * out_sz, pool, clamp, lo, hi);
  }
}

// One plane of a k x k max pooling (padded taps skipped), as the reference loop: the first
// largest value of the window in row-major order, and a NaN anywhere in the window wins. A plane
// without NaN (checked first, vectorised) takes the fast path: per output row the column-wise
// max of its valid input rows (vectorised across columns), then per output the max of its valid
// columns; the compare-and-branch chain per output it replaced took ~550 us on 64@32x32 k3 s2.
void maxpool_plane(const float* x, int H, int W, int k, int stride, int pad, int Ho, int Wo,
                   float* y) {
  const float ninf = -std::numeric_limits<float>::infinity();
  int nan = 0;
  for (size_t i = 0; i < static_cast<size_t>(H) * W; ++i) nan |= x[i] != x[i];
  if (nan) {  // the reference's loop
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow) {
        float m = ninf;
        for (int ky = 0; ky < k; ++ky) {
          const int h = oh * stride + ky - pad;
          if (h < 0 || h >= H) continue;
          for (int kx = 0; kx < k; ++kx) {
            const int w = ow * stride + kx - pad;
            if (w < 0 || w >= W) continue;
            const float v = x[static_cast<size_t>(h) * W + w];
            if (v > m || v != v) m = v;
          }
        }
        y[static_cast<size_t>(oh) * Wo + ow] = m;
      }
    return;
  }
  std::vector<float> colmax(static_cast<size_t>(W));
  float* t = colmax.data();
  for (int oh = 0; oh < Ho; ++oh) {
    const int hs = oh * stride - pad;
    const int h0 = std::max(hs, 0), h1 = std::min(hs + k, H);
    float* yr = y + static_cast<size_t>(oh) * Wo;
    if (h0 >= h1) {
      for (int ow = 0; ow < Wo; ++ow) yr[ow] = ninf;
      continue;
    }
    const float* r0 = x + static_cast<size_t>(h0) * W;
    for (int w = 0; w < W; ++w) t[w] = r0[w];
    for (int h = h0 + 1; h < h1; ++h) {
      const float* r = x + static_cast<size_t>(h) * W;
      for (int w = 0; w < W; ++w) t[w] = r[w] > t[w] ? r[w] : t[w];
    }
    for (int ow = 0; ow < Wo; ++ow) {
      const int ws = ow * stride - pad;
      const int w0 = std::max(ws, 0), w1 = std::min(ws + k, W);
      float m = ninf;
      for (int w = w0; w < w1; ++w) m = t[w] > m ? t[w] : m;
      yr[ow] = m;
    }
  }
}

void linear_f32(const float* x, int N, const float* w, int O, int I, const float* bias, float* y,
                ThreadPool* pool) {
  auto row = [&](int n) {
    const float* xn = x + static_cast<size_t>(n) * I;
    float* yn = y + static_cast<size_t>(n) * O;
    for (int o = 0; o < O; ++o) {
      const float* wo = w + static_cast<size_t>(o) * I;
      float s = 0.0f;
      for (int i = 0; i < I; ++i) s += wo[i] * xn[i];
      yn[o] = s + (bias ? bias[o] : 0.0f);
    }
  };
  if (pool && pool->size() > 1)
    pool->parallel_for(N, row);
  else
    for (int n = 0; n < N; ++n) row(n);
}

}  // namespace sbnn
