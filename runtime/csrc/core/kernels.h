// Per-ISA inner kernels of the binary convolutions, behind one table.
//
// Layouts:
//  * Sparse path (a group of up to G images at a time): the binarised input (+1/-1, 0 in the
//    zero padding) of the group, its padded images stacked vertically (Hs rows each, Hs = Hp
//    rounded up to the stride), as int8 "phase planes"
//    planes[ci][py][px][i][j] = xstack[ci][s*i + py][s*j + px], i < Hph = G*Hs/s, j < Wph.
//    A stride-s conv becomes stride-1 shifts inside one phase plane, so output pixel (oh, ow)
//    of image n of the group sits at j = (n*Hs/s + oh)*Wph + ow of an "accumulation grid" of
//    length L = ((G-1)*Hs/s + Ho)*Wph (other rows and the columns ow >= Wo are junk and
//    ignored), and every 1-bit (ci, ky, kx) of a filter is one offset:
//    acc[j] += planes[off + j] for all j and all images of the group at once. Stacking small
//    images (4x4, 8x8) fills the SIMD vectors that one image alone would mostly waste.
//  * Dense path (one image at a time): channels packed into 64-bit words per padded pixel, plane[(hp*Wp + wp)*Cw + w]
//    (bit ci%64 of word ci/64), then binary im2col patches[p*Kp + (ky*kw + kx)*Cw + w].
//
// Everything is plain data (no member functions) so the struct is safe to share between
// translation units compiled with different -m flags.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sbnn {

struct ConvGeom {
  int Ci, H, W, kh, kw, stride, pad;
  int Ho, Wo, Hp, Wp;   // output size, padded input size
  int G, Hs;            // sparse: images per group, stacked rows per image (Hp rounded up to s)
  int Hph, Wph;         // phase-plane size of a group: G*Hs/stride, ceil(Wp / stride)
  int L, Lr;            // accumulation grid of a full group, Lr = L rounded up to a multiple of 64
  size_t phase_size;    // Hph * Wph
  size_t plane_elems;   // Ci * stride^2 * phase_size
  size_t plane_alloc;   // plane_elems + slack for the over-reads of the last rows
  size_t ssum_alloc;    // stride^2 * phase_size + slack
  int Cw, K, Kp;        // dense: words per pixel, words per patch, Kp = K rounded up to a vector (4 or 8)
  size_t prep_work_bytes;  // scratch of sparse_prep
  // Sparse, stride 1 only (issue 20, "Sparse kernel scaling"): 1 when the rows of the phase
  // plane carry no padding columns at all (Wph = W; the data of padded row r, column w sits at
  // r*W + w + pad, so the whole plane is shifted by pad bytes). A tap kx then reads, at the
  // columns ow where ow + kx - pad falls outside the row, a pixel of the neighbouring row: its
  // terms are accumulated apart and masked off those columns (the window sum's likewise). Chosen
  // when it packs more images into the grid's vectors (8x8: 64 bytes, 2 vectors, not 72 in 3).
  int wrap;
};

// Filters with at most this many 1-bits keep their counts in int8 from the first add to the
// epilogue (sparse_accum8 / affine_epilogue8); larger ones widen to int32 every kNarrowMax terms.
constexpr int kNarrowMax = 127;

struct KernelTable {
  const char* name;
  // x: (nimg, Ci, H, W), nimg <= G -> planes (plane_alloc int8, see above) and ssum (ssum_alloc
  // int16, the per-pixel channel sum of planes, same phase layout). thr may be null
  // (threshold 0). work: prep_work_bytes of scratch.
  void (*sparse_prep)(const float* x, int nimg, const float* thr, const ConvGeom& g,
                      int8_t* planes, int16_t* ssum, void* work);
  // acc[j] = sum_e base[offs[e] + j] for j < Lr (Lr a multiple of the ISA's vector, 64 bytes
  // for AVX-512, 32 otherwise). Exact for any n.
  void (*sparse_accum)(const int8_t* base, const int32_t* offs, int n, int Lr, int32_t* acc);
  // The same into int8, for 1 <= n <= kNarrowMax (no widening pass).
  void (*sparse_accum8)(const int8_t* base, const int32_t* offs, int n, int Lr, int8_t* acc);
  // ws[j] = sum_t ssum[toffs[t] + j] for j < Lr.
  void (*window_sum)(const int16_t* ssum, const int32_t* toffs, int ntaps, int Lr, int32_t* ws);
  // y[oh*Wo + ow] = eta * acc[oh*pitch + ow] + xi * wsf[oh*Wo + ow] + bias.
  void (*affine_epilogue)(const int32_t* acc, int Ho, int Wo, int pitch, const float* wsf,
                          float eta, float xi, float bias, float* y);
  // The same from int8 counts; reads up to 16 bytes past each row's Wo-th count.
  void (*affine_epilogue8)(const int8_t* acc, int Ho, int Wo, int pitch, const float* wsf,
                           float eta, float xi, float bias, float* y);
  // x: (Ci, H, W) -> plane (Hp*Wp*Cw words, zero where padded).
  void (*dense_pack)(const float* x, const float* thr, const ConvGeom& g, uint64_t* plane);
  // plane -> patches (Ho*Wo, Kp) words and ppop[p] = popcount of patch p.
  void (*dense_im2col)(const uint64_t* plane, const ConvGeom& g, uint64_t* patches,
                       int32_t* ppop);
  // pc[c*P + p] = sum_k popcount(patches[p*Kp + k] & w[c*Kp + k]), c < nco.
  void (*dense_gemm)(const uint64_t* patches, int P, const uint64_t* w, int nco, int Kp,
                     int32_t* pc);
  // y[p] = eta * (2*pc[p] - corr[cls[p]]) + xi * wsf[p] + bias, p < P.
  void (*dense_epilogue)(const int32_t* pc, int P, const int32_t* corr, const uint16_t* cls,
                         const float* wsf, float eta, float xi, float bias, float* y);

