#include "core/bconv_tiny.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace sbnn {

namespace {

// Counter planes for the thirty-twos of the Harley-Seal tree: a pixel has at most 32767 rows
// (fits()), so at most 1024 thirty-twos, 11 bits.
constexpr int kMaxH = 11;

// VB bytes of filter bits as one GCC vector (32: one AVX2 register, two SSE / NEON ones; 64:
// one AVX-512 register). Loads through memcpy; no function takes or returns one (GCC's -Wpsabi
// note on wide vector arguments in the portable compile), hence the macro below.
template <int VB>
struct Bits {
  typedef uint64_t T __attribute__((vector_size(VB)));
  // the same, for loads from any address (rows need not be aligned to VB)
  typedef uint64_t U __attribute__((vector_size(VB), aligned(1), may_alias));
};
typedef int16_t I16x16 __attribute__((vector_size(32)));

// A carry-save adder over bit vectors: (h, l) = the two bits of a + b + c, lane by lane.
#define SBNN_TINY_CSA(h, l, a, b, c) \
  do {                               \
    const T u_ = (a) ^ (b);          \
    const T c_ = (c);                \
    h = ((a) & (b)) | (u_ & c_);     \
    l = u_ ^ c_;                     \
  } while (0)

// out[j] = the number of rows i < n whose bit j is set, row i being the VB bytes at
// tb + off[i]; n is a multiple of 16 (the callers pad a list with a zero row), at most 32783.
// Harley-Seal: ones, twos, fours, eights, sixteens carried across blocks of 16 rows; every
// second block's thirty-twos rippled into the counter planes H. Then every plane's bits
// become int16 lanes (16 filters at a time: a broadcast 16-bit word against the lanes' bit
// masks).
template <int VB>
inline __attribute__((always_inline)) void count_body(const uint8_t* tb, const int32_t* off,
                                                      int n, int16_t* out) {
  typedef typename Bits<VB>::T T;
  T ones = {}, twos = {}, fours = {}, eights = {}, sixteens = {}, s16 = {};
  T H[kMaxH];
  int nh = 0;  // planes of H (the thirty-twos) in use: enough bits for n / 32
  while ((n >> 5) >> nh) ++nh;
  for (int k = 0; k < nh; ++k) H[k] = T{};
  typedef typename Bits<VB>::U U;
  for (int i = 0; i < n; i += 16) {
    const int32_t* o = off + i;
    // the 16 rows straight into registers (a loop into an array went through the stack)
#define SBNN_TINY_LD(j) const T v##j = *reinterpret_cast<const U*>(tb + o[j])
    SBNN_TINY_LD(0); SBNN_TINY_LD(1); SBNN_TINY_LD(2); SBNN_TINY_LD(3);
    SBNN_TINY_LD(4); SBNN_TINY_LD(5); SBNN_TINY_LD(6); SBNN_TINY_LD(7);
    SBNN_TINY_LD(8); SBNN_TINY_LD(9); SBNN_TINY_LD(10); SBNN_TINY_LD(11);
    SBNN_TINY_LD(12); SBNN_TINY_LD(13); SBNN_TINY_LD(14); SBNN_TINY_LD(15);
#undef SBNN_TINY_LD
    T tA, tB, fA, fB, eA, eB, s;
    SBNN_TINY_CSA(tA, ones, ones, v0, v1);
    SBNN_TINY_CSA(tB, ones, ones, v2, v3);
    SBNN_TINY_CSA(fA, twos, twos, tA, tB);
    SBNN_TINY_CSA(tA, ones, ones, v4, v5);
    SBNN_TINY_CSA(tB, ones, ones, v6, v7);
    SBNN_TINY_CSA(fB, twos, twos, tA, tB);
    SBNN_TINY_CSA(eA, fours, fours, fA, fB);
    SBNN_TINY_CSA(tA, ones, ones, v8, v9);
    SBNN_TINY_CSA(tB, ones, ones, v10, v11);
    SBNN_TINY_CSA(fA, twos, twos, tA, tB);
    SBNN_TINY_CSA(tA, ones, ones, v12, v13);
    SBNN_TINY_CSA(tB, ones, ones, v14, v15);
    SBNN_TINY_CSA(fB, twos, twos, tA, tB);
    SBNN_TINY_CSA(eB, fours, fours, fA, fB);
    SBNN_TINY_CSA(s, eights, eights, eA, eB);
    if ((i & 16) == 0) {  // the first sixteens of a pair wait for the second
      s16 = s;
      continue;
    }
    T c;
    SBNN_TINY_CSA(c, sixteens, sixteens, s16, s);
    s16 = T{};
    for (int k = 0; k < nh; ++k) {  // H += c, bit-sliced
      const T d = H[k] & c;
      H[k] ^= c;
      c = d;
    }
  }
  // a last unpaired sixteens: add it to the sixteens plane, its carry into H
  {
    T c = sixteens & s16;
    sixteens ^= s16;
    for (int k = 0; k < nh; ++k) {
      const T d = H[k] & c;
      H[k] ^= c;
      c = d;
    }
  }
  // planes and their weights: ones 1, twos 2, ..., sixteens 16, H[k] 32 << k (a count is at
  // most 32767, so a weight that wraps in int16 multiplies a plane that is all zero)
  uint8_t pl[5 + kMaxH][VB];
  int16_t w[5 + kMaxH];
  std::memcpy(pl[0], &ones, VB);
  std::memcpy(pl[1], &twos, VB);
  std::memcpy(pl[2], &fours, VB);
  std::memcpy(pl[3], &eights, VB);
  std::memcpy(pl[4], &sixteens, VB);
  for (int k = 0; k < 5; ++k) w[k] = static_cast<int16_t>(1 << k);
  for (int k = 0; k < nh; ++k) {
    std::memcpy(pl[5 + k], &H[k], VB);
    w[5 + k] = static_cast<int16_t>(static_cast<uint16_t>(32u << k));
  }
  const int np = 5 + nh;
  const I16x16 sel = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                      static_cast<int16_t>(-32768)};
  for (int g = 0; g < VB / 2; ++g) {
    I16x16 acc = {};
    for (int k = 0; k < np; ++k) {
      const int16_t word = static_cast<int16_t>(pl[k][2 * g] | (pl[k][2 * g + 1] << 8));
      const I16x16 b = (I16x16{} + word) & sel;
      acc += (b != 0) & w[k];
    }
    std::memcpy(out + 16 * g, &acc, sizeof(acc));
  }
}

