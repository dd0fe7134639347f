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
    : FloatConv(w, Co, Ci, kh, kw, bias,
                ConvGeometry{stride, stride, pad, pad, pad, pad, 1, 1, 1}, H, W, isa) {}

FloatConv::FloatConv(const float* w, int Co, int Ci, int kh, int kw, const float* bias,
                     const ConvGeometry& geo, int H, int W, Isa isa)
    : Co_(Co), Ci_(Ci), kh_(kh), kw_(kw), H_(H), W_(W), sh_(geo.sh), sw_(geo.sw), pt_(geo.pt),
      pl_(geo.pl), dh_(geo.dh), dw_(geo.dw), G_(geo.groups), isa_(isa) {
  if (Co < 1 || Ci < 1 || kh < 1 || kw < 1)
    throw std::invalid_argument("conv2d: weight dimensions must be >= 1");
  if (geo.sh < 1 || geo.sw < 1 || geo.dh < 1 || geo.dw < 1 || geo.groups < 1 ||
      std::min({geo.pt, geo.pl, geo.pb, geo.pr}) < 0)
    throw std::invalid_argument("conv2d: stride, dilation, groups >= 1 and padding >= 0");
  if (Ci % G_ || Co % G_)
    throw std::invalid_argument("conv2d: channels " + std::to_string(Ci) + " -> " +
                                std::to_string(Co) + " do not split into " +
                                std::to_string(G_) + " groups");
  Cig_ = Ci / G_;
  Cog_ = Co / G_;
  const int ekh = (kh - 1) * dh_ + 1, ekw = (kw - 1) * dw_ + 1;
  const int hp = H + geo.pt + geo.pb, wp = W + geo.pl + geo.pr;
  if (hp < ekh || wp < ekw)
    throw std::invalid_argument("conv2d: kernel larger than the padded input");
  Ho_ = (hp - ekh) / sh_ + 1;
  Wo_ = (wp - ekw) / sw_ + 1;
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("conv2d: impl '") + isa_name(isa) +
                                "' is not supported by this CPU");
  const int K = Cig_ * kh * kw;
  w_.assign(w, w + static_cast<size_t>(Co) * K);
  if (bias) bias_.assign(bias, bias + Co);
  if (isa_ == Isa::Ref) return;
  kt_ = &kernel_table(isa_);
  if (!kt_->sgemm) kt_ = &kernels_scalar();
  // depthwise (a one-channel input with groups = 1 is not: its outputs are one GEMM's rows)
  if (depthwise()) return;  // the direct kernel reads w_ as it is
  const int mr = kt_->sgemm_mr, vl = kt_->sgemm_vl;
  // One vector of columns when a whole image fits it (4x4 maps: 16 pixels), else two.
  nr_ = Ho_ * Wo_ <= vl ? vl : 2 * vl;
  const int npan = (Cog_ + mr - 1) / mr;
  apack_.assign(static_cast<size_t>(G_) * npan * K * mr, 0.0f);
  for (int c = 0; c < Co; ++c) {
    const int g = c / Cog_, cg = c % Cog_;
    for (int k = 0; k < K; ++k)
      apack_[((static_cast<size_t>(g) * npan + cg / mr) * K + k) * mr + cg % mr] =
          w_[static_cast<size_t>(c) * K + k];
  }
}

