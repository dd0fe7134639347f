// Per-ISA inner kernels of the binary convolutions, behind one table.
//
// Layouts (one image at a time):
//  * Sparse path: the binarised input (+1/-1, 0 in the zero padding) as int8 "phase planes"
//    planes[ci][py][px][i][j] = xpad[ci][s*i + py][s*j + px], i < Hph, j < Wph, s = stride.
//    A stride-s conv becomes stride-1 shifts inside one phase plane, so an output pixel
//    (oh, ow) sits at j = oh*Wph + ow of an "accumulation grid" of length L = Ho*Wph (the columns
//    ow >= Wo are junk and ignored), and every 1-bit (ci, ky, kx) of a filter is one offset:
//    acc[j] += planes[off + j] for all j at once.
//  * Dense path: channels packed into 64-bit words per padded pixel, plane[(hp*Wp + wp)*Cw + w]
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
  int Hph, Wph;         // phase-plane size: ceil(Hp / stride), ceil(Wp / stride)
  int L, Lr;            // accumulation grid Ho*Wph, rounded up to a multiple of 64
  size_t phase_size;    // Hph * Wph
  size_t plane_elems;   // Ci * stride^2 * phase_size
  size_t plane_alloc;   // plane_elems + slack for the over-reads of the last rows
  size_t ssum_alloc;    // stride^2 * phase_size + slack
  int Cw, K, Kp;        // dense: words per pixel, words per patch, Kp = K rounded up to 8
  size_t prep_work_bytes;  // scratch of sparse_prep
};

struct KernelTable {
  const char* name;
  // x: (Ci, H, W) -> planes (plane_alloc int8, see above) and ssum (ssum_alloc int16, the
  // per-pixel channel sum of planes, same phase layout). thr may be null (threshold 0).
  // work: prep_work_bytes of scratch.
  void (*sparse_prep)(const float* x, const float* thr, const ConvGeom& g, int8_t* planes,
                      int16_t* ssum, void* work);
  // acc[j] = sum_e base[offs[e] + j] for j < Lr (Lr a multiple of 64). Exact for any n.
  void (*sparse_accum)(const int8_t* base, const int32_t* offs, int n, int Lr, int32_t* acc);
  // ws[j] = sum_t ssum[toffs[t] + j] for j < Lr.
  void (*window_sum)(const int16_t* ssum, const int32_t* toffs, int ntaps, int Lr, int32_t* ws);
  // y[oh*Wo + ow] = eta * acc[oh*pitch + ow] + xi * wsf[oh*Wo + ow] + bias.
  void (*affine_epilogue)(const int32_t* acc, int Ho, int Wo, int pitch, const float* wsf,
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
};

const KernelTable& kernels_scalar();
#ifdef SBNN_HAVE_X86_KERNELS
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

}  // namespace sbnn