using CountFn = void (*)(const uint8_t*, const int32_t*, int, int16_t*);

template <int VB>
void count_portable(const uint8_t* tb, const int32_t* off, int n, int16_t* out) {
  count_body<VB>(tb, off, n, out);
}

#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
__attribute__((target("avx2"))) void count_avx2(const uint8_t* tb, const int32_t* off, int n,
                                                int16_t* out) {
  count_body<32>(tb, off, n, out);
}
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) void count_avx512(
    const uint8_t* tb, const int32_t* off, int n, int16_t* out) {
  count_body<64>(tb, off, n, out);
}
#endif

#undef SBNN_TINY_CSA

int row_bytes(Isa isa) { return isa == Isa::Avx512 ? 64 : 32; }

CountFn count_fn(Isa isa) {
#if defined(SBNN_HAVE_X86_KERNELS) && defined(__GNUC__)
  if (isa == Isa::Avx2) return count_avx2;
  if (isa == Isa::Avx512) return count_avx512;
#endif
  return row_bytes(isa) == 64 ? count_portable<64> : count_portable<32>;
}

}  // namespace

bool BConvTiny::fits(int Ci, int kh, int kw, int Ho, int Wo) {
  return Ho >= 1 && Wo >= 1 && Ho * Wo <= kMaxPixels &&
         static_cast<int64_t>(Ci) * kh * kw <= 32767;
}

int64_t BConvTiny::row_vectors(int Co, int Ci, int kh, int kw, int stride, int pad, int H,
                               int W, Isa isa) {
  // valid taps along one axis, summed over that axis' outputs; the 2D count is the product
  auto axis = [&](int n, int k) {
    int64_t v = 0;
    for (int o = 0; o <= (n + 2 * pad - k) / stride; ++o)
      for (int t = 0; t < k; ++t) {
        const int i = o * stride + t - pad;
        v += i >= 0 && i < n ? 1 : 0;
      }
    return v;
  };
  const int fb = 8 * row_bytes(isa);
  return axis(H, kh) * axis(W, kw) * (Ci / 2) * ((Co + fb - 1) / fb);
}

