// Sparse and dense binary 2-D convolution layers (framework-free).
//
// Per output channel c:  y_c = eta_c * conv(x, b_c) + xi_c * conv(x, 1) + bias_c
// with x = +1 if input >= thr[ci] else -1 (zero padding contributes 0) and b_c in {0, 1}.
// conv(x, 1) (the window sum over all input channels) is computed once per image and shared.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/floatops.h"
#include "core/isa.h"
#include "core/kernels.h"
#include "core/threadpool.h"

namespace sbnn {

enum class BConvKind { Sparse, Dense };

// What the epilogue does after the affine, per output value (the engine's fusion of a following
// residual add and hardtanh or RPReLU): y += res; y = clamp(y, lo, hi); then, per channel c,
// v = y - rp_in[c], y = (v >= 0 ? v : rp_slope[c] * v) + rp_out[c]. Each step only when set;
// res: (N, Co, Ho, Wo), rp_*: (Co).
struct BConvPost {
  const float* res = nullptr;
  bool clamp = false;
  float lo = -1.0f, hi = 1.0f;
  const float *rp_in = nullptr, *rp_slope = nullptr, *rp_out = nullptr;
  bool active() const { return res != nullptr || clamp || rp_in != nullptr; }
  // Output channel c's RPReLU parameters (in, slope, out) gathered into rp, in the order the
  // epilogue takes them; nullptr when there is no RPReLU.
  const float* rprelu(int c, float rp[3]) const {
    if (!rp_in) return nullptr;
    rp[0] = rp_in[c];
    rp[1] = rp_slope[c];
    rp[2] = rp_out[c];
    return rp;
  }
};

// Fills every field of the geometry; throws std::invalid_argument on an empty output.
// vec_bytes: the kernel ISA's vector (64 AVX-512, else 32). The sparse path stacks as many
// images (G) as fit an accumulation grid of 8 vectors (at least one image); the dense patches
// are padded to whole vectors (Kp).
ConvGeom make_geom(int Ci, int H, int W, int kh, int kw, int stride, int pad,
                   int vec_bytes = 32, int max_group = 64);

// The sparse kernel's layout for one group size: its geometry and the 1-bit offsets into its
// planes (which depend on the plane size, hence on G). A batch smaller than the full group
// (batch 1 at 4x4: 1 image, room for 16) gets a plan with G = that batch, so the planes it
// clears, fills and sums are not mostly empty rows of absent images.
struct SparsePlan {
  ConvGeom g;
  std::vector<int32_t> offsets;      // per filter: offsets[start[c] .. start[c+1])
  std::vector<int32_t> tap_offsets;  // one per tap, into the channel-sum planes
  // Wrapped grids only (g.wrap): offsets and taps in kw segments by kx (kx = pad first); per
  // filter c, its segment k is offsets[start[c] + seg[c*(kw+1) + k] .. + seg[c*(kw+1) + k+1]),
  // the taps' tap_offsets[tap_seg[k] .. tap_seg[k+1]); segment k >= 1 counts only where
  // masks[(k-1)*mstride + j] is -1 (column ow + kx - pad inside the row).
  std::vector<int32_t> seg, tap_seg;
  std::vector<int8_t> masks;
  int mstride = 0;
};

class BConvLayer {
 public:
  // bits: (Co, Ci, kh, kw) 0/1; eta, xi, bias: (Co); thr: (Ci) or null (threshold 0).
  // The layer is prepared for one input size (H, W); the batch comes at run time.
  BConvLayer(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
             const float* xi, const float* bias, const float* thr, int stride, int pad, int H,
             int W, BConvKind kind, Isa isa);

  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo), then post (if any) on each output plane while it is
  // still in L1.
  void forward(const float* x, int N, float* y, ThreadPool* pool,
               const BConvPost& post = BConvPost()) const;
  // The integer parts: cnt (N, Co, Ho, Wo) = conv(x, b), ws (N, Ho, Wo) = conv(x, 1).
  void counts(const float* x, int N, int32_t* cnt, int32_t* ws, ThreadPool* pool) const;

  const ConvGeom& geom() const { return g_; }
  int out_channels() const { return Co_; }
  Isa isa() const { return isa_; }
  BConvKind kind() const { return kind_; }
  int64_t ones() const { return start_.back(); }

 private:
  void run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
           const BConvPost& post) const;
  void run_reference(const float* x, int N, float* y, int32_t* cnt, int32_t* ws,
                     const BConvPost& post) const;
  // nimg <= G images stacked in one grid; y, cnt, ws (and post.res) point at the group's first
  // image.
  void group_sparse(const SparsePlan& sp, const float* x, int nimg, float* y, int32_t* cnt,
                    int32_t* ws, ThreadPool* pool, const BConvPost& post) const;
  void fill_plan(SparsePlan& sp) const;
  // The post-ops on one output plane of channel c (the ISA's KernelTable::post_plane).
  void run_post(float* y, const float* res, size_t n, const BConvPost& p, int c) const;
  // The plan for groups of at most G images (G < geom().G: built once, cached).
  const SparsePlan& plan_for(int G) const;
  void image_dense(const float* x, float* y, int32_t* cnt, int32_t* ws, ThreadPool* pool,
                   const BConvPost& post) const;

  int Co_;
  ConvGeom g_;
  BConvKind kind_;
  Isa isa_;
  const KernelTable* kt_ = nullptr;
  std::vector<uint8_t> bits_;
  std::vector<float> eta_, xi_, bias_, thr_;
  // sparse: offsets of the 1-bits of filter c are offsets_[start_[c] .. start_[c+1])
  SparsePlan full_;  // G = geom().G
  std::vector<int64_t> start_;
  mutable std::mutex plans_mu_;
  mutable std::map<int, std::unique_ptr<SparsePlan>> plans_;  // smaller G
  // dense: packed filters (Co, Kp), pixel classes (which taps are inside the image) and, per
  // filter and class, the number of 1-bits on the valid taps.
  std::vector<uint64_t> wpacked_;
  std::vector<uint16_t> pix_class_;
  std::vector<int32_t> nvalid_;  // per output pixel: number of valid taps
  int nclass_ = 0;
  std::vector<int32_t> corr_;  // (Co, nclass)
};

// A binary conv of any geometry (groups, dilation, non-square strides and pads), which the
// packed kernels above do not take: the input binarised once into zero-padded int8 planes, the
// window sum of each group from its channel-sum plane, and per output channel one pass per
// 1-bit at its offset (ci * Hp + ky * dh) * Wp + kx * dw, so a dilated or wide kernel costs its
// 1-bits and nothing more. y_c = eta_c * count + (xi_c * wsum_g(c) + bias_c), exactly the
// integers and float steps of kernels.bconv2d_reference.
class BConvDirect {
 public:
  // bits: (Co, Ci / groups, kh, kw) 0/1; eta, xi, bias: (Co); thr: (Ci) or null.
  BConvDirect(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
              const float* xi, const float* bias, const float* thr, const ConvGeometry& geo,
              int H, int W);
  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo)
  void forward(const float* x, int N, float* y, ThreadPool* pool) const;
  int Ho() const { return Ho_; }
  int Wo() const { return Wo_; }

 private:
  int Co_, Ci_, kh_, kw_, H_, W_, Hp_, Wp_, Ho_, Wo_;
  ConvGeometry geo_;
  std::vector<float> eta_, xi_, bias_, thr_;
  std::vector<int32_t> offsets_;  // per output channel: offsets_[start_[c] .. start_[c+1])
  std::vector<int64_t> start_;
  std::vector<int32_t> taps_;  // every tap's offset, for the window sums
};

}  // namespace sbnn
