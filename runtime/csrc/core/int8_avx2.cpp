// The int8 GEMM for AVX2 (a target attribute, so no per-file flags; x86 only): vpmaddwd on operands widened
// to int16, four weight rows by two columns at a time. vpmaddubsw would take uint8 x int8
// directly but sums each pair in saturating int16 (255 * 127 * 2 > 32767): widening first keeps
// every sum exact.
#include "core/int8.h"

#if defined(SBNN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

#define SBNN_AVX2 __attribute__((target("avx2")))

namespace sbnn {

namespace {

SBNN_AVX2 inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

SBNN_AVX2 inline __m256i wrow(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

SBNN_AVX2 inline __m256i ucol(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

}  // namespace

SBNN_AVX2 void qgemm_avx2(const int8_t* w, const int32_t* /*wsum*/, const uint8_t* col, int Co, int P,
                int Kp, int32_t* acc, int ldc) {
  int c = 0;
  for (; c + 4 <= Co; c += 4) {
    const int8_t* w0 = w + static_cast<size_t>(c) * Kp;
    int p = 0;
    for (; p + 2 <= P; p += 2) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      const uint8_t* x1 = x0 + Kp;
      __m256i a[8];
      for (auto& v : a) v = _mm256_setzero_si256();
      for (int k = 0; k < Kp; k += 16) {
        const __m256i u0 = ucol(x0 + k), u1 = ucol(x1 + k);
        for (int r = 0; r < 4; ++r) {
          const __m256i wr = wrow(w0 + static_cast<size_t>(r) * Kp + k);
          a[2 * r] = _mm256_add_epi32(a[2 * r], _mm256_madd_epi16(wr, u0));
          a[2 * r + 1] = _mm256_add_epi32(a[2 * r + 1], _mm256_madd_epi16(wr, u1));
        }
      }
      for (int r = 0; r < 4; ++r) {
        acc[static_cast<size_t>(c + r) * ldc + p] = hsum(a[2 * r]);
        acc[static_cast<size_t>(c + r) * ldc + p + 1] = hsum(a[2 * r + 1]);
      }
    }
    for (; p < P; ++p) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      __m256i a[4];
      for (auto& v : a) v = _mm256_setzero_si256();
      for (int k = 0; k < Kp; k += 16) {
        const __m256i u0 = ucol(x0 + k);
        for (int r = 0; r < 4; ++r)
          a[r] = _mm256_add_epi32(a[r],
                                  _mm256_madd_epi16(wrow(w0 + static_cast<size_t>(r) * Kp + k), u0));
      }
      for (int r = 0; r < 4; ++r) acc[static_cast<size_t>(c + r) * ldc + p] = hsum(a[r]);
    }
  }
  for (; c < Co; ++c) {
    const int8_t* wr = w + static_cast<size_t>(c) * Kp;
    for (int p = 0; p < P; ++p) {
      const uint8_t* x0 = col + static_cast<size_t>(p) * Kp;
      __m256i a = _mm256_setzero_si256();
      for (int k = 0; k < Kp; k += 16)
        a = _mm256_add_epi32(a, _mm256_madd_epi16(wrow(wr + k), ucol(x0 + k)));
      acc[static_cast<size_t>(c) * ldc + p] = hsum(a);
    }
  }
}

namespace {

SBNN_AVX2 inline void store16(int32_t* dst, __m256i a, __m256i b, int valid) {
  if (valid >= 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), b);
    return;
  }
  alignas(32) int32_t t[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), a);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), b);
  for (int i = 0; i < valid; ++i) dst[i] = t[i];
}

}  // namespace

SBNN_AVX2 void quantize_u8_avx2(const float* x, size_t n, float scale, int zero, uint8_t* q) {
  const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(static_cast<float>(zero));
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), s),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    t = _mm256_add_ps(t, z);
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);  // max(NaN, 0) = 0: NaN -> 0
    const __m256i v = _mm256_cvttps_epi32(t);
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(w, w));
  }
  if (i < n) quantize_u8(x + i, n - i, scale, zero, q + i);
}

// Four output channels by 16 positions: per tap pair two column loads, four weight-pair
// broadcasts and eight vpmaddwd, no horizontal sum.
SBNN_AVX2 void qgemm_avx2_pairs(const int32_t* wp, const int16_t* col, int Co, int K2, int Pp,
                                int p0, int p1, int32_t* acc, int ldc) {
  const size_t step = static_cast<size_t>(Pp) * 2;
  for (int p = p0; p < p1; p += 16) {
    const int16_t* cb = col + static_cast<size_t>(p) * 2;
    const int valid = p1 - p;
    int c = 0;
    for (; c + 4 <= Co; c += 4) {
      const int32_t* w0 = wp + static_cast<size_t>(c) * K2;
      __m256i a[8];
      for (auto& v : a) v = _mm256_setzero_si256();
      for (int j = 0; j < K2; ++j) {
        const __m256i* xr = reinterpret_cast<const __m256i*>(cb + j * step);
        const __m256i x0 = _mm256_loadu_si256(xr), x1 = _mm256_loadu_si256(xr + 1);
        for (int r = 0; r < 4; ++r) {
          const __m256i wb = _mm256_set1_epi32(w0[static_cast<size_t>(r) * K2 + j]);
          a[2 * r] = _mm256_add_epi32(a[2 * r], _mm256_madd_epi16(x0, wb));
          a[2 * r + 1] = _mm256_add_epi32(a[2 * r + 1], _mm256_madd_epi16(x1, wb));
        }
      }
      for (int r = 0; r < 4; ++r)
        store16(acc + static_cast<size_t>(c + r) * ldc + p, a[2 * r], a[2 * r + 1], valid);
    }
    for (; c < Co; ++c) {
      const int32_t* w0 = wp + static_cast<size_t>(c) * K2;
      __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
      for (int j = 0; j < K2; ++j) {
        const __m256i* xr = reinterpret_cast<const __m256i*>(cb + j * step);
        const __m256i wb = _mm256_set1_epi32(w0[j]);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_loadu_si256(xr), wb));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_loadu_si256(xr + 1), wb));
      }
      store16(acc + static_cast<size_t>(c) * ldc + p, a0, a1, valid);
    }
  }
}

}  // namespace sbnn

#endif  // x86