void FloatConv::columns(const float* x, float* B, int p0, int p1) const {
  const int P = Ho_ * Wo_, K = Cig_ * kh_ * kw_, nr = nr_;
  const int jb0 = p0 / nr, njb = (p1 - p0 + nr - 1) / nr;
  // x (Cig, H, W) -> column panels Bp[jb - jb0][k][j] = x[ci][oh*sh + ky*dh - pt][ow*sw +
  // kx*dw - pl] of pixel p = jb*nr + j = oh*Wo + ow in [p0, p1), k = (ci*kh + ky)*kw + kx; zero
  // in the padding and in the columns past P.
  if (p1 == P && P % nr)
    std::fill(B + static_cast<size_t>(njb - 1) * K * nr, B + static_cast<size_t>(njb) * K * nr,
              0.0f);
  const int oh_first = p0 / Wo_, oh_end = (p1 - 1) / Wo_ + 1;
  for (int ci = 0; ci < Cig_; ++ci)
    for (int ky = 0; ky < kh_; ++ky)
      for (int kx = 0; kx < kw_; ++kx) {
        const int k = (ci * kh_ + ky) * kw_ + kx, ox = kx * dw_ - pl_;
        const float* xc = x + static_cast<size_t>(ci) * H_ * W_;
        // Valid output columns of this tap: ow*sw + ox in [0, W), i.e. ow in
        // [ceil(-ox / sw), floor((W - 1 - ox) / sw)]. C++ division truncates toward zero, so a
        // negative numerator is handled apart: on the left it clamps to 0 anyway; on the right
        // it means the tap never lands inside the row (no valid column at all).
        const int ow0 = std::min(Wo_, std::max(0, (-ox + sw_ - 1) / sw_));
        const int last = W_ - 1 - ox;
        const int ow1 = last < 0 ? ow0 : std::max(ow0, std::min(Wo_, last / sw_ + 1));
        for (int oh = oh_first; oh < oh_end; ++oh) {
          const int h = oh * sh_ + ky * dh_ - pt_;
          const bool hin = h >= 0 && h < H_;
          const float* xr = xc + static_cast<size_t>(hin ? h : 0) * W_ + ox;
          const int ow_end = std::min(Wo_, p1 - oh * Wo_);
          // Runs of one output row that stay inside one panel are contiguous there.
          for (int ow = std::max(0, p0 - oh * Wo_); ow < ow_end;) {
            const int p = oh * Wo_ + ow, j = p % nr;
            const int n = std::min(nr - j, ow_end - ow);
            float* d = B + (static_cast<size_t>(p / nr - jb0) * K + k) * nr + j;
            // zeros left of the valid columns, the copy, zeros right of them: three plain
            // loops (the copy vectorises at stride 1) instead of a select per element
            const int a0 = hin ? std::min(std::max(ow0 - ow, 0), n) : n;
            const int a1 = hin ? std::min(std::max(ow1 - ow, a0), n) : n;
            for (int q = 0; q < a0; ++q) d[q] = 0.0f;
            if (sw_ == 1) {
              const float* src = xr + ow;
              for (int q = a0; q < a1; ++q) d[q] = src[q];
            } else {
              for (int q = a0; q < a1; ++q) d[q] = xr[(ow + q) * sw_];
            }
            for (int q = a1; q < n; ++q) d[q] = 0.0f;
            ow += n;
          }
        }
      }
}