BConvTiny::BConvTiny(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
                     const float* xi, const float* bias, const float* thr, int stride, int pad,
                     int H, int W, Isa isa)
    : Co_(Co), Ci_(Ci), kh_(kh), kw_(kw), s_(stride), pad_(pad), H_(H), W_(W), isa_(isa) {
  if (Co < 1 || Ci < 1 || kh < 1 || kw < 1 || stride < 1 || pad < 0 || H < 1 || W < 1)
    throw std::invalid_argument("bconv_tiny: bad geometry");
  if (H + 2 * pad < kh || W + 2 * pad < kw)
    throw std::invalid_argument("bconv_tiny: kernel larger than input");
  Ho_ = (H + 2 * pad - kh) / stride + 1;
  Wo_ = (W + 2 * pad - kw) / stride + 1;
  if (!fits(Ci, kh, kw, Ho_, Wo_))
    throw std::invalid_argument("bconv_tiny: output map of " + std::to_string(Ho_ * Wo_) +
                                " pixels or fan-in " + std::to_string(Ci * kh * kw) +
                                " too large");
  if (isa == Isa::Ref || !isa_supported(isa))
    throw std::invalid_argument(std::string("bconv_tiny: no kernel for impl '") +
                                isa_name(isa) + "'");
  kt_ = &kernel_table(isa);
  P_ = Ho_ * Wo_;
  VB_ = row_bytes(isa);
  const int fb = 8 * VB_;  // filters per block
  nblk_ = (Co + fb - 1) / fb;
  R_ = kh * kw * Ci;
  eta_.assign(eta, eta + Co);
  xi_.assign(xi, xi + Co);
  bias_.assign(bias, bias + Co);
  thr_.assign(Ci, 0.0f);
  if (thr) std::copy(thr, thr + Ci, thr_.begin());
  // the bit-transposed table, and per filter and tap its 1-bits over the input channels
  const int T = kh * kw;
  tab_.assign(static_cast<size_t>(nblk_) * (R_ + 1) * VB_, 0);
  std::vector<int32_t> tapsum(static_cast<size_t>(Co) * T, 0);
  for (int co = 0; co < Co; ++co) {
    uint8_t* tb = tab_.data() + static_cast<size_t>(co / fb) * (R_ + 1) * VB_ + (co % fb) / 8;
    const uint8_t m = static_cast<uint8_t>(1u << (co % 8));
    const uint8_t* b = bits + static_cast<size_t>(co) * Ci * T;
    for (int ci = 0; ci < Ci; ++ci)
      for (int t = 0; t < T; ++t)
        if (b[static_cast<size_t>(ci) * T + t]) {
          tb[(static_cast<size_t>(t) * Ci + ci) * VB_] |= m;
          ++tapsum[static_cast<size_t>(co) * T + t];
        }
  }
  // per output pixel: its valid taps (tap, input position) and n[co, p]
  const int CoP = nblk_ * fb;
  nvalid_.assign(static_cast<size_t>(P_) * CoP, 0);
  tstart_.assign(static_cast<size_t>(P_) + 1, 0);
  for (int oh = 0; oh < Ho_; ++oh)
    for (int ow = 0; ow < Wo_; ++ow) {
      const int p = oh * Wo_ + ow;
      for (int ky = 0; ky < kh; ++ky)
        for (int kx = 0; kx < kw; ++kx) {
          const int iy = oh * stride + ky - pad, ix = ow * stride + kx - pad;
          if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
          const int t = ky * kw + kx;
          taps_.push_back(t);
          taps_.push_back(iy * W + ix);
          for (int co = 0; co < Co; ++co)
            nvalid_[static_cast<size_t>(p) * CoP + co] += tapsum[static_cast<size_t>(co) * T + t];
        }
      tstart_[p + 1] = static_cast<int32_t>(taps_.size() / 2);
    }
}

void BConvTiny::forward(const float* x, int N, float* y, ThreadPool* pool,
                        const BConvPost& post) const {
  run(x, N, y, nullptr, nullptr, pool, post);
}

void BConvTiny::counts(const float* x, int N, int32_t* cnt, int32_t* ws, ThreadPool* pool) const {
  run(x, N, nullptr, cnt, ws, pool, BConvPost());
}

void BConvTiny::run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
                    const BConvPost& post) const {
  if (N < 0) throw std::invalid_argument("bconv_tiny: negative batch");
  const size_t in_sz = static_cast<size_t>(Ci_) * H_ * W_;
  const size_t out_sz = static_cast<size_t>(Co_) * P_;
  const int T = pool ? pool->size() : 1;
  auto img = [&](int n, int b0, int b1) {
    BConvPost q = post;
    if (q.res) q.res += n * out_sz;
    image(x + n * in_sz, b0, b1, y ? y + n * out_sz : nullptr, cnt ? cnt + n * out_sz : nullptr,
          ws ? ws + static_cast<size_t>(n) * P_ : nullptr, q);
  };
  // Whole images per thread when there are enough of them, else blocks of filters.
  if (T > 1 && N >= T)
    pool->parallel_for(N, [&](int n) { img(n, 0, nblk_); });
  else if (T > 1 && nblk_ > 1)
    for (int n = 0; n < N; ++n) pool->parallel_for(nblk_, [&](int b) { img(n, b, b + 1); });
  else
    for (int n = 0; n < N; ++n) img(n, 0, nblk_);
}

