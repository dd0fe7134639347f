// int8 conv / linear: quantisation, im2col, the scalar GEMM, the float epilogue and the
// per-ISA dispatch (see int8.h). No -m flags and no FMA contraction here (CMakeLists.txt), so
// the epilogue rounds exactly as the numpy reference does.
#include "core/int8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace sbnn {

namespace {

constexpr int kTapAlign = 64;  // taps per GEMM row are padded to this (one VNNI register)
constexpr int kPChunk = 256;   // output positions per task

}  // namespace

bool cpu_has_vnni() {
#if defined(SBNN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool cpu_has_sdot() {
#if defined(__aarch64__) && defined(__linux__)
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
  return false;
#endif
}

void qgemm_scalar(const int8_t* w, const int32_t* /*wsum*/, const uint8_t* col, int Co, int P,
                  int Kp, int32_t* acc, int ldc) {
  for (int c = 0; c < Co; ++c) {
    const int8_t* wr = w + static_cast<size_t>(c) * Kp;
    for (int p = 0; p < P; ++p) {
      const uint8_t* cr = col + static_cast<size_t>(p) * Kp;
      int32_t s = 0;
      for (int k = 0; k < Kp; ++k) s += static_cast<int32_t>(wr[k]) * cr[k];
      acc[static_cast<size_t>(c) * ldc + p] = s;
    }
  }
}

QGemmFn qgemm_for(Isa isa, const char** name) {
  switch (isa) {
#ifdef SBNN_HAVE_X86_KERNELS
    case Isa::Avx512:
      if (cpu_has_vnni()) {
        *name = "vnni";
        return qgemm_vnni;
      }
      *name = "avx2";
      return qgemm_avx2;
    case Isa::Avx2:
      *name = "avx2";
      return qgemm_avx2;
#endif
#if defined(__aarch64__)
    case Isa::Neon:
      if (cpu_has_sdot()) {
        *name = "neon";
        return qgemm_neon;
      }
      break;
#endif
    default:
      break;
  }
  *name = "scalar";
  return qgemm_scalar;
}

void quantize_u8(const float* x, size_t n, float scale, int zero, uint8_t* q) {
  const float z = static_cast<float>(zero);
  for (size_t i = 0; i < n; ++i) {
    const float t = std::nearbyint(x[i] / scale) + z;  // to nearest, ties to even
    q[i] = static_cast<uint8_t>(t > 0.0f ? (t < 255.0f ? t : 255.0f) : 0.0f);  // NaN -> 0
  }
}

QConv::QConv(const int8_t* w, const float* scale, const float* bias, float x_scale, int x_zero,
             QGeom g, Isa isa)
    : g_(g), xs_(x_scale), xz_(x_zero) {
  if (g.groups < 1 || g.Ci % g.groups || g.Co % g.groups)
    throw std::invalid_argument("qconv2d: " + std::to_string(g.groups) +
                                " groups do not divide the channels");
  if (!(x_scale > 0.0f) || x_zero < 0 || x_zero > 255)
    throw std::invalid_argument("qconv2d: bad input scale or zero point");
  Cig_ = g.Ci / g.groups;
  Cog_ = g.Co / g.groups;
  K_ = Cig_ * g.kh * g.kw;
  Kp_ = (K_ + kTapAlign - 1) / kTapAlign * kTapAlign;
  P_ = g.Ho * g.Wo;
  fn_ = qgemm_for(isa, &name_);
  w_.assign(static_cast<size_t>(g.Co) * Kp_, 0);
  wsum_.assign(g.Co, 0);
  for (int c = 0; c < g.Co; ++c) {
    std::memcpy(&w_[static_cast<size_t>(c) * Kp_], w + static_cast<size_t>(c) * K_, K_);
    for (int k = 0; k < K_; ++k) wsum_[c] += w[static_cast<size_t>(c) * K_ + k];
  }
  scale_.assign(scale, scale + g.Co);
  if (bias) bias_.assign(bias, bias + g.Co);
#ifdef SBNN_HAVE_X86_KERNELS
  // the pair layout computes 16 positions at a time: a linear (one position) keeps the
  // per-position dot products of qgemm_avx2
  pairs_ = fn_ == qgemm_avx2 && P_ >= 8;
  if (fn_ == qgemm_avx2 || fn_ == qgemm_vnni) quant_ = quantize_u8_avx2;
#endif
  if (pairs_) {
    K2_ = (K_ + 1) / 2;
    Pp_ = (P_ + 15) / 16 * 16;
    wp_.assign(static_cast<size_t>(g.Co) * K2_, 0);
    for (int c = 0; c < g.Co; ++c)
      for (int j = 0; j < K2_; ++j) {
        const int8_t* wr = w + static_cast<size_t>(c) * K_;
        const uint32_t lo = static_cast<uint16_t>(static_cast<int16_t>(wr[2 * j]));
        const uint32_t hi = 2 * j + 1 < K_ ? static_cast<uint16_t>(static_cast<int16_t>(wr[2 * j + 1])) : 0u;
        wp_[static_cast<size_t>(c) * K2_ + j] = static_cast<int32_t>(lo | (hi << 16));
      }
  }
}