namespace {

// One depthwise output plane: y = bias, then tap by tap (in (ky, kx) order, the order of the
// reference GEMM's sum, so the outputs equal it) over the output pixels whose input lies
// inside the image: no bounds test in the inner loop, which is contiguous at stride 1.
struct DwArgs {
  const float *x, *w;
  float b;
  float* y;
  int H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw;
};

inline __attribute__((always_inline)) void dw_plane_body(const DwArgs& a) {
  for (int i = 0; i < a.Ho * a.Wo; ++i) a.y[i] = a.b;
  for (int ky = 0; ky < a.kh; ++ky) {
    const int oy = ky * a.dh - a.pt;  // input row of output row 0
    const int oh0 = std::min(a.Ho, std::max(0, (-oy + a.sh - 1) / a.sh));
    const int lasth = a.H - 1 - oy;
    const int oh1 = lasth < 0 ? oh0 : std::max(oh0, std::min(a.Ho, lasth / a.sh + 1));
    for (int kx = 0; kx < a.kw; ++kx) {
      const float wv = a.w[ky * a.kw + kx];
      const int ox = kx * a.dw - a.pl;
      const int ow0 = std::min(a.Wo, std::max(0, (-ox + a.sw - 1) / a.sw));
      const int lastw = a.W - 1 - ox;
      const int ow1 = lastw < 0 ? ow0 : std::max(ow0, std::min(a.Wo, lastw / a.sw + 1));
      for (int oh = oh0; oh < oh1; ++oh) {
        const float* xr = a.x + static_cast<size_t>(oh * a.sh + oy) * a.W + ox;
        float* yr = a.y + static_cast<size_t>(oh) * a.Wo;
        if (a.sw == 1) {
          for (int ow = ow0; ow < ow1; ++ow) yr[ow] += wv * xr[ow];
        } else {
          for (int ow = ow0; ow < ow1; ++ow) yr[ow] += wv * xr[ow * a.sw];
        }
      }
    }
  }
}

void dw_plane_portable(const DwArgs& a) { dw_plane_body(a); }

#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
// The same loops compiled for AVX2 (no FMA: a product and a sum, each rounded, as above, so
// both give the same bits).
__attribute__((target("avx2"))) void dw_plane_avx2(const DwArgs& a) { dw_plane_body(a); }
#endif

}  // namespace

void FloatConv::image_depthwise(const float* x, float* y, ThreadPool* pool) const {
  const int m = Co_ / Ci_;  // outputs per input channel (the depth multiplier)
  void (*fn)(const DwArgs&) = dw_plane_portable;
#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
  if (isa_ == Isa::Avx2 || isa_ == Isa::Avx512) fn = dw_plane_avx2;
#endif
  const size_t P = static_cast<size_t>(Ho_) * Wo_;
  auto chan = [&](int o) {
    DwArgs a{x + static_cast<size_t>(o / m) * H_ * W_,
             w_.data() + static_cast<size_t>(o) * kh_ * kw_,
             bias_.empty() ? 0.0f : bias_[o], y + o * P, H_, W_, Ho_, Wo_, kh_, kw_, sh_, sw_,
             pt_, pl_, dh_, dw_};
    fn(a);
  };
  if (pool && pool->size() > 1 && Co_ > 1)
    pool->parallel_for(Co_, chan);
  else
    for (int o = 0; o < Co_; ++o) chan(o);
}