void BConvTiny::image(const float* x, int b0, int b1, float* y, int32_t* cnt, int32_t* ws,
                      const BConvPost& post) const {
  const int HW = H_ * W_, Ci = Ci_, P = P_, VB = VB_, fb = 8 * VB_;
  // One scratch allocation, not value-initialised (clearing it cost more than filling it):
  // plus[q * Ci ..]: the byte offsets ci * VB of the channels where input position q is +1;
  // list: one pixel's rows; c32: the counts (Co, P) when the caller wants none.
  const size_t n_plus = static_cast<size_t>(HW) * Ci, n_list = static_cast<size_t>(R_) + 16;
  const size_t n_c32 = cnt ? 0 : static_cast<size_t>(Co_) * P;
  std::unique_ptr<int32_t[]> scratch(new int32_t[n_plus + HW + n_list + n_c32]);
  int32_t* plus = scratch.get();
  int32_t* nplus = plus + n_plus;
  int32_t* list = nplus + HW;
  int32_t* acc = cnt ? cnt : list + n_list;
  const float* thr = thr_.data();
  for (int q = 0; q < HW; ++q) {
    int32_t* __restrict dst = plus + static_cast<size_t>(q) * Ci;
    const float* xq = x + q;
    int m = 0;
    for (int ci = 0; ci < Ci; ++ci) {  // branch-free: the input's signs are random
      dst[m] = ci * VB;
      m += xq[static_cast<size_t>(ci) * HW] >= thr[ci] ? 1 : 0;
    }
    nplus[q] = m;
  }
  float wsf[kMaxPixels];
  alignas(64) int16_t c16[512];
  const CountFn count = count_fn(isa_);
  const size_t CoP = static_cast<size_t>(nblk_) * fb;
  for (int p = 0; p < P; ++p) {
    // the rows of p's valid taps whose input is +1, padded to 16 with the zero row
    int n = 0;
    for (int k = tstart_[p]; k < tstart_[p + 1]; ++k) {
      const int32_t base = taps_[2 * k] * Ci * VB, q = taps_[2 * k + 1];
      const int32_t* __restrict src = plus + static_cast<size_t>(q) * Ci;
      int32_t* __restrict dst = list + n;
      const int m = nplus[q];
      for (int j = 0; j < m; ++j) dst[j] = src[j] + base;
      n += m;
    }
    const int wsum = 2 * n - (tstart_[p + 1] - tstart_[p]) * Ci;
    wsf[p] = static_cast<float>(wsum);
    if (ws && b0 == 0) ws[p] = wsum;  // one writer when blocks of filters run in parallel
    const int n16 = (n + 15) & ~15;
    for (int j = n; j < n16; ++j) list[j] = R_ * VB;
    for (int b = b0; b < b1; ++b) {
      count(tab_.data() + static_cast<size_t>(b) * (R_ + 1) * VB, list, n16, c16);
      const int c0 = b * fb, c1 = std::min(Co_, c0 + fb);
      const int32_t* nv = nvalid_.data() + p * CoP;
      for (int c = c0; c < c1; ++c)
        acc[static_cast<size_t>(c) * P + p] = 2 * c16[c - c0] - nv[c];
    }
  }
  if (!y) return;
  const bool fuse_post = post.active() && kt_->affine_epilogue_post;
  auto post_fn = kt_->post_plane ? kt_->post_plane : kernels_scalar().post_plane;
  const int c0 = b0 * fb, c1 = std::min(Co_, b1 * fb);
  for (int c = c0; c < c1; ++c) {
    const size_t o = static_cast<size_t>(c) * P;
    float rp[3];
    const float* rpc = post.rprelu(c, rp);
    const float* r = post.res ? post.res + o : nullptr;
    // the plane in the sparse kernel's shape (Ho rows of Wo), so the epilogue takes the same
    // path and rounds the same way whatever the compiler contracts (a 1 x P row took the
    // 4-wide FMA path where 2x2 takes the scalar loop)
    if (fuse_post) {
      kt_->affine_epilogue_post(acc + o, Ho_, Wo_, Wo_, wsf, eta_[c], xi_[c], bias_[c], y + o,
                                r, post.clamp, post.lo, post.hi, rpc);
    } else {
      kt_->affine_epilogue(acc + o, Ho_, Wo_, Wo_, wsf, eta_[c], xi_[c], bias_[c], y + o);
      if (post.active()) post_fn(y + o, r, P, post.clamp, post.lo, post.hi, rpc);
    }
  }
}

}  // namespace sbnn
