#include "core/bconv_small.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "core/floatops.h"

namespace sbnn {

namespace {

// L int16 lanes as one GCC vector: 4 (8 bytes), 8 (one SSE/NEON register) or 16 (one AVX2
// register, two SSE ones). Loads and stores through memcpy; no function takes or returns one
// (GCC's -Wpsabi note on 32-byte vector arguments in the portable compile).
template <int L>
struct Lanes;
template <>
struct Lanes<4> {
  typedef int16_t T __attribute__((vector_size(8)));
};
template <>
struct Lanes<8> {
  typedef int16_t T __attribute__((vector_size(16)));
};
template <>
struct Lanes<16> {
  typedef int16_t T __attribute__((vector_size(32)));
};

// out[(c - c0) * L + l] = sum over the 1-bits k of filter c of V[k * L + l], c in [c0, c1):
// four independent sums over alternate 1-bits (one chain would run at the adder's latency).
template <int L>
inline __attribute__((always_inline)) void accum_body(const int16_t* V, const int32_t* taps,
                                                       const int64_t* start, int c0, int c1,
                                                       int16_t* out) {
  typedef typename Lanes<L>::T T;
  for (int c = c0; c < c1; ++c) {
    const int32_t* k = taps + start[c];
    const int n = static_cast<int>(start[c + 1] - start[c]);
    T a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int e = 0;
    for (; e + 4 <= n; e += 4) {
      T v0, v1, v2, v3;
      std::memcpy(&v0, V + static_cast<size_t>(k[e]) * L, sizeof(T));
      std::memcpy(&v1, V + static_cast<size_t>(k[e + 1]) * L, sizeof(T));
      std::memcpy(&v2, V + static_cast<size_t>(k[e + 2]) * L, sizeof(T));
      std::memcpy(&v3, V + static_cast<size_t>(k[e + 3]) * L, sizeof(T));
      a0 += v0;
      a1 += v1;
      a2 += v2;
      a3 += v3;
    }
    for (; e < n; ++e) {
      T v;
      std::memcpy(&v, V + static_cast<size_t>(k[e]) * L, sizeof(T));
      a0 += v;
    }
    a0 = (a0 + a1) + (a2 + a3);
    std::memcpy(out + static_cast<size_t>(c - c0) * L, &a0, sizeof(T));
  }
}

using AccumFn = void (*)(const int16_t*, const int32_t*, const int64_t*, int, int, int16_t*);

template <int L>
void accum_portable(const int16_t* V, const int32_t* taps, const int64_t* start, int c0, int c1,
                    int16_t* out) {
  accum_body<L>(V, taps, start, c0, c1, out);
}

#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
template <int L>
__attribute__((target("avx2"))) void accum_avx2(const int16_t* V, const int32_t* taps,
                                                const int64_t* start, int c0, int c1,
                                                int16_t* out) {
  accum_body<L>(V, taps, start, c0, c1, out);
}
#endif

AccumFn accum_fn(Isa isa, int L) {
#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
  if (isa == Isa::Avx2 || isa == Isa::Avx512)
    return L == 4 ? accum_avx2<4> : L == 8 ? accum_avx2<8> : accum_avx2<16>;
#endif
  (void)isa;
  return L == 4 ? accum_portable<4> : L == 8 ? accum_portable<8> : accum_portable<16>;
}

constexpr int kCoBlock = 64;  // output channels per task (the counts of a block stay in L1)

}  // namespace

bool BConvSmall::fits(int Ci, int kh, int kw, int Ho, int Wo) {
  return Ho >= 1 && Wo >= 1 && Ho * Wo <= kLanes &&
         static_cast<int64_t>(Ci) * kh * kw <= 32767;
}

BConvSmall::BConvSmall(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
                       const float* xi, const float* bias, const float* thr, int stride, int pad,
                       int H, int W, Isa isa)
    : Co_(Co), Ci_(Ci), kh_(kh), kw_(kw), s_(stride), pad_(pad), H_(H), W_(W), isa_(isa) {
  if (Co < 1 || Ci < 1 || kh < 1 || kw < 1 || stride < 1 || pad < 0 || H < 1 || W < 1)
    throw std::invalid_argument("bconv_small: bad geometry");
  Hp_ = H + 2 * pad;
  Wp_ = W + 2 * pad;
  if (Hp_ < kh || Wp_ < kw) throw std::invalid_argument("bconv_small: kernel larger than input");
  Ho_ = (Hp_ - kh) / stride + 1;
  Wo_ = (Wp_ - kw) / stride + 1;
  if (!fits(Ci, kh, kw, Ho_, Wo_))
    throw std::invalid_argument("bconv_small: output map of " + std::to_string(Ho_ * Wo_) +
                                " pixels or fan-in " + std::to_string(Ci * kh * kw) +
                                " too large");
  if (isa == Isa::Ref || !isa_supported(isa))
    throw std::invalid_argument(std::string("bconv_small: no kernel for impl '") +
                                isa_name(isa) + "'");
  kt_ = &kernel_table(isa);
  P_ = Ho_ * Wo_;
  G_ = std::max(1, kLanes / P_);
  eta_.assign(eta, eta + Co);
  xi_.assign(xi, xi + Co);
  bias_.assign(bias, bias + Co);
  thr_.assign(Ci, 0.0f);
  if (thr) std::copy(thr, thr + Ci, thr_.begin());
  const int K = Ci * kh * kw;
  start_.assign(static_cast<size_t>(Co) + 1, 0);
  for (int c = 0; c < Co; ++c) {
    const uint8_t* b = bits + static_cast<size_t>(c) * K;
    for (int k = 0; k < K; ++k)
      if (b[k]) taps_.push_back(k);
    start_[c + 1] = static_cast<int64_t>(taps_.size());
  }
}

void BConvSmall::forward(const float* x, int N, float* y, ThreadPool* pool,
                         const BConvPost& post) const {
  run(x, N, y, nullptr, nullptr, pool, post);
}

void BConvSmall::counts(const float* x, int N, int32_t* cnt, int32_t* ws,
                        ThreadPool* pool) const {
  run(x, N, nullptr, cnt, ws, pool, BConvPost());
}

void BConvSmall::run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws,
                     ThreadPool* pool, const BConvPost& post) const {
  if (N < 0) throw std::invalid_argument("bconv_small: negative batch");
  const size_t in_sz = static_cast<size_t>(Ci_) * H_ * W_;
  const size_t out_sz = static_cast<size_t>(Co_) * P_;
  const int ngroups = (N + G_ - 1) / G_;
  const int T = pool ? pool->size() : 1;
  auto grp = [&](int k, ThreadPool* inner) {
    const size_t n0 = static_cast<size_t>(k) * G_;
    BConvPost q = post;
    if (q.res) q.res += n0 * out_sz;
    group(x + n0 * in_sz, std::min(G_, N - static_cast<int>(n0)), y ? y + n0 * out_sz : nullptr,
          cnt ? cnt + n0 * out_sz : nullptr, ws ? ws + n0 * P_ : nullptr, inner, q);
  };
  // Whole groups per thread when there are enough of them, else blocks of output channels.
  if (T > 1 && ngroups >= T)
    pool->parallel_for(ngroups, [&](int k) { grp(k, nullptr); });
  else
    for (int k = 0; k < ngroups; ++k) grp(k, pool);
}