void FloatConv::image(const float* x, float* y, ThreadPool* pool, bool clamp, float lo,
                      float hi) const {
  const size_t P = static_cast<size_t>(Ho_) * Wo_;
  auto clamp_all = [&]() {
    if (clamp)
      for (size_t i = 0; i < static_cast<size_t>(Co_) * P; ++i)
        y[i] = std::min(std::max(y[i], lo), hi);
  };
  if (isa_ == Isa::Ref) {
    image_ref(x, y, pool);
    clamp_all();
    return;
  }
  if (depthwise()) {
    image_depthwise(x, y, pool);
    clamp_all();
    return;
  }
  const int K = Cig_ * kh_ * kw_, nr = nr_, mr = kt_->sgemm_mr;
  const int njb = static_cast<int>((P + nr - 1) / nr);
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  const int npan = (Cog_ + mr - 1) / mr;
  const int T = pool ? pool->size() : 1;
  // Whole A panels per task: several tasks per thread for balance, one when single-threaded.
  const int ppt = T > 1 ? std::max(1, npan / (2 * T)) : npan;
  const int ntask = (npan + ppt - 1) / ppt;
  const bool split = T > 1 && ntask > 1;
  // Pixel blocks (issue 20, the cold start): one thread writes the column panels of a block of
  // pixels at a time, at most kColBlockBytes, into one buffer that stays in L1, and multiplies
  // them before the next block, instead of writing the whole image's panels first (110 KB for
  // the 3 -> 64 stem at 32x32, every line a write miss when the caches are cold). The tiles
  // and their sums are the same, so are the outputs. Only where the weights (read once per
  // block) fit the block size too: ResNet-18's 1x1 shortcuts (32-512 KB of weights, 16-64 KB
  // of panels) measured up to 10 % slower warm with blocks. Split over threads: one block
  // (the threads share the panels).
  const int pan_bytes = K * nr * static_cast<int>(sizeof(float));
  const bool small_a = static_cast<int64_t>(Cog_) * K * sizeof(float) <= kColBlockBytes;
  int nblk = split || !small_a
                 ? 1
                 : std::max(1, std::min(njb, (njb * pan_bytes + kColBlockBytes - 1) /
                                                 kColBlockBytes));
  const int bpp = (njb + nblk - 1) / nblk;  // panels per block, evened out
  nblk = (njb + bpp - 1) / bpp;
  std::unique_ptr<float[]> bp(new float[static_cast<size_t>(bpp) * K * nr]);
  float* B = bp.get();
  for (int g = 0; g < G_; ++g) {
    const int c0 = g * Cog_;
    const float* ap = apack_.data() + static_cast<size_t>(g) * npan * K * mr;
    for (int b = 0; b < nblk; ++b) {
      const int p0 = b * bpp * nr, p1 = std::min(static_cast<int>(P), (b + 1) * bpp * nr);
      columns(x + static_cast<size_t>(g) * Cig_ * H_ * W_, B, p0, p1);
      auto task = [&](int t) {
        const int i0 = t * ppt * mr, i1 = std::min(Cog_, (t + 1) * ppt * mr);
        float* r = y + static_cast<size_t>(c0 + i0) * P + p0;
        kt_->sgemm(ap + static_cast<size_t>(t) * ppt * K * mr, B, i1 - i0, p1 - p0, K, nr,
                   bias ? bias + c0 + i0 : nullptr, r, static_cast<int>(P));
        if (clamp)
          for (int i = 0; i < i1 - i0; ++i)
            for (int j = 0; j < p1 - p0; ++j) {
              float& v = r[static_cast<size_t>(i) * P + j];
              v = std::min(std::max(v, lo), hi);
            }
      };
      if (split)
        pool->parallel_for(ntask, task);
      else
        for (int t = 0; t < ntask; ++t) task(t);
    }
  }
}

