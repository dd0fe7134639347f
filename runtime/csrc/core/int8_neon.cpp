// The int8 GEMM for AArch64 with the dot product extension (a target attribute, so no
// per-file flags; AArch64 only; run only where cpu_has_sdot()): sdot multiplies int8 by int8, so the uint8
// columns go in as q - 128 (an xor of the top bit) and each sum gets 128 * sum(w) back.
#include "core/int8.h"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace sbnn {

__attribute__((target("arch=armv8.2-a+dotprod"))) void qgemm_neon(const int8_t* w, const int32_t* wsum, const uint8_t* col, int Co, int P, int Kp,
                int32_t* acc, int ldc) {
  const uint8x16_t top = vdupq_n_u8(0x80);
  for (int c = 0; c < Co; ++c) {
    const int8_t* wr = w + static_cast<size_t>(c) * Kp;
    int p = 0;
    for (; p + 2 <= P; p += 2) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      const uint8_t* x1 = x0 + Kp;
      int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
      for (int k = 0; k < Kp; k += 16) {
        const int8x16_t wv = vld1q_s8(wr + k);
        a0 = vdotq_s32(a0, wv, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x0 + k), top)));
        a1 = vdotq_s32(a1, wv, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x1 + k), top)));
      }
      acc[static_cast<size_t>(c) * ldc + p] = vaddvq_s32(a0) + 128 * wsum[c];
      acc[static_cast<size_t>(c) * ldc + p + 1] = vaddvq_s32(a1) + 128 * wsum[c];
    }
    for (; p < P; ++p) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      int32x4_t a0 = vdupq_n_s32(0);
      for (int k = 0; k < Kp; k += 16)
        a0 = vdotq_s32(a0, vld1q_s8(wr + k),
                       vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x0 + k), top)));
      acc[static_cast<size_t>(c) * ldc + p] = vaddvq_s32(a0) + 128 * wsum[c];
    }
  }
}

}  // namespace sbnn

#endif  // __aarch64__
