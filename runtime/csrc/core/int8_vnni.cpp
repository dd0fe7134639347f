// The int8 GEMM for AVX-512 VNNI (a target attribute, so no per-file flags; x86 only; run
// only where cpu_has_vnni()): vpdpbusd multiplies 64 uint8 columns by 64 int8 weights and adds each four
// products straight into int32, with no int16 step to saturate. Four rows by two columns.
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*
// placeholders (as in kernels_impl.inc).
#include "core/int8.h"

#if defined(SBNN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#define SBNN_VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vnni")))

namespace sbnn {

namespace {

SBNN_VNNI inline int32_t hsum(__m512i v) {
  const __m512i s = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, 0x4e));
  const __m256i h = _mm512_castsi512_si256(s);
  __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4e));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1));
  return _mm_cvtsi128_si32(q);
}

}  // namespace

SBNN_VNNI void qgemm_vnni(const int8_t* w, const int32_t* /*wsum*/, const uint8_t* col, int Co, int P,
                int Kp, int32_t* acc, int ldc) {
  int c = 0;
  for (; c + 4 <= Co; c += 4) {
    const int8_t* w0 = w + static_cast<size_t>(c) * Kp;
    int p = 0;
    for (; p + 2 <= P; p += 2) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      const uint8_t* x1 = x0 + Kp;
      __m512i a[8];
      for (auto& v : a) v = _mm512_setzero_si512();
      for (int k = 0; k < Kp; k += 64) {
        const __m512i u0 = _mm512_loadu_si512(x0 + k), u1 = _mm512_loadu_si512(x1 + k);
        for (int r = 0; r < 4; ++r) {
          const __m512i wr = _mm512_loadu_si512(w0 + static_cast<size_t>(r) * Kp + k);
          a[2 * r] = _mm512_dpbusd_epi32(a[2 * r], u0, wr);
          a[2 * r + 1] = _mm512_dpbusd_epi32(a[2 * r + 1], u1, wr);
        }
      }
      for (int r = 0; r < 4; ++r) {
        acc[static_cast<size_t>(c + r) * ldc + p] = hsum(a[2 * r]);
        acc[static_cast<size_t>(c + r) * ldc + p + 1] = hsum(a[2 * r + 1]);
      }
    }
    for (; p < P; ++p) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      for (int r = 0; r < 4; ++r) {
        __m512i a = _mm512_setzero_si512();
        for (int k = 0; k < Kp; k += 64)
          a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(x0 + k),
                                  _mm512_loadu_si512(w0 + static_cast<size_t>(r) * Kp + k));
        acc[static_cast<size_t>(c + r) * ldc + p] = hsum(a);
      }
    }
  }
  for (; c < Co; ++c) {
    const int8_t* wr = w + static_cast<size_t>(c) * Kp;
    for (int p = 0; p < P; ++p) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      __m512i a = _mm512_setzero_si512();
      for (int k = 0; k < Kp; k += 64)
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(x0 + k), _mm512_loadu_si512(wr + k));
      acc[static_cast<size_t>(c) * ldc + p] = hsum(a);
    }
  }
}

}  // namespace sbnn

#endif  // x86