void FloatConv::image_ref(const float* x, float* y, ThreadPool* pool) const {
  const int P = Ho_ * Wo_, K = Cig_ * kh_ * kw_;
  const bool direct = kh_ == 1 && kw_ == 1 && sh_ == 1 && sw_ == 1 && pt_ == 0 && pl_ == 0 &&
                      Ho_ == H_ && Wo_ == W_;
  std::unique_ptr<float[]> colbuf;
  if (!direct) colbuf.reset(new float[static_cast<size_t>(K) * P]);
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  for (int g = 0; g < G_; ++g) {
    const float* xg = x + static_cast<size_t>(g) * Cig_ * H_ * W_;
    const float* col = xg;
    if (!direct) {
      float* cb = colbuf.get();
      for (int ci = 0; ci < Cig_; ++ci)
        for (int ky = 0; ky < kh_; ++ky)
          for (int kx = 0; kx < kw_; ++kx) {
            float* dst = cb + static_cast<size_t>((ci * kh_ + ky) * kw_ + kx) * P;
            for (int oh = 0; oh < Ho_; ++oh) {
              const int h = oh * sh_ + ky * dh_ - pt_;
              for (int ow = 0; ow < Wo_; ++ow) {
                const int w = ow * sw_ + kx * dw_ - pl_;
                dst[oh * Wo_ + ow] = (h >= 0 && h < H_ && w >= 0 && w < W_)
                                         ? xg[(static_cast<size_t>(ci) * H_ + h) * W_ + w]
                                         : 0.0f;
              }
            }
          }
      col = cb;
    }
    // group g: rows [g*Cog, (g+1)*Cog) of w (K = Cig*kh*kw each) against its columns
    const float* wg = w_.data() + static_cast<size_t>(g) * Cog_ * K;
    float* yg = y + static_cast<size_t>(g) * Cog_ * P;
    const float* bg = bias ? bias + g * Cog_ : nullptr;
    constexpr int CB = 16;
    const int nblk = (Cog_ + CB - 1) / CB;
    auto block = [&](int b) {
      gemm_f32(wg, K, col, P, bg, b * CB, std::min(Cog_, (b + 1) * CB), yg);
    };
    if (pool && pool->size() > 1)
      pool->parallel_for(nblk, block);
    else
      for (int b = 0; b < nblk; ++b) block(b);
  }
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

// ---------------------------------------------------------------- max pooling
// Separable: per output row the element-wise max of its window's valid input rows (one
// vectorised pass per row), written into a row buffer padded with -inf on both sides, then per
// output the max of its window's kw cells of that buffer (for stride 2 over the buffer split
// into its even and odd cells, so every pass is contiguous). The common windows (3x3 and 2x2 at
// stride 2, 3x3 at stride 1) get their own copies with constant loop counts. A plane holding a
// NaN is redone by the plain loop (a NaN in a window wins, as the reference's np.max); the
// vertical pass detects one by summing every value it reads (a NaN, or inf - inf, makes the
// sum NaN: the latter only sends a plane down the exact slow path for nothing). Times on
// 64@32x32 k3 s2 (AVX2): the first engine's compare-and-branch chain per output ~550 us, the
// first separable version (a NaN scan per plane, scalar windows) 58 us.
namespace {

// Eight floats as one GCC vector (one ymm register under AVX2, two xmm under SSE or NEON);
// unaligned loads and stores through memcpy. Macros, not functions: a function taking or
// returning a 32-byte vector draws GCC's ABI note (-Wpsabi) in the portable compile.
typedef float F8 __attribute__((vector_size(32)));
typedef int I8 __attribute__((vector_size(32)));
#define SBNN_LD8(v, p) __builtin_memcpy(&(v), (p), sizeof(F8))
#define SBNN_ST8(p, v) __builtin_memcpy((p), &(v), sizeof(F8))
#define SBNN_MAX8(m, v) (m) = ((v) > (m)) ? (v) : (m)

// Positions 0, 8, ..., then n - 8 (the last vector shifted back to end at n: it redoes a few
// positions with the same result); n >= 8.
#define SBNN_FOR8(i, n) for (int i = 0, i##_e = (n); i < i##_e; i = (i + 8 < i##_e && i + 16 > i##_e) ? i##_e - 8 : i + 8)

void maxpool_ref(const float* x, int nplanes, const MaxPoolGeom& g, float* y);

// KH, KW, SW: the window's height, width and column stride when known at compile time, else 0
// (taken from g). Rows of at least 8 inputs and 8 outputs (vec_ok); other planes take the
// scalar loops of maxpool_small.
template <int KH, int KW, int SW>
inline __attribute__((always_inline)) void maxpool_body(const float* x, int nplanes,
                                                         const MaxPoolGeom& g, float* y,
                                                         float* buf) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int H = g.H, W = g.W, Wo = g.Wo;
  const int kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, sw = SW ? SW : g.sw;
  // row buffer: pl cells of -inf, the W column maxima, -inf up to the last window's end and
  // past it (the stride-2 split reads whole vectors)
  const int Lp = std::max(g.pl + W, (Wo - 1) * sw + kw);
  const int ne = (Lp + 1) / 2, ne8 = (ne + 7) / 8 * 8;
  const int Lb = std::max(Lp, 2 * ne8) + 8;
  float* tp = buf;
  float* ev = buf + Lb;  // stride 2: tp[2j]
  float* od = ev + ne8;  // stride 2: tp[2j + 1]
  for (int i = 0; i < g.pl; ++i) tp[i] = ninf;
  for (int i = g.pl + W; i < Lb; ++i) tp[i] = ninf;
  float* t = tp + g.pl;
  for (int p = 0; p < nplanes; ++p) {
    const float* xp = x + static_cast<size_t>(p) * H * W;
    float* yp = y + static_cast<size_t>(p) * g.Ho * Wo;
    F8 sum = {};
    for (int oh = 0; oh < g.Ho; ++oh) {
      const int hs = oh * g.sh - g.pt;
      const int h0 = std::max(hs, 0), h1 = std::min(hs + kh, H);
      float* yr = yp + static_cast<size_t>(oh) * Wo;
      if (h0 >= h1) {  // a window wholly in the padding (the reference's -inf fill)
        for (int ow = 0; ow < Wo; ++ow) yr[ow] = ninf;
        continue;
      }
      // vertical: t[w] = max of the window's rows at column w
      const float* r0 = xp + static_cast<size_t>(h0) * W;
      if (KH && h1 - h0 == KH) {  // a whole window: constant count
        SBNN_FOR8(w, W) {
          F8 m, v;
          SBNN_LD8(m, r0 + w);
          sum += m;
          for (int h = 1; h < KH; ++h) {
            SBNN_LD8(v, r0 + h * W + w);
            sum += v;
            SBNN_MAX8(m, v);
          }
          SBNN_ST8(t + w, m);
        }
      } else {
        SBNN_FOR8(w, W) {
          F8 m, v;
          SBNN_LD8(m, r0 + w);
          sum += m;
          for (int h = 1; h < h1 - h0; ++h) {
            SBNN_LD8(v, r0 + h * W + w);
            sum += v;
            SBNN_MAX8(m, v);
          }
          SBNN_ST8(t + w, m);
        }
      }
      // horizontal: yr[ow] = max of tp[ow*sw + kx], kx < kw
      if (sw == 1) {
        SBNN_FOR8(ow, Wo) {
          F8 m, v;
          SBNN_LD8(m, tp + ow);
          for (int kx = 1; kx < kw; ++kx) {
            SBNN_LD8(v, tp + ow + kx);
            SBNN_MAX8(m, v);
          }
          SBNN_ST8(yr + ow, m);
        }
      } else if (sw == 2) {
        for (int j = 0; j < ne8; j += 8) {  // deinterleave 16 cells into 8 even, 8 odd
          F8 a, b;
          SBNN_LD8(a, tp + 2 * j);
          SBNN_LD8(b, tp + 2 * j + 8);
#if defined(__clang__)
          const F8 e = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
          const F8 o = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
#else
          const F8 e = __builtin_shuffle(a, b, I8{0, 2, 4, 6, 8, 10, 12, 14});
          const F8 o = __builtin_shuffle(a, b, I8{1, 3, 5, 7, 9, 11, 13, 15});
#endif
          SBNN_ST8(ev + j, e);
          SBNN_ST8(od + j, o);
        }
        SBNN_FOR8(ow, Wo) {
          F8 m, v;
          SBNN_LD8(m, ev + ow);
          for (int kx = 1; kx < kw; ++kx) {
            SBNN_LD8(v, ((kx & 1) ? od : ev) + ow + kx / 2);
            SBNN_MAX8(m, v);
          }
          SBNN_ST8(yr + ow, m);
        }
      } else {
        for (int ow = 0; ow < Wo; ++ow) {
          const float* s = tp + ow * sw;
          float m = s[0];
          for (int kx = 1; kx < kw; ++kx) m = s[kx] > m ? s[kx] : m;
          yr[ow] = m;
        }
      }
    }
    bool nan = false;
    for (int i = 0; i < 8; ++i) nan |= sum[i] != sum[i];
    if (nan) maxpool_ref(xp, 1, g, yp);
  }
}

template <int KH, int KW, int SW>
void maxpool_vec(const float* x, int n, const MaxPoolGeom& g, float* y, float* buf) {
  maxpool_body<KH, KW, SW>(x, n, g, y, buf);
}

// The windows with copies of their own, then any window (AVX2 or portable).
#define SBNN_MAXPOOL_DISPATCH(fn)                                                       \
  if (g.kh == 3 && g.kw == 3 && g.sw == 2) return fn<3, 3, 2>(x, n, g, y, buf);         \
  if (g.kh == 2 && g.kw == 2 && g.sw == 2) return fn<2, 2, 2>(x, n, g, y, buf);         \
  if (g.kh == 3 && g.kw == 3 && g.sw == 1) return fn<3, 3, 1>(x, n, g, y, buf);         \
  return fn<0, 0, 0>(x, n, g, y, buf);

void maxpool_portable(const float* x, int n, const MaxPoolGeom& g, float* y, float* buf) {
  SBNN_MAXPOOL_DISPATCH(maxpool_vec)
}

#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
template <int KH, int KW, int SW>
__attribute__((target("avx2"))) void maxpool_vec_avx2(const float* x, int n,
                                                      const MaxPoolGeom& g, float* y,
                                                      float* buf) {
  maxpool_body<KH, KW, SW>(x, n, g, y, buf);
}

__attribute__((target("avx2"))) void maxpool_avx2(const float* x, int n, const MaxPoolGeom& g,
                                                  float* y, float* buf) {
  SBNN_MAXPOOL_DISPATCH(maxpool_vec_avx2)
}
#endif
#undef SBNN_MAXPOOL_DISPATCH
#undef SBNN_FOR8
#undef SBNN_LD8
#undef SBNN_ST8
#undef SBNN_MAX8

// scratch floats of maxpool_body
size_t maxpool_buf(const MaxPoolGeom& g) {
  const int Lp = std::max(g.pl + g.W, (g.Wo - 1) * g.sw + g.kw);
  const int ne8 = ((Lp + 1) / 2 + 7) / 8 * 8;
  return static_cast<size_t>(std::max(Lp, 2 * ne8) + 8) + 2 * static_cast<size_t>(ne8);
}

// The reference twin (Isa::Ref, planes with a NaN, maps narrower than a vector): the window's
// valid cells in row-major order.
void maxpool_ref(const float* x, int nplanes, const MaxPoolGeom& g, float* y) {
  for (int p = 0; p < nplanes; ++p) {
    const float* xp = x + static_cast<size_t>(p) * g.H * g.W;
    float* yp = y + static_cast<size_t>(p) * g.Ho * g.Wo;
    for (int oh = 0; oh < g.Ho; ++oh)
      for (int ow = 0; ow < g.Wo; ++ow) {
        float m = -std::numeric_limits<float>::infinity();
        for (int ky = 0; ky < g.kh; ++ky) {
          const int h = oh * g.sh + ky - g.pt;
          if (h < 0 || h >= g.H) continue;
          for (int kx = 0; kx < g.kw; ++kx) {
            const int w = ow * g.sw + kx - g.pl;
            if (w < 0 || w >= g.W) continue;
            const float v = xp[static_cast<size_t>(h) * g.W + w];
            if (v > m || v != v) m = v;
          }
        }
        yp[static_cast<size_t>(oh) * g.Wo + ow] = m;
      }
  }
}

}  // namespace

