// The binary-conv kernels for AArch64 Advanced SIMD (NEON), in the same KernelTable as the x86
// files (kern_scalar.cpp, kern_avx2.cpp, kern_avx512.cpp). NEON is part of the AArch64 base ISA,
// so this file needs no -m flags; CMake builds it on aarch64 only, and it compiles to nothing
// elsewhere.
//
// NEON versions: the inner loops that dominate a layer's time,
//   sparse_accum / sparse_accum8  int8 adds of the shifted phase planes (16 lanes per vector,
//                                 tiles of up to 16 vectors = 256 bytes stay in registers),
//   window_sum                    int16 -> int32 widening adds,
//   affine_epilogue(8)            int -> float conversion and the per-channel affine map,
//   dense_gemm                    AND + per-byte popcount (vcnt) accumulated in bytes, folded
//                                 by pairwise widening adds (vpadal) and one vaddv per output.
// Every other entry (sparse_prep, dense_pack, dense_im2col, dense_epilogue: preparation and
// gathers, linear in the input) is taken from kernels_scalar() (kern_scalar.cpp, the portable
// bodies, which GCC vectorises for NEON), so an entry without a NEON version, including any
// entry added to the table later, falls back to portable code.
//
// Floats: multiplies and adds are kept separate and in the portable code's order (no fused
// multiply-add; the aarch64 build also passes -ffp-contract=off), so the outputs equal the
// scalar path's bit for bit, on aarch64 and on x86.
#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cstddef>
#include <cstring>

#include "core/kernels.h"