void BConvSmall::group(const float* x, int nimg, float* y, int32_t* cnt, int32_t* ws,
                       ThreadPool* pool, const BConvPost& post) const {
  const int P = P_, lanes = nimg * P;
  const int L = lanes <= 4 ? 4 : lanes <= 8 ? 8 : 16;
  const int K = Ci_ * kh_ * kw_;
  // V[k][n*P + p]: image n's binarised input under tap k at output pixel p (0 in the padding
  // and in the lanes past the group's images)
  std::unique_ptr<int16_t[]> V(new int16_t[static_cast<size_t>(K) * L]);
  if (lanes < L) std::memset(V.get(), 0, sizeof(int16_t) * static_cast<size_t>(K) * L);
  const int HW = Hp_ * Wp_;
  std::vector<int16_t> pp(static_cast<size_t>(HW), 0);  // one padded binarised plane
  std::vector<int32_t> S(static_cast<size_t>(HW));      // its channel sums, per image
  std::vector<int32_t> wsum(static_cast<size_t>(lanes), 0);
  for (int n = 0; n < nimg; ++n) {
    std::fill(S.begin(), S.end(), 0);
    for (int ci = 0; ci < Ci_; ++ci) {
      const float* xc = x + (static_cast<size_t>(n) * Ci_ + ci) * H_ * W_;
      const float t = thr_[ci];
      for (int h = 0; h < H_; ++h) {
        int16_t* r = pp.data() + static_cast<size_t>(h + pad_) * Wp_ + pad_;
        const float* xr = xc + static_cast<size_t>(h) * W_;
        for (int w = 0; w < W_; ++w) r[w] = xr[w] >= t ? 1 : -1;
      }
      for (int i = 0; i < HW; ++i) S[i] += pp[i];
      int16_t* d = V.get() + static_cast<size_t>(ci) * kh_ * kw_ * L + n * P;
      for (int ky = 0; ky < kh_; ++ky)
        for (int kx = 0; kx < kw_; ++kx, d += L) {
          const int16_t* r = pp.data() + static_cast<size_t>(ky) * Wp_ + kx;
          if (s_ == 1 && Wo_ == 2) {  // ReActNet-18's 2x2 maps: one 4-byte copy per row
            for (int oh = 0; oh < Ho_; ++oh) std::memcpy(d + 2 * oh, r + oh * Wp_, 4);
          } else if (s_ == 1 && Wo_ == 4) {
            for (int oh = 0; oh < Ho_; ++oh) std::memcpy(d + 4 * oh, r + oh * Wp_, 8);
          } else {
            for (int oh = 0; oh < Ho_; ++oh)
              for (int ow = 0; ow < Wo_; ++ow) d[oh * Wo_ + ow] = r[oh * s_ * Wp_ + ow * s_];
          }
        }
    }
    // the window sums from the channel sums: conv(x, 1) = sum over the taps of S
    for (int oh = 0; oh < Ho_; ++oh)
      for (int ow = 0; ow < Wo_; ++ow) {
        int32_t v = 0;
        for (int ky = 0; ky < kh_; ++ky)
          for (int kx = 0; kx < kw_; ++kx) v += S[static_cast<size_t>(oh * s_ + ky) * Wp_ + ow * s_ + kx];
        wsum[n * P + oh * Wo_ + ow] = v;
      }
  }
  std::vector<float> wsf(static_cast<size_t>(lanes));
  for (int l = 0; l < lanes; ++l) wsf[l] = static_cast<float>(wsum[l]);
  if (ws) std::copy(wsum.begin(), wsum.end(), ws);
  const AccumFn accum = accum_fn(isa_, L);
  const size_t out_img = static_cast<size_t>(Co_) * P;
  const bool fuse_post = post.active() && kt_->affine_epilogue_post;
  auto post_fn = kt_->post_plane ? kt_->post_plane : kernels_scalar().post_plane;
  const int nblk = (Co_ + kCoBlock - 1) / kCoBlock;
  auto block = [&](int b) {
    const int c0 = b * kCoBlock, c1 = std::min(Co_, c0 + kCoBlock);
    std::unique_ptr<int16_t[]> acc(new int16_t[static_cast<size_t>(c1 - c0) * L]);
    accum(V.get(), taps_.data(), start_.data(), c0, c1, acc.get());
    int32_t a32[kLanes];
    for (int c = c0; c < c1; ++c) {
      const int16_t* a = acc.get() + static_cast<size_t>(c - c0) * L;
      for (int l = 0; l < lanes; ++l) a32[l] = a[l];
      float rp[3];
      if (post.rp_in) {
        rp[0] = post.rp_in[c];
        rp[1] = post.rp_slope[c];
        rp[2] = post.rp_out[c];
      }
      const float* rpc = post.rp_in ? rp : nullptr;
      for (int n = 0; n < nimg; ++n) {
        const size_t o = n * out_img + static_cast<size_t>(c) * P;
        if (cnt) std::copy(a32 + n * P, a32 + (n + 1) * P, cnt + o);
        if (!y) continue;
        // the plane as one row of P outputs (contiguous in acc, wsf and y)
        const float* r = post.res ? post.res + o : nullptr;
        if (fuse_post) {
          kt_->affine_epilogue_post(a32 + n * P, 1, P, P, wsf.data() + n * P, eta_[c], xi_[c],
                                    bias_[c], y + o, r, post.clamp, post.lo, post.hi, rpc);
        } else {
          kt_->affine_epilogue(a32 + n * P, 1, P, P, wsf.data() + n * P, eta_[c], xi_[c],
                               bias_[c], y + o);
          if (post.active()) post_fn(y + o, r, P, post.clamp, post.lo, post.hi, rpc);
        }
      }
    }
  };
  if (pool && pool->size() > 1 && nblk > 1)
    pool->parallel_for(nblk, block);
  else
    for (int b = 0; b < nblk; ++b) block(b);
}

}  // namespace sbnn