void maxpool_planes(const float* x, int nplanes, const MaxPoolGeom& g, float* y, Isa isa) {
  if (nplanes <= 0) return;
  // the reference loop for Ref, and for maps narrower than one vector (few outputs)
  if (isa == Isa::Ref || g.W < 8 || g.Wo < 8) {
    maxpool_ref(x, nplanes, g, y);
    return;
  }
  std::vector<float> buf(maxpool_buf(g));
#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) {
    maxpool_avx2(x, nplanes, g, y, buf.data());
    return;
  }
#endif
  maxpool_portable(x, nplanes, g, y, buf.data());
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

FloatLinear::FloatLinear(const float* w, int O, int I, const float* bias, Isa isa)
    : O_(O), I_(I), isa_(isa) {
  if (O < 1 || I < 1) throw std::invalid_argument("linear: weight dimensions must be >= 1");
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("linear: impl '") + isa_name(isa) +
                                "' is not supported by this CPU");
  w_.assign(w, w + static_cast<size_t>(O) * I);
  if (bias) bias_.assign(bias, bias + O);
  if (isa_ == Isa::Ref) return;
  kt_ = &kernel_table(isa_);
  if (!kt_->sgemm) kt_ = &kernels_scalar();
  const int vl = kt_->sgemm_vl;
  nr_ = O <= vl ? vl : 2 * vl;
  const int njb = (O + nr_ - 1) / nr_;
  bpack_.assign(static_cast<size_t>(njb) * I * nr_, 0.0f);
  for (int o = 0; o < O; ++o)
    for (int i = 0; i < I; ++i)
      bpack_[(static_cast<size_t>(o / nr_) * I + i) * nr_ + o % nr_] =
          w_[static_cast<size_t>(o) * I + i];
}