  // ---- float GEMM of the float layers (stem, 1x1 shortcuts): C = A * B + bias per row.
  // Register tile: sgemm_mr rows of A (output channels) x nr columns of B (pixels), nr = 1 or
  // 2 vectors of sgemm_vl floats. A is packed once per layer in panels of sgemm_mr rows,
  // Ap[ib][k][r] (zero rows past M); B in panels of nr columns, Bp[jb][k][j] (zero columns past
  // N). C: (M, N) with row stride ldc; only valid rows and columns are written. bias may be
  // null. A table that leaves sgemm null (e.g. a port to a new ISA) uses the scalar one.
  // ---- the fused epilogue's post-ops on one output plane of n values (engine fusion):
  // y += res (res may be null); clamp to [lo, hi] if clamp; if rp (shift_in, slope, shift_out
  // of this channel) y = max(v, 0) + slope * min(v, 0) + shift_out with v = y - shift_in.
  // Null in a table: the scalar one runs.
  void (*post_plane)(float* y, const float* res, size_t n, bool clamp, float lo, float hi,
                     const float* rp) = nullptr;

  int sgemm_mr = 0, sgemm_vl = 0;
  void (*sgemm)(const float* Ap, const float* Bp, int M, int N, int K, int nr, const float* bias,
                float* C, int ldc) = nullptr;

  // ---- affine_epilogue / affine_epilogue8, then post_plane's post-ops (y += res, res may be
  // null and may alias y; clamp; RPReLU when rp is set) in one pass with the same rounding as
  // the two (issue 20). Null in a table: the epilogue and post_plane run one after the other.
  void (*affine_epilogue_post)(const int32_t* acc, int Ho, int Wo, int pitch, const float* wsf,
                               float eta, float xi, float bias, float* y, const float* res,
                               bool clamp, float lo, float hi, const float* rp) = nullptr;
  void (*affine_epilogue8_post)(const int8_t* acc, int Ho, int Wo, int pitch, const float* wsf,
                                float eta, float xi, float bias, float* y, const float* res,
                                bool clamp, float lo, float hi, const float* rp) = nullptr;

  // ---- sparse accumulation on a wrapped grid (ConvGeom::wrap), int8, total <= kNarrowMax:
  // the filter's offsets come in nseg segments, offs[seg[k] .. seg[k+1]); segment 0 is added
  // as it is, segment k >= 1 only where its byte mask masks[(k-1)*mstride + j] is -1 (0: the
  // term read a neighbouring row's pixel). acc[j] for j < Lr. Null in a table (the NEON one):
  // sparse_accum8 / sparse_accum per segment and a masked merge (bconv.cpp).
  void (*sparse_accum8_wrap)(const int8_t* base, const int32_t* offs, const int32_t* seg,
                             int nseg, const int8_t* masks, int mstride, int Lr,
                             int8_t* acc) = nullptr;
  // The same into int32, for any number of 1-bits (int8 registers widened every kNarrowMax).
  void (*sparse_accum_wrap)(const int8_t* base, const int32_t* offs, const int32_t* seg,
                            int nseg, const int8_t* masks, int mstride, int Lr,
                            int32_t* acc) = nullptr;
};

const KernelTable& kernels_scalar();
#ifdef SBNN_HAVE_X86_KERNELS
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
const KernelTable& kernels_neon();  // kern_neon.cpp
#endif

}  // namespace sbnn