size_t QConv::col_bytes() const {
  return pairs_ ? static_cast<size_t>(K2_) * Pp_ * 2 * sizeof(int16_t)
                : static_cast<size_t>(P_) * Kp_;
}

// col[(j * Pp + p) * 2 + e] = q - z of tap k = 2j + e at position p (0 where padded, past K or
// past P): the sums come out centred, with no correction.
void QConv::im2col_pairs(const uint8_t* q, int grp, int16_t* col) const {
  const QGeom& g = g_;
  std::memset(col, 0, col_bytes());
  int k = 0;
  for (int ci = 0; ci < Cig_; ++ci) {
    const uint8_t* plane = q + static_cast<size_t>(grp * Cig_ + ci) * g.H * g.W;
    for (int ky = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx, ++k) {
        int16_t* cr = col + static_cast<size_t>(k >> 1) * Pp_ * 2 + (k & 1);
        for (int oy = 0; oy < g.Ho; ++oy) {
          const int iy = oy * g.sh - g.pt + ky * g.dh;
          if (iy < 0 || iy >= g.H) continue;
          const uint8_t* row = plane + static_cast<size_t>(iy) * g.W;
          for (int ox = 0; ox < g.Wo; ++ox) {
            const int ix = ox * g.sw - g.pl + kx * g.dw;
            if (ix >= 0 && ix < g.W) cr[2 * (oy * g.Wo + ox)] = static_cast<int16_t>(row[ix] - xz_);
          }
        }
      }
  }
}

void QConv::layout(const uint8_t* q, int grp, uint8_t* col) const {
  if (pairs_)
    im2col_pairs(q, grp, reinterpret_cast<int16_t*>(col));
  else
    im2col(q, grp, col);
}

void QConv::gemm(const uint8_t* col, int grp, int p0, int p1, int32_t* acc) const {
  const int c0 = grp * Cog_;
#ifdef SBNN_HAVE_X86_KERNELS
  if (pairs_) {
    qgemm_avx2_pairs(&wp_[static_cast<size_t>(c0) * K2_], reinterpret_cast<const int16_t*>(col),
                     Cog_, K2_, Pp_, p0, p1, acc, P_);
    return;
  }
#endif
  fn_(&w_[static_cast<size_t>(c0) * Kp_], &wsum_[c0], col + static_cast<size_t>(p0) * Kp_, Cog_,
      p1 - p0, Kp_, acc + p0, P_);
}