namespace sbnn {
namespace {

inline int neon_min(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------- sparse path: accumulation
// acc8[j] = sum_e base[offs[e] + j] for the NV*16 bytes of one tile: NV int8 accumulators stay in
// registers while the offsets stream past (one offset load per NV vector loads + adds).
template <int NV>
inline void neon_tile8(const int8_t* base, const int32_t* offs, int n, int8_t* acc) {
  int8x16_t a[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) a[v] = vdupq_n_s8(0);
  for (int e = 0; e < n; ++e) {
    const int8_t* p = base + offs[e];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[v] = vaddq_s8(a[v], vld1q_s8(p + 16 * v));
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) vst1q_s8(acc + 16 * v, a[v]);
}

// The int32 twin: int8 accumulators for kNarrowMax offsets at a time (|sum| <= 127), then
// widened (vmovl / vaddw) into the int32 result, so counts stay exact for any n.
template <int NV>
inline void neon_tile32(const int8_t* base, const int32_t* offs, int n, int32_t* acc) {
  if (n == 0) {
    for (int q = 0; q < NV * 16; q += 4) vst1q_s32(acc + q, vdupq_n_s32(0));
    return;
  }
  for (int e0 = 0; e0 < n; e0 += kNarrowMax) {
    const int e1 = neon_min(n, e0 + kNarrowMax);
    int8x16_t a[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[v] = vdupq_n_s8(0);
    for (int e = e0; e < e1; ++e) {
      const int8_t* p = base + offs[e];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) a[v] = vaddq_s8(a[v], vld1q_s8(p + 16 * v));
    }
    for (int v = 0; v < NV; ++v) {
      int32_t* d = acc + 16 * v;
      const int16x8_t lo = vmovl_s8(vget_low_s8(a[v])), hi = vmovl_high_s8(a[v]);
      if (e0 == 0) {  // first chunk: plain stores, no zeroing pass
        vst1q_s32(d, vmovl_s16(vget_low_s16(lo)));
        vst1q_s32(d + 4, vmovl_high_s16(lo));
        vst1q_s32(d + 8, vmovl_s16(vget_low_s16(hi)));
        vst1q_s32(d + 12, vmovl_high_s16(hi));
      } else {
        vst1q_s32(d, vaddw_s16(vld1q_s32(d), vget_low_s16(lo)));
        vst1q_s32(d + 4, vaddw_high_s16(vld1q_s32(d + 4), lo));
        vst1q_s32(d + 8, vaddw_s16(vld1q_s32(d + 8), vget_low_s16(hi)));
        vst1q_s32(d + 12, vaddw_high_s16(vld1q_s32(d + 12), hi));
      }
    }
  }
}

// Tiles of 16 vectors (one full 256-byte grid of stacked small images in a single pass over
// the offsets), then one of 8, then the rest. Lr is a multiple of 16 (of 32 in practice).
#define SBNN_NEON_TILES(TILE, base, offs, n, Lr, acc)                      \
  do {                                                                     \
    const int nvec = (Lr) / 16;                                            \
    int v = 0;                                                             \
    for (; v + 16 <= nvec; v += 16) TILE<16>((base) + 16 * v, offs, n, (acc) + 16 * v); \
    if (v + 8 <= nvec) {                                                   \
      TILE<8>((base) + 16 * v, offs, n, (acc) + 16 * v);                   \
      v += 8;                                                              \
    }                                                                      \
    const int8_t* b = (base) + 16 * v;                                     \
    auto* a = (acc) + 16 * v;                                              \
    switch (nvec - v) {                                                    \
      case 1: TILE<1>(b, offs, n, a); break;                               \
      case 2: TILE<2>(b, offs, n, a); break;                               \
      case 3: TILE<3>(b, offs, n, a); break;                               \
      case 4: TILE<4>(b, offs, n, a); break;                               \
      case 5: TILE<5>(b, offs, n, a); break;                               \
      case 6: TILE<6>(b, offs, n, a); break;                               \
      case 7: TILE<7>(b, offs, n, a); break;                               \
      default: break;                                                      \
    }                                                                      \
  } while (0)

void neon_sparse_accum(const int8_t* base, const int32_t* offs, int n, int Lr, int32_t* acc) {
  SBNN_NEON_TILES(neon_tile32, base, offs, n, Lr, acc);
}

void neon_sparse_accum8(const int8_t* base, const int32_t* offs, int n, int Lr, int8_t* acc) {
  SBNN_NEON_TILES(neon_tile8, base, offs, n, Lr, acc);
}
#undef SBNN_NEON_TILES

// ws[j] = sum_t ssum[toffs[t] + j]: 32 columns (8 int32 accumulators) per pass over the taps.
void neon_window_sum(const int16_t* __restrict ssum, const int32_t* toffs, int ntaps, int Lr,
                     int32_t* __restrict ws) {
  int j0 = 0;
  for (; j0 + 32 <= Lr; j0 += 32) {
    int32x4_t a[8];
    for (int q = 0; q < 8; ++q) a[q] = vdupq_n_s32(0);
    for (int t = 0; t < ntaps; ++t) {
      const int16_t* s = ssum + toffs[t] + j0;
      for (int q = 0; q < 4; ++q) {
        const int16x8_t v = vld1q_s16(s + 8 * q);
        a[2 * q] = vaddw_s16(a[2 * q], vget_low_s16(v));
        a[2 * q + 1] = vaddw_high_s16(a[2 * q + 1], v);
      }
    }
    for (int q = 0; q < 8; ++q) vst1q_s32(ws + j0 + 4 * q, a[q]);
  }
  for (int j = j0; j < Lr; ++j) {
    int32_t s = 0;
    for (int t = 0; t < ntaps; ++t) s += ssum[toffs[t] + j];
    ws[j] = s;
  }
}

// y = eta * c + (xi * ws + bias), rounded exactly as the portable loop (two products, two sums).
inline float32x4_t neon_affine4(float32x4_t c, const float* ws, float32x4_t ev, float32x4_t xv,
                           float32x4_t bv) {
  return vaddq_f32(vmulq_f32(ev, c), vaddq_f32(vmulq_f32(xv, vld1q_f32(ws)), bv));
}

void neon_affine_epilogue(const int32_t* __restrict acc, int Ho, int Wo, int pitch,
                          const float* __restrict wsf, float eta, float xi, float bias,
                          float* __restrict y) {
  const float32x4_t ev = vdupq_n_f32(eta), xv = vdupq_n_f32(xi), bv = vdupq_n_f32(bias);
  for (int oh = 0; oh < Ho; ++oh) {
    const int32_t* a = acc + static_cast<size_t>(oh) * pitch;
    const float* ws = wsf + static_cast<size_t>(oh) * Wo;
    float* yr = y + static_cast<size_t>(oh) * Wo;
    // Full vectors, the last one shifted back to end at the row's end (recomputing a few
    // outputs identically) rather than a scalar tail.
    auto at = [&](int o) {
      vst1q_f32(yr + o, neon_affine4(vcvtq_f32_s32(vld1q_s32(a + o)), ws + o, ev, xv, bv));
    };
    int ow = 0;
    if (Wo >= 4) {
      for (; ow + 4 <= Wo; ow += 4) at(ow);
      if (ow < Wo) at(Wo - 4);
      ow = Wo;
    }
    for (; ow < Wo; ++ow) yr[ow] = eta * static_cast<float>(a[ow]) + (xi * ws[ow] + bias);
  }
}

void neon_affine_epilogue8(const int8_t* __restrict acc, int Ho, int Wo, int pitch,
                           const float* __restrict wsf, float eta, float xi, float bias,
                           float* __restrict y) {
  const float32x4_t ev = vdupq_n_f32(eta), xv = vdupq_n_f32(xi), bv = vdupq_n_f32(bias);
  for (int oh = 0; oh < Ho; ++oh) {
    const int8_t* a = acc + static_cast<size_t>(oh) * pitch;
    const float* ws = wsf + static_cast<size_t>(oh) * Wo;
    float* yr = y + static_cast<size_t>(oh) * Wo;
    int ow = 0;
    if (Wo >= 8) {  // 8 counts -> int16 -> 2 x 4 int32 -> float
      auto at = [&](int o) {
        const int16x8_t c = vmovl_s8(vld1_s8(a + o));
        const float32x4_t lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
        const float32x4_t hi = vcvtq_f32_s32(vmovl_high_s16(c));
        vst1q_f32(yr + o, neon_affine4(lo, ws + o, ev, xv, bv));
        vst1q_f32(yr + o + 4, neon_affine4(hi, ws + o + 4, ev, xv, bv));
      };
      for (; ow + 8 <= Wo; ow += 8) at(ow);
      if (ow < Wo) at(Wo - 8);
      ow = Wo;
    } else if (Wo >= 4) {  // two overlapping groups of 4
      for (int k = 0; k < (Wo > 4 ? 2 : 1); ++k) {
        const int o = k == 0 ? 0 : Wo - 4;
        int32_t q;  // 4 int8 counts
        std::memcpy(&q, a + o, 4);
        const int16x8_t c = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(q)));
        const float32x4_t lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
        vst1q_f32(yr + o, neon_affine4(lo, ws + o, ev, xv, bv));
      }
      ow = Wo;
    }
    for (; ow < Wo; ++ow) yr[ow] = eta * static_cast<float>(a[ow]) + (xi * ws[ow] + bias);
  }
}

// ---------------------------------------------------------------- dense path
// Register block: CB filters x PB patches, 2 words (one q register) per step (Kp is a multiple
// of 4 words). A byte lane of vcnt gains at most 8 per step, so the byte accumulators take 31
// steps (248) before vpaddl/vpadal fold them into 32-bit lanes; vaddv sums those at the end.
template <int CB, int PB>
inline void neon_gemm_block(const uint64_t* patches, int P, const uint64_t* w, int Kp, int c0,
                            int p0, int32_t* pc) {
  uint32x4_t tot[CB][PB];
  for (int c = 0; c < CB; ++c)
    for (int q = 0; q < PB; ++q) tot[c][q] = vdupq_n_u32(0);
  for (int k0 = 0; k0 < Kp; k0 += 2 * 31) {
    const int k1 = neon_min(Kp, k0 + 2 * 31);
    uint8x16_t acc[CB][PB];
    for (int c = 0; c < CB; ++c)
      for (int q = 0; q < PB; ++q) acc[c][q] = vdupq_n_u8(0);
    for (int k = k0; k < k1; k += 2) {
      uint8x16_t xv[PB];
      for (int q = 0; q < PB; ++q)
        xv[q] = vreinterpretq_u8_u64(vld1q_u64(patches + static_cast<size_t>(p0 + q) * Kp + k));
      for (int c = 0; c < CB; ++c) {
        const uint8x16_t wv =
            vreinterpretq_u8_u64(vld1q_u64(w + static_cast<size_t>(c0 + c) * Kp + k));
        for (int q = 0; q < PB; ++q)
          acc[c][q] = vaddq_u8(acc[c][q], vcntq_u8(vandq_u8(wv, xv[q])));
      }
    }
    for (int c = 0; c < CB; ++c)
      for (int q = 0; q < PB; ++q) tot[c][q] = vpadalq_u16(tot[c][q], vpaddlq_u8(acc[c][q]));
  }
  for (int c = 0; c < CB; ++c)
    for (int q = 0; q < PB; ++q)
      pc[static_cast<size_t>(c0 + c) * P + p0 + q] = static_cast<int32_t>(vaddvq_u32(tot[c][q]));
}

// 4 x 2 blocks: 8 byte + 8 word accumulators + 6 loaded vectors fit the 32 registers.
constexpr int kNeonCB = 4, kNeonPB = 2;

void neon_dense_gemm(const uint64_t* patches, int P, const uint64_t* w, int nco, int Kp,
                     int32_t* pc) {
  int c0 = 0;
  for (; c0 + kNeonCB <= nco; c0 += kNeonCB) {
    int p0 = 0;
    for (; p0 + kNeonPB <= P; p0 += kNeonPB)
      neon_gemm_block<kNeonCB, kNeonPB>(patches, P, w, Kp, c0, p0, pc);
    for (; p0 < P; ++p0) neon_gemm_block<kNeonCB, 1>(patches, P, w, Kp, c0, p0, pc);
  }
  for (; c0 < nco; ++c0) {
    int p0 = 0;
    for (; p0 + kNeonPB <= P; p0 += kNeonPB)
      neon_gemm_block<1, kNeonPB>(patches, P, w, Kp, c0, p0, pc);
    for (; p0 < P; ++p0) neon_gemm_block<1, 1>(patches, P, w, Kp, c0, p0, pc);
  }
}

}  // namespace

const KernelTable& kernels_neon() {
  static const KernelTable table = [] {
    KernelTable t = kernels_scalar();  // portable entries, replaced below where NEON pays
    t.name = "neon";
    t.sparse_accum = neon_sparse_accum;
    t.sparse_accum8 = neon_sparse_accum8;
    t.window_sum = neon_window_sum;
    t.affine_epilogue = neon_affine_epilogue;
    t.affine_epilogue8 = neon_affine_epilogue8;
    t.dense_gemm = neon_dense_gemm;
    return t;
  }();
  return table;
}

}  // namespace sbnn

#endif  // __aarch64__ && __ARM_NEON