void FloatLinear::forward(const float* x, int N, float* y, ThreadPool* pool) const {
  const float* bias = bias_.empty() ? nullptr : bias_.data();
  if (isa_ == Isa::Ref) {
    linear_f32(x, N, w_.data(), O_, I_, bias, y, pool);
    return;
  }
  const int mr = kt_->sgemm_mr, nr = nr_, I = I_, O = O_;
  const int nib = (N + mr - 1) / mr, njb = (O + nr - 1) / nr;
  // x (N, I) -> row panels Ap[ib][i][r] = x[ib*mr + r][i], zero rows past N
  std::unique_ptr<float[]> ap(new float[static_cast<size_t>(nib) * I * mr]);
  float* A = ap.get();
  for (int ib = 0; ib < nib; ++ib) {
    float* a = A + static_cast<size_t>(ib) * I * mr;
    for (int r = 0; r < mr; ++r) {
      const int n = ib * mr + r;
      if (n < N) {
        const float* xn = x + static_cast<size_t>(n) * I;
        for (int i = 0; i < I; ++i) a[static_cast<size_t>(i) * mr + r] = xn[i];
      } else {
        for (int i = 0; i < I; ++i) a[static_cast<size_t>(i) * mr + r] = 0.0f;
      }
    }
  }
  // Tasks: blocks of row panels (images) or of column panels (outputs), whichever has more;
  // one task when single-threaded.
  const int T = pool ? pool->size() : 1;
  const bool by_rows = nib >= njb;
  const int nblk = by_rows ? nib : njb;
  const int ntask = T > 1 ? std::min(nblk, 2 * T) : 1;
  auto task = [&](int t) {
    const int b0 = static_cast<int>(static_cast<int64_t>(nblk) * t / ntask);
    const int b1 = static_cast<int>(static_cast<int64_t>(nblk) * (t + 1) / ntask);
    if (b0 >= b1) return;
    int r0 = 0, r1 = N, c0 = 0, c1 = O;
    if (by_rows) {
      r0 = b0 * mr;
      r1 = std::min(N, b1 * mr);
    } else {
      c0 = b0 * nr;
      c1 = std::min(O, b1 * nr);
    }
    kt_->sgemm(A + static_cast<size_t>(r0 / mr) * I * mr,
               bpack_.data() + static_cast<size_t>(c0 / nr) * I * nr, r1 - r0, c1 - c0, I, nr,
               nullptr, y + static_cast<size_t>(r0) * O + c0, O);
    if (bias)
      for (int n = r0; n < r1; ++n) {
        float* yn = y + static_cast<size_t>(n) * O;
        for (int o = c0; o < c1; ++o) yn[o] += bias[o];
      }
  };
  if (ntask > 1)
    pool->parallel_for(ntask, task);
  else
    task(0);
}

}  // namespace sbnn