// col[p * Kp + k] for the taps k = (ci, ky, kx) of group grp; padding holds the zero point
// (x = 0), the taps past K hold 0 (their weights are 0).
void QConv::im2col(const uint8_t* q, int grp, uint8_t* col) const {
  const QGeom& g = g_;
  const uint8_t z = static_cast<uint8_t>(xz_);
  for (int oy = 0; oy < g.Ho; ++oy) {
    for (int ox = 0; ox < g.Wo; ++ox) {
      uint8_t* cr = col + static_cast<size_t>(oy * g.Wo + ox) * Kp_;
      int k = 0;
      for (int ci = 0; ci < Cig_; ++ci) {
        const uint8_t* plane = q + static_cast<size_t>(grp * Cig_ + ci) * g.H * g.W;
        for (int ky = 0; ky < g.kh; ++ky) {
          const int iy = oy * g.sh - g.pt + ky * g.dh;
          for (int kx = 0; kx < g.kw; ++kx, ++k) {
            const int ix = ox * g.sw - g.pl + kx * g.dw;
            cr[k] = (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) ? plane[iy * g.W + ix] : z;
          }
        }
      }
      std::memset(cr + K_, 0, Kp_ - K_);
    }
  }
}

// y[c][p] = float(acc - z * wsum_c) * scale_c + bias_c for rows c0..c1 (global channels) and
// positions p0..p1; acc holds those rows with stride P.
void QConv::rows(const int32_t* acc, int c0, int c1, int p0, int p1, float* y) const {
  for (int c = c0; c < c1; ++c) {
    const int32_t off = pairs_ ? 0 : xz_ * wsum_[c];
    const float s = scale_[c], b = bias_.empty() ? 0.0f : bias_[c];
    const int32_t* a = acc + static_cast<size_t>(c - c0) * P_;
    float* yr = y + static_cast<size_t>(c) * P_;
    if (bias_.empty()) {
      for (int p = p0; p < p1; ++p) yr[p] = static_cast<float>(a[p] - off) * s;
    } else {
      for (int p = p0; p < p1; ++p) {
        const float m = static_cast<float>(a[p] - off) * s;
        yr[p] = m + b;
      }
    }
  }
}

void QConv::forward(const float* x, int N, float* y, ThreadPool* pool) const {
  const QGeom& g = g_;
  const size_t in_n = static_cast<size_t>(g.Ci) * g.H * g.W;
  const size_t out_n = static_cast<size_t>(g.Co) * P_;
  const size_t col_n = col_bytes();
  const int nt = pool ? pool->size() : 1;
  if (N >= nt || nt == 1) {  // whole images per task
    auto task = [&](int n) {
      std::vector<uint8_t> q(in_n), col(col_n + 64);
      std::vector<int32_t> acc(static_cast<size_t>(Cog_) * P_);
      quant_(x + n * in_n, in_n, xs_, xz_, q.data());
      for (int grp = 0; grp < g.groups; ++grp) {
        layout(q.data(), grp, col.data());
        gemm(col.data(), grp, 0, P_, acc.data());
        rows(acc.data(), grp * Cog_, (grp + 1) * Cog_, 0, P_, y + n * out_n);
      }
    };
    if (pool && N > 1)
      pool->parallel_for(N, task);
    else
      for (int n = 0; n < N; ++n) task(n);
    return;
  }
  // fewer images than threads: quantise and lay out each image once, then split the GEMM
  std::vector<uint8_t> q(in_n), col(col_n * g.groups + 64);
  std::vector<int32_t> acc(out_n);
  const int chunks = (P_ + kPChunk - 1) / kPChunk;
  for (int n = 0; n < N; ++n) {
    quant_(x + n * in_n, in_n, xs_, xz_, q.data());
    for (int grp = 0; grp < g.groups; ++grp) layout(q.data(), grp, col.data() + grp * col_n);
    pool->parallel_for(g.groups * chunks, [&](int t) {
      const int grp = t / chunks, p0 = (t % chunks) * kPChunk, p1 = std::min(P_, p0 + kPChunk);
      int32_t* a = acc.data() + static_cast<size_t>(grp * Cog_) * P_;
      gemm(col.data() + grp * col_n, grp, p0, p1, a);
      rows(a, grp * Cog_, (grp + 1) * Cog_, p0, p1, y + n * out_n);
    });
  }
}

}  // namespace sbnn
