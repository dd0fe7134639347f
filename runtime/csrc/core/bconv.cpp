#include "core/bconv.h"

#include "core/floatops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace sbnn {

const KernelTable& kernel_table(Isa isa) {
  switch (isa) {
#ifdef SBNN_HAVE_X86_KERNELS
    case Isa::Avx512: return kernels_avx512();
    case Isa::Avx2: return kernels_avx2();
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
    case Isa::Neon: return kernels_neon();
#endif
    default: return kernels_scalar();
  }
}

namespace {

const KernelTable& table_for(Isa isa) { return kernel_table(isa); }

template <typename T>
std::unique_ptr<T[]> uninit(size_t n) {
  return std::unique_ptr<T[]>(new T[n > 0 ? n : 1]);
}

constexpr int kCoBlock = 16;  // output channels per task

// Read on every call (once per layer run, not per filter), so a test can compare both ways
// in one process.
bool fused_post_enabled() {
  const char* e = std::getenv("SBNN_FUSED_POST");
  return !(e && e[0] == '0');
}

BConvPost offset_post(const BConvPost& p, size_t off) {
  BConvPost q = p;
  if (q.res) q.res += off;
  return q;
}

}  // namespace

ConvGeom make_geom(int Ci, int H, int W, int kh, int kw, int stride, int pad, int vec_bytes,
                   int max_group) {
  // One register tile of the sparse kernel: 8 vectors of 32 bytes (every x86 table; the scalar
  // one runs two tiles of 8 x 16). vec_bytes (64 for AVX-512) only pads the dense patches.
  const int grid_bytes = 8 * 32;
  if (Ci < 1 || H < 1 || W < 1 || kh < 1 || kw < 1)
    throw std::invalid_argument("bconv: channels, spatial size and kernel size must be >= 1");
  if (stride < 1) throw std::invalid_argument("bconv: stride must be >= 1");
  if (pad < 0) throw std::invalid_argument("bconv: padding must be >= 0");
  if (Ci > 32767) throw std::invalid_argument("bconv: at most 32767 input channels");
  ConvGeom g{};
  g.Ci = Ci; g.H = H; g.W = W; g.kh = kh; g.kw = kw; g.stride = stride; g.pad = pad;
  g.Hp = H + 2 * pad;
  g.Wp = W + 2 * pad;
  if (g.Hp < kh || g.Wp < kw)
    throw std::invalid_argument("bconv: kernel " + std::to_string(kh) + "x" + std::to_string(kw) +
                                " larger than the padded input " + std::to_string(g.Hp) + "x" +
                                std::to_string(g.Wp));
  g.Ho = (g.Hp - kh) / stride + 1;
  g.Wo = (g.Wp - kw) / stride + 1;
  g.Hs = (g.Hp + stride - 1) / stride * stride;
  g.Wph = (g.Wp + stride - 1) / stride;
  // Stride 1: neighbouring rows share their zero columns (the right padding of one row is the
  // left padding of the next), pitch W + pad instead of W + 2*pad, unless the output row would
  // then be wider than the pitch (pad > kw - 1).
  if (stride == 1 && pad >= 1 && pad <= kw - 1) g.Wph = W + pad;
  // Images per group: as many as fit grid_bytes, so that a 4x4 or 8x8 map does not leave most
  // of each SIMD vector (and each per-filter epilogue) to junk.
  const long rows_img = g.Hs / stride;
  const int gmax = std::max(1, std::min(64, max_group));
  auto groups = [&](long row_bytes) {
    int G = 1;
    while (G < gmax && (G * rows_img + g.Ho) * row_bytes <= grid_bytes) ++G;
    return G;
  };
  g.G = groups(g.Wph);
  g.wrap = 0;
  // Wrapped rows (no padding columns, pitch W; see ConvGeom::wrap) when the output row fits the
  // input row (2*pad <= kw - 1) and that packs more than 1/8 more images into each 32-byte
  // vector of the grid: 8x8 (2 vectors, not 3), stacked 8x8 (3 images in 7 vectors, not 8) and
  // 4x4 (11 images in 8 vectors, not 8); not 16x16 (8 vectors, not 9: measured slower, the
  // masking of an 8-vector tile costs more than the ninth vector), 14x14 or 32x32.
  if (stride == 1 && pad >= 1 && 2 * pad <= kw - 1) {
    auto vecs = [&](long G, long pitch) { return (((G - 1) * rows_img + g.Ho) * pitch + 31) / 32; };
    const int Gw = groups(W);
    if (8 * Gw * vecs(g.G, g.Wph) > 9 * g.G * vecs(Gw, W)) {
      g.Wph = W;
      g.G = Gw;
      g.wrap = 1;
    }
  }
  g.Hph = g.G * static_cast<int>(rows_img);
  g.L = ((g.G - 1) * static_cast<int>(rows_img) + g.Ho) * g.Wph;
  g.Lr = (g.L + 63) / 64 * 64;
  g.phase_size = static_cast<size_t>(g.Hph) * g.Wph;
  g.plane_elems = static_cast<size_t>(Ci) * stride * stride * g.phase_size;
  // slack: over-reads of the grid's last rows (Lr), of channel_sums' 256-byte blocks and of the
  // vector loads
  g.plane_alloc = g.plane_elems + g.Lr + 256 + 64;
  g.ssum_alloc = static_cast<size_t>(stride) * stride * g.phase_size + g.Lr + 256 + 64;
  if (g.plane_alloc > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument("bconv: input too large for 32-bit offsets");
  g.Cw = (Ci + 63) / 64;
  g.K = kh * kw * g.Cw;
  const int kp_unit = vec_bytes / 8;  // words per vector of the dense GEMM
  g.Kp = (g.K + kp_unit - 1) / kp_unit * kp_unit;
  g.prep_work_bytes = static_cast<size_t>(H) * W + 64;
  return g;
}

BConvLayer::BConvLayer(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
                       const float* xi, const float* bias, const float* thr, int stride, int pad,
                       int H, int W, BConvKind kind, Isa isa)
    : Co_(Co),
      g_(make_geom(Ci, H, W, kh, kw, stride, pad, isa == Isa::Avx512 ? 64 : 32)),
      kind_(kind),
      isa_(isa) {
  if (Co < 1) throw std::invalid_argument("bconv: out_channels must be >= 1");
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("bconv: impl '") + isa_name(isa) +
                                "' is not supported by this CPU");
  kt_ = &table_for(isa);
  const size_t nb = static_cast<size_t>(Co) * Ci * kh * kw;
  bits_.assign(bits, bits + nb);
  for (uint8_t b : bits_)
    if (b > 1) throw std::invalid_argument("bconv: bits must be 0 or 1");
  eta_.assign(eta, eta + Co);
  xi_.assign(xi, xi + Co);
  bias_.assign(bias, bias + Co);
  thr_.assign(Ci, 0.0f);
  if (thr) thr_.assign(thr, thr + Ci);

  const int s = stride, ntaps = kh * kw;
  const ConvGeom& g = g_;
  start_.assign(Co + 1, 0);
  for (int c = 0; c < Co; ++c) {
    int64_t n = 0;
    for (size_t q = 0; q < static_cast<size_t>(Ci) * ntaps; ++q)
      n += bits_[static_cast<size_t>(c) * Ci * ntaps + q];
    start_[c + 1] = start_[c] + n;
  }
  full_.g = g_;
  if (kind_ == BConvKind::Sparse) fill_plan(full_);  // the dense kernel never reads a plan

  if (kind_ == BConvKind::Dense) {
    wpacked_.assign(static_cast<size_t>(Co) * g.Kp, 0);
    std::vector<int32_t> pcb(static_cast<size_t>(Co) * ntaps, 0);  // 1-bits per (c, tap)
    for (int c = 0; c < Co; ++c)
      for (int ci = 0; ci < Ci; ++ci)
        for (int t = 0; t < ntaps; ++t)
          if (bits_[(static_cast<size_t>(c) * Ci + ci) * ntaps + t]) {
            wpacked_[static_cast<size_t>(c) * g.Kp + t * g.Cw + (ci >> 6)] |= uint64_t{1}
                                                                              << (ci & 63);
            ++pcb[static_cast<size_t>(c) * ntaps + t];
          }
    // Pixel classes: which taps fall inside the (unpadded) image.
    auto valid_mask = [](int o, int k, int st, int p, int n) {
      std::vector<bool> m(k);
      for (int d = 0; d < k; ++d) {
        const int i = o * st + d - p;
        m[d] = i >= 0 && i < n;
      }
      return m;
    };
    std::map<std::pair<std::vector<bool>, std::vector<bool>>, int> ids;
    std::vector<std::pair<std::vector<bool>, std::vector<bool>>> classes;
    pix_class_.resize(static_cast<size_t>(g.Ho) * g.Wo);
    nvalid_.resize(pix_class_.size());
    for (int oh = 0; oh < g.Ho; ++oh) {
      const auto rm = valid_mask(oh, kh, s, pad, H);
      for (int ow = 0; ow < g.Wo; ++ow) {
        auto key = std::make_pair(rm, valid_mask(ow, kw, s, pad, W));
        auto it = ids.find(key);
        int id;
        if (it == ids.end()) {
          id = static_cast<int>(classes.size());
          if (id > 65535) throw std::invalid_argument("bconv: too many border classes");
          ids.emplace(key, id);
          classes.push_back(key);
        } else {
          id = it->second;
        }
        const size_t p = static_cast<size_t>(oh) * g.Wo + ow;
        pix_class_[p] = static_cast<uint16_t>(id);
        nvalid_[p] = static_cast<int32_t>(std::count(key.first.begin(), key.first.end(), true) *
                                          std::count(key.second.begin(), key.second.end(), true));
      }
    }
    nclass_ = static_cast<int>(classes.size());
    corr_.assign(static_cast<size_t>(Co) * nclass_, 0);
    for (int c = 0; c < Co; ++c)
      for (int id = 0; id < nclass_; ++id) {
        int32_t sum = 0;
        for (int ky = 0; ky < kh; ++ky)
          for (int kx = 0; kx < kw; ++kx)
            if (classes[id].first[ky] && classes[id].second[kx])
              sum += pcb[static_cast<size_t>(c) * ntaps + ky * kw + kx];
        corr_[static_cast<size_t>(c) * nclass_ + id] = sum;
      }
  }
}

void BConvLayer::fill_plan(SparsePlan& sp) const {
  const ConvGeom& g = sp.g;
  const int s = g.stride, kh = g.kh, kw = g.kw, Ci = g.Ci;
  auto tap_off = [&](int ky, int kx) {
    return static_cast<int32_t>(((ky % s) * s + kx % s) * g.phase_size +
                                static_cast<size_t>(ky / s) * g.Wph + kx / s);
  };
  sp.tap_offsets.clear();
  sp.offsets.clear();
  sp.offsets.reserve(static_cast<size_t>(start_[Co_]));
  sp.seg.clear();
  sp.tap_seg.clear();
  sp.masks.clear();
  if (!g.wrap) {
    for (int ky = 0; ky < kh; ++ky)
      for (int kx = 0; kx < kw; ++kx) sp.tap_offsets.push_back(tap_off(ky, kx));
    // One offset per 1-bit, in (ci, ky, kx) order so that reads walk forward in memory.
    for (int c = 0; c < Co_; ++c)
      for (int ci = 0; ci < Ci; ++ci)
        for (int ky = 0; ky < kh; ++ky)
          for (int kx = 0; kx < kw; ++kx)
            if (bits_[((static_cast<size_t>(c) * Ci + ci) * kh + ky) * kw + kx])
              sp.offsets.push_back(static_cast<int32_t>(ci * s * s * g.phase_size) +
                                   tap_off(ky, kx));
    return;
  }
  // Wrapped grid: the offsets (and taps) of each filter in segments by kx, kx = pad (never
  // wraps) first, then the others in order, each (ci, ky) forward in memory; segment k >= 1
  // is masked by masks[(k-1)*mstride ..]: -1 where column ow + kx - pad lies inside the row.
  std::vector<int> order{g.pad};
  for (int kx = 0; kx < kw; ++kx)
    if (kx != g.pad) order.push_back(kx);
  sp.tap_seg.push_back(0);
  for (int kx : order) {
    for (int ky = 0; ky < kh; ++ky) sp.tap_offsets.push_back(tap_off(ky, kx));
    sp.tap_seg.push_back(static_cast<int32_t>(sp.tap_offsets.size()));
  }
  sp.seg.reserve(static_cast<size_t>(Co_) * (kw + 1));
  for (int c = 0; c < Co_; ++c) {
    const size_t first = sp.offsets.size();
    sp.seg.push_back(0);
    for (int kx : order) {
      for (int ci = 0; ci < Ci; ++ci)
        for (int ky = 0; ky < kh; ++ky)
          if (bits_[((static_cast<size_t>(c) * Ci + ci) * kh + ky) * kw + kx])
            sp.offsets.push_back(static_cast<int32_t>(ci * g.phase_size) + tap_off(ky, kx));
      sp.seg.push_back(static_cast<int32_t>(sp.offsets.size() - first));
    }
  }
  sp.mstride = g.Lr;
  sp.masks.assign(static_cast<size_t>(kw - 1) * sp.mstride, 0);
  for (size_t k = 1; k < order.size(); ++k) {
    const int dx = order[k] - g.pad;
    for (int j = 0; j < sp.mstride; ++j) {
      const int col = j % g.W + dx;
      sp.masks[(k - 1) * sp.mstride + j] = (col >= 0 && col < g.W) ? -1 : 0;
    }
  }
}

namespace {
// The plan for G images per grid, from the full plan (more images per grid, at least 2): the
// two differ only in the size of a phase plane. Every offset is (its phase plane) * phase_size
// + (its place in the plane), and that place, ky/s rows of Wph plus kx/s (under two rows with
// stride 1's shared pitch), is below the full plan's phase size (at least 2 images of Hs/s
// rows of Wph each), so one division per 1-bit finds the plane. The first run of a batch size
// smaller than G_full used to rescan every weight bit instead: 3.1 ms for a 512x512x3x3 layer
// at 5 % on a 4x4 map, now 0.3 ms (its plain run: 0.07 ms; docs/HARDENING.md).
void remap_plan(const SparsePlan& full, SparsePlan& sp) {
  const uint32_t big = static_cast<uint32_t>(full.g.phase_size);
  const uint32_t less = big - static_cast<uint32_t>(sp.g.phase_size);
  auto remap = [&](const std::vector<int32_t>& from, std::vector<int32_t>& to) {
    to.resize(from.size());
    for (size_t i = 0; i < from.size(); ++i) {
      const uint32_t o = static_cast<uint32_t>(from[i]);
      to[i] = static_cast<int32_t>(o - o / big * less);
    }
  };
  remap(full.offsets, sp.offsets);
  remap(full.tap_offsets, sp.tap_offsets);
}

// The window sum of a wrapped grid: per kx segment of the taps, masked as the 1-bits' terms.
void wrap_window_sum(const KernelTable& kt, const SparsePlan& sp, const int16_t* ssum, int Lr,
                     int32_t* ws) {
  const int32_t* ts = sp.tap_seg.data();
  kt.window_sum(ssum, sp.tap_offsets.data(), ts[1] - ts[0], Lr, ws);
  auto tmp = std::unique_ptr<int32_t[]>(new int32_t[Lr > 0 ? Lr : 1]);
  for (size_t k = 1; k + 1 < sp.tap_seg.size(); ++k) {
    kt.window_sum(ssum, sp.tap_offsets.data() + ts[k], ts[k + 1] - ts[k], Lr, tmp.get());
    const int8_t* m = sp.masks.data() + (k - 1) * sp.mstride;
    for (int j = 0; j < Lr; ++j) ws[j] += tmp[j] & static_cast<int32_t>(m[j]);
  }
}

// One filter's counts on a wrapped grid: int8 (1 <= n <= kNarrowMax) or int32 (any n), by the
// table's sparse_accum(8)_wrap, or per segment and merged where a table has none (NEON).
// tmp8 / tmp32: Lr (+64) of scratch.
void wrap_accum(const KernelTable& kt, const SparsePlan& sp, const int8_t* planes,
                const int32_t* of, const int32_t* seg, int Lr, int8_t* acc8, int32_t* acc32,
                int8_t* tmp8, int32_t* tmp32) {
  const int nseg = sp.g.kw;
  if (acc8 && kt.sparse_accum8_wrap) {
    kt.sparse_accum8_wrap(planes, of, seg, nseg, sp.masks.data(), sp.mstride, Lr, acc8);
    return;
  }
  if (!acc8 && kt.sparse_accum_wrap) {
    kt.sparse_accum_wrap(planes, of, seg, nseg, sp.masks.data(), sp.mstride, Lr, acc32);
    return;
  }
  for (int k = 0; k < nseg; ++k) {
    const int n = seg[k + 1] - seg[k];
    if (k > 0 && n == 0) continue;
    const int8_t* m = k > 0 ? sp.masks.data() + static_cast<size_t>(k - 1) * sp.mstride : nullptr;
    if (acc8) {
      int8_t* d = k == 0 ? acc8 : tmp8;
      if (n > 0)
        kt.sparse_accum8(planes, of + seg[k], n, Lr, d);
      else
        std::memset(d, 0, static_cast<size_t>(Lr));
      if (k > 0)
        for (int j = 0; j < Lr; ++j) acc8[j] = static_cast<int8_t>(acc8[j] + (tmp8[j] & m[j]));
    } else {
      kt.sparse_accum(planes, of + seg[k], n, Lr, k == 0 ? acc32 : tmp32);
      if (k > 0)
        for (int j = 0; j < Lr; ++j) acc32[j] += tmp32[j] & static_cast<int32_t>(m[j]);
    }
  }
}

}  // namespace

const SparsePlan& BConvLayer::plan_for(int G) const {
  if (G >= g_.G) return full_;
  std::lock_guard<std::mutex> lk(plans_mu_);
  auto& p = plans_[G];
  if (!p) {
    p.reset(new SparsePlan());
    p->g = make_geom(g_.Ci, g_.H, g_.W, g_.kh, g_.kw, g_.stride, g_.pad,
                     isa_ == Isa::Avx512 ? 64 : 32, G);
    // A wrapped grid keeps its offsets in per-column segments with masks, which the remap does
    // not carry: those plans (and any plan whose layout differs from the full one's) are built.
    if (!full_.g.wrap && !p->g.wrap)
      remap_plan(full_, *p);
    else
      fill_plan(*p);
  }
  return *p;
}

void BConvLayer::run_post(float* y, const float* res, size_t n, const BConvPost& p,
                          int c) const {
  float rp[3];
  if (p.rp_in) {
    rp[0] = p.rp_in[c];
    rp[1] = p.rp_slope[c];
    rp[2] = p.rp_out[c];
  }
  auto fn = kt_->post_plane ? kt_->post_plane : kernels_scalar().post_plane;
  fn(y, res, n, p.clamp, p.lo, p.hi, p.rp_in ? rp : nullptr);
}

void BConvLayer::forward(const float* x, int N, float* y, ThreadPool* pool,
                         const BConvPost& post) const {
  run(x, N, y, nullptr, nullptr, pool, post);
}

void BConvLayer::counts(const float* x, int N, int32_t* cnt, int32_t* ws, ThreadPool* pool) const {
  run(x, N, nullptr, cnt, ws, pool, BConvPost());
}

void BConvLayer::run(const float* x, int N, float* y, int32_t* cnt, int32_t* ws,
                     ThreadPool* pool, const BConvPost& post) const {
  if (N < 0) throw std::invalid_argument("bconv: negative batch");
  if (isa_ == Isa::Ref) {
    run_reference(x, N, y, cnt, ws, post);
    return;
  }
  const ConvGeom& g = g_;
  const size_t in_sz = static_cast<size_t>(g.Ci) * g.H * g.W;
  const size_t P = static_cast<size_t>(g.Ho) * g.Wo;
  const size_t out_sz = static_cast<size_t>(Co_) * P;
  const int T = pool ? pool->size() : 1;
  if (kind_ == BConvKind::Sparse) {
    // Groups of up to G images share one grid. With several threads, whole groups per thread
    // when there are enough of them (evened out so no thread gets a lone extra group), else
    // output channels.
    int G = std::max(1, std::min(g.G, N)), ngroups = (N + G - 1) / G;
    if (T > 1 && ngroups >= T) {
      ngroups = (ngroups + T - 1) / T * T;
      G = (N + ngroups - 1) / ngroups;
      ngroups = (N + G - 1) / G;
    }
    const SparsePlan& sp = plan_for(G);
    auto grp = [&](int k, ThreadPool* inner) {
      const size_t n0 = static_cast<size_t>(k) * G;
      group_sparse(sp, x + n0 * in_sz, std::min(G, N - static_cast<int>(n0)),
                   y ? y + n0 * out_sz : nullptr, cnt ? cnt + n0 * out_sz : nullptr,
                   ws ? ws + n0 * P : nullptr, inner, offset_post(post, n0 * out_sz));
    };
    if (T > 1 && ngroups >= T)
      pool->parallel_for(ngroups, [&](int k) { grp(k, nullptr); });
    else
      for (int k = 0; k < ngroups; ++k) grp(k, pool);
    return;
  }
  auto one = [&](int n, ThreadPool* inner) {
    image_dense(x + n * in_sz, y ? y + n * out_sz : nullptr, cnt ? cnt + n * out_sz : nullptr,
                ws ? ws + n * P : nullptr, inner, offset_post(post, n * out_sz));
  };
  // Whole images per thread when the batch covers the threads, else output channels.
  if (T > 1 && N >= T) {
    pool->parallel_for(N, [&](int n) { one(n, nullptr); });
  } else {
    for (int n = 0; n < N; ++n) one(n, pool);
  }
}

void BConvLayer::group_sparse(const SparsePlan& sp, const float* x, int nimg, float* y,
                              int32_t* cnt, int32_t* ws, ThreadPool* pool,
                              const BConvPost& post) const {
  const ConvGeom& g = sp.g;
  const int P = g.Ho * g.Wo;
  const size_t rstep = static_cast<size_t>(g.Hs / g.stride) * g.Wph;  // grid offset per image
  // A partial group only accumulates the rows it needs, in whole 32-byte vectors (224 rather
  // than 256 bytes at 14x14).
  const int unit = 32;
  const int Lr = (((nimg - 1) * g.Hs / g.stride + g.Ho) * g.Wph + unit - 1) / unit * unit;
  // One allocation for the group's scratch (planes, channel sums, window sums, their float
  // copy, the zero counts of all-zero filters, sparse_prep's work), 64-byte aligned pieces: six
  // allocations a layer were a measurable share of the fixed cost of a small map.
  auto piece = [](size_t bytes) { return (bytes + 63) / 64 * 64; };
  const size_t b_planes = piece(g.plane_alloc), b_ssum = piece(g.ssum_alloc * sizeof(int16_t)),
               b_wsg = piece(static_cast<size_t>(Lr) * sizeof(int32_t)),
               b_wsf = piece(static_cast<size_t>(nimg) * P * sizeof(float)),
               b_zeros = piece(static_cast<size_t>(Lr) + 64),
               b_work = piece(g.prep_work_bytes + 8);
  auto scratch = uninit<uint64_t>((b_planes + b_ssum + b_wsg + b_wsf + b_zeros + b_work) / 8);
  char* sc = reinterpret_cast<char*>(scratch.get());
  int8_t* planes = reinterpret_cast<int8_t*>(sc);
  int16_t* ssum = reinterpret_cast<int16_t*>(sc + b_planes);
  int32_t* wsg = reinterpret_cast<int32_t*>(sc + b_planes + b_ssum);
  float* wsf = reinterpret_cast<float*>(sc + b_planes + b_ssum + b_wsg);
  int8_t* zeros = reinterpret_cast<int8_t*>(sc + b_planes + b_ssum + b_wsg + b_wsf);
  void* work = sc + b_planes + b_ssum + b_wsg + b_wsf + b_zeros;
  std::memset(zeros, 0, static_cast<size_t>(Lr) + 64);
  kt_->sparse_prep(x, nimg, thr_.data(), g, planes, ssum, work);
  if (g.wrap)
    wrap_window_sum(*kt_, sp, ssum, Lr, wsg);
  else
    kt_->window_sum(ssum, sp.tap_offsets.data(), static_cast<int>(sp.tap_offsets.size()), Lr,
                    wsg);
  // The valid outputs' window sums, as floats for the epilogue (a plain row copy the compiler
  // vectorises; the integer copy only when asked for).
  for (int n = 0; n < nimg; ++n)
    for (int oh = 0; oh < g.Ho; ++oh) {
      const int32_t* src = wsg + n * rstep + static_cast<size_t>(oh) * g.Wph;
      const size_t p = static_cast<size_t>(n) * P + static_cast<size_t>(oh) * g.Wo;
      float* dst = wsf + p;
      for (int ow = 0; ow < g.Wo; ++ow) dst[ow] = static_cast<float>(src[ow]);
      if (ws) std::memcpy(ws + p, src, sizeof(int32_t) * static_cast<size_t>(g.Wo));
    }
  const size_t out_img = static_cast<size_t>(Co_) * P;
  const int nblk = (Co_ + kCoBlock - 1) / kCoBlock;
  // The post-ops go into the epilogue's own pass when the table has the fused epilogues
  // (SBNN_FUSED_POST=0 in the environment turns it off, for measurements).
  const bool fuse_post = post.active() && kt_->affine_epilogue_post &&
                         kt_->affine_epilogue8_post && fused_post_enabled();
  // acc, acc8: the block's count grids (acc8 with slack for the epilogue's over-reads)
  auto block_in = [&](int b, int32_t* acc, int8_t* acc8) {
    std::unique_ptr<int32_t[]> tmp32;  // wrapped grids: scratch of wrap_accum's fallback
    std::unique_ptr<int8_t[]> tmp8;
    if (g.wrap && !(kt_->sparse_accum8_wrap && kt_->sparse_accum_wrap)) {
      tmp32 = uninit<int32_t>(Lr);
      tmp8 = uninit<int8_t>(Lr + 64);
    }
    const int c1 = std::min(Co_, (b + 1) * kCoBlock);
    for (int c = b * kCoBlock; c < c1; ++c) {
      const int64_t n = start_[c + 1] - start_[c];
      const int32_t* of = sp.offsets.data() + start_[c];
      // int8 counts unless the filter has more 1-bits than int8 holds; an all-zero filter
      // accumulates nothing and costs only its epilogue (xi * wsum + bias).
      const int8_t* a8 = zeros;
      const int32_t* a32 = nullptr;
      const int32_t* seg = g.wrap ? sp.seg.data() + static_cast<size_t>(c) * (g.kw + 1) : nullptr;
      if (n > kNarrowMax) {
        if (seg)
          wrap_accum(*kt_, sp, planes, of, seg, Lr, nullptr, acc, nullptr, tmp32.get());
        else
          kt_->sparse_accum(planes, of, static_cast<int>(n), Lr, acc);
        a32 = acc;
      } else if (n > 0) {
        if (seg)
          wrap_accum(*kt_, sp, planes, of, seg, Lr, acc8, nullptr, tmp8.get(), nullptr);
        else
          kt_->sparse_accum8(planes, of, static_cast<int>(n), Lr, acc8);
        a8 = acc8;
      }
      for (int im = 0; im < nimg; ++im) {
        const size_t o = im * out_img + static_cast<size_t>(c) * P;
        const float* wi = wsf + static_cast<size_t>(im) * P;
        if (y && fuse_post) {  // the post-ops inside the epilogue's pass
          const float* r = post.res ? post.res + o : nullptr;
          float rp[3];
          const float* rpc = post.rprelu(c, rp);
          if (a32)
            kt_->affine_epilogue_post(a32 + im * rstep, g.Ho, g.Wo, g.Wph, wi, eta_[c], xi_[c],
                                      bias_[c], y + o, r, post.clamp, post.lo, post.hi, rpc);
          else
            kt_->affine_epilogue8_post(a8 + im * rstep, g.Ho, g.Wo, g.Wph, wi, eta_[c], xi_[c],
                                       bias_[c], y + o, r, post.clamp, post.lo, post.hi, rpc);
        } else if (y) {
          if (a32)
            kt_->affine_epilogue(a32 + im * rstep, g.Ho, g.Wo, g.Wph, wi, eta_[c], xi_[c],
                                 bias_[c], y + o);
          else
            kt_->affine_epilogue8(a8 + im * rstep, g.Ho, g.Wo, g.Wph, wi, eta_[c], xi_[c],
                                  bias_[c], y + o);
          if (post.active()) run_post(y + o, post.res ? post.res + o : nullptr, P, post, c);
        }
        if (cnt)
          for (int oh = 0; oh < g.Ho; ++oh)
            for (int ow = 0; ow < g.Wo; ++ow) {
              const size_t j = im * rstep + static_cast<size_t>(oh) * g.Wph + ow;
              cnt[o + oh * g.Wo + ow] = a32 ? a32[j] : a8[j];
            }
      }
    }
  };
  // One pair of count grids per task when the blocks run on the pool, one for all of them
  // otherwise (a 512-channel layer allocated 64 of them a call).
  if (pool && pool->size() > 1) {
    pool->parallel_for(nblk, [&](int b) {
      auto acc = uninit<int32_t>(Lr);
      auto acc8 = uninit<int8_t>(Lr + 64);
      block_in(b, acc.get(), acc8.get());
    });
  } else {
    auto acc = uninit<int32_t>(Lr);
    auto acc8 = uninit<int8_t>(Lr + 64);
    for (int b = 0; b < nblk; ++b) block_in(b, acc.get(), acc8.get());
  }
}

void BConvLayer::image_dense(const float* x, float* y, int32_t* cnt, int32_t* ws,
                             ThreadPool* pool, const BConvPost& post) const {
  const ConvGeom& g = g_;
  const int P = g.Ho * g.Wo;
  auto plane = uninit<uint64_t>(static_cast<size_t>(g.Hp) * g.Wp * g.Cw);
  auto patches = uninit<uint64_t>(static_cast<size_t>(P) * g.Kp);
  auto ppop = uninit<int32_t>(P);
  auto wsf = uninit<float>(P);
  kt_->dense_pack(x, thr_.data(), g, plane.get());
  kt_->dense_im2col(plane.get(), g, patches.get(), ppop.get());
  // Window sum of +-1 over the valid taps: 2 * (number of +1) - Ci * (valid taps).
  for (int p = 0; p < P; ++p) {
    const int32_t v = 2 * ppop[p] - g.Ci * nvalid_[p];
    wsf[p] = static_cast<float>(v);
    if (ws) ws[p] = v;
  }
  const int nblk = (Co_ + kCoBlock - 1) / kCoBlock;
  auto block = [&](int b) {
    const int c0 = b * kCoBlock, c1 = std::min(Co_, c0 + kCoBlock);
    auto pc = uninit<int32_t>(static_cast<size_t>(c1 - c0) * P);
    kt_->dense_gemm(patches.get(), P, wpacked_.data() + static_cast<size_t>(c0) * g.Kp, c1 - c0,
                    g.Kp, pc.get());
    for (int c = c0; c < c1; ++c) {
      const int32_t* pcc = pc.get() + static_cast<size_t>(c - c0) * P;
      const int32_t* corr = corr_.data() + static_cast<size_t>(c) * nclass_;
      if (y) {
        const size_t o = static_cast<size_t>(c) * P;
        kt_->dense_epilogue(pcc, P, corr, pix_class_.data(), wsf.get(), eta_[c], xi_[c],
                            bias_[c], y + o);
        if (post.active()) run_post(y + o, post.res ? post.res + o : nullptr, P, post, c);
      }
      if (cnt)
        for (int p = 0; p < P; ++p)
          cnt[static_cast<size_t>(c) * P + p] = 2 * pcc[p] - corr[pix_class_[p]];
    }
  };
  if (pool && pool->size() > 1)
    pool->parallel_for(nblk, block);
  else
    for (int b = 0; b < nblk; ++b) block(b);
}

// Straight from the definition: no packing, no phases, no tricks.
void BConvLayer::run_reference(const float* x, int N, float* y, int32_t* cnt, int32_t* ws,
                               const BConvPost& post) const {
  const ConvGeom& g = g_;
  const int kh = g.kh, kw = g.kw;
  const size_t P = static_cast<size_t>(g.Ho) * g.Wo;
  std::vector<int8_t> sx(static_cast<size_t>(g.Ci) * g.H * g.W);
  std::vector<int32_t> wsum(P), c_out(P);
  for (int n = 0; n < N; ++n) {
    const float* xn = x + static_cast<size_t>(n) * sx.size();
    for (int ci = 0; ci < g.Ci; ++ci)
      for (int i = 0; i < g.H * g.W; ++i) {
        const size_t q = static_cast<size_t>(ci) * g.H * g.W + i;
        sx[q] = xn[q] >= thr_[ci] ? 1 : -1;
      }
    auto at = [&](int ci, int h, int w) -> int {
      if (h < 0 || h >= g.H || w < 0 || w >= g.W) return 0;
      return sx[(static_cast<size_t>(ci) * g.H + h) * g.W + w];
    };
    for (int oh = 0; oh < g.Ho; ++oh)
      for (int ow = 0; ow < g.Wo; ++ow) {
        int32_t sacc = 0;
        for (int ci = 0; ci < g.Ci; ++ci)
          for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx)
              sacc += at(ci, oh * g.stride + ky - g.pad, ow * g.stride + kx - g.pad);
        wsum[oh * g.Wo + ow] = sacc;
      }
    if (ws) std::copy(wsum.begin(), wsum.end(), ws + n * P);
    for (int c = 0; c < Co_; ++c) {
      for (int oh = 0; oh < g.Ho; ++oh)
        for (int ow = 0; ow < g.Wo; ++ow) {
          int32_t acc = 0;
          for (int ci = 0; ci < g.Ci; ++ci)
            for (int ky = 0; ky < kh; ++ky)
              for (int kx = 0; kx < kw; ++kx)
                if (bits_[((static_cast<size_t>(c) * g.Ci + ci) * kh + ky) * kw + kx])
                  acc += at(ci, oh * g.stride + ky - g.pad, ow * g.stride + kx - g.pad);
          c_out[oh * g.Wo + ow] = acc;
        }
      const size_t base = (static_cast<size_t>(n) * Co_ + c) * P;
      for (size_t p = 0; p < P; ++p) {
        if (cnt) cnt[base + p] = c_out[p];
        if (y) {
          float v = eta_[c] * static_cast<float>(c_out[p]) +
                    (xi_[c] * static_cast<float>(wsum[p]) + bias_[c]);
          if (post.res) v += post.res[base + p];
          if (post.clamp) v = std::min(std::max(v, post.lo), post.hi);
          if (post.rp_in) {
            const float u = v - post.rp_in[c];
            v = (u >= 0.0f ? u : post.rp_slope[c] * u) + post.rp_out[c];
          }
          y[base + p] = v;
        }
      }
    }
  }
}

BConvDirect::BConvDirect(const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
                         const float* xi, const float* bias, const float* thr,
                         const ConvGeometry& geo, int H, int W)
    : Co_(Co), Ci_(Ci), kh_(kh), kw_(kw), H_(H), W_(W), geo_(geo) {
  if (Co < 1 || Ci < 1 || kh < 1 || kw < 1 || H < 1 || W < 1)
    throw std::invalid_argument("bconv: channels, spatial size and kernel size must be >= 1");
  if (geo.sh < 1 || geo.sw < 1 || geo.dh < 1 || geo.dw < 1 || geo.groups < 1 ||
      std::min({geo.pt, geo.pl, geo.pb, geo.pr}) < 0)
    throw std::invalid_argument("bconv: stride, dilation, groups >= 1 and padding >= 0");
  if (Ci % geo.groups || Co % geo.groups)
    throw std::invalid_argument("bconv: channels do not split into the groups");
  Hp_ = H + geo.pt + geo.pb;
  Wp_ = W + geo.pl + geo.pr;
  const int ekh = (kh - 1) * geo.dh + 1, ekw = (kw - 1) * geo.dw + 1;
  if (Hp_ < ekh || Wp_ < ekw)
    throw std::invalid_argument("bconv: kernel larger than the padded input");
  if (static_cast<int64_t>(Ci) * Hp_ * Wp_ > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("bconv: input too large for 32-bit offsets");
  Ho_ = (Hp_ - ekh) / geo.sh + 1;
  Wo_ = (Wp_ - ekw) / geo.sw + 1;
  eta_.assign(eta, eta + Co);
  xi_.assign(xi, xi + Co);
  bias_.assign(bias, bias + Co);
  thr_.assign(Ci, 0.0f);
  if (thr) thr_.assign(thr, thr + Ci);
  const int cig = Ci / geo.groups;
  for (int ky = 0; ky < kh; ++ky)
    for (int kx = 0; kx < kw; ++kx) taps_.push_back(ky * geo.dh * Wp_ + kx * geo.dw);
  start_.assign(Co + 1, 0);
  for (int c = 0; c < Co; ++c) {
    for (int ci = 0; ci < cig; ++ci)
      for (int t = 0; t < kh * kw; ++t) {
        const uint8_t b = bits[(static_cast<size_t>(c) * cig + ci) * kh * kw + t];
        if (b > 1) throw std::invalid_argument("bconv: bits must be 0 or 1");
        if (b) offsets_.push_back(ci * Hp_ * Wp_ + taps_[t]);
      }
    start_[c + 1] = static_cast<int64_t>(offsets_.size());
  }
}

void BConvDirect::forward(const float* x, int N, float* y, ThreadPool* pool) const {
  if (N < 0) throw std::invalid_argument("bconv: negative batch");
  const int G = geo_.groups, cig = Ci_ / G, cog = Co_ / G, sh = geo_.sh, sw = geo_.sw;
  const size_t plane = static_cast<size_t>(Hp_) * Wp_, P = static_cast<size_t>(Ho_) * Wo_;
  std::vector<int8_t> xp(static_cast<size_t>(Ci_) * plane);
  std::vector<int32_t> csum(plane), ws(static_cast<size_t>(G) * P);
  for (int n = 0; n < N; ++n) {
    const float* xn = x + static_cast<size_t>(n) * Ci_ * H_ * W_;
    float* yn = y + static_cast<size_t>(n) * Co_ * P;
    // +-1 planes (sign(0) = +1 against thr), zero in the padding
    std::fill(xp.begin(), xp.end(), int8_t{0});
    for (int ci = 0; ci < Ci_; ++ci)
      for (int h = 0; h < H_; ++h) {
        const float* r = xn + (static_cast<size_t>(ci) * H_ + h) * W_;
        int8_t* d = xp.data() + ci * plane + static_cast<size_t>(h + geo_.pt) * Wp_ + geo_.pl;
        for (int w = 0; w < W_; ++w) d[w] = r[w] >= thr_[ci] ? 1 : -1;
      }
    // each group's window sum: its channel-sum plane, summed over the taps
    for (int g = 0; g < G; ++g) {
      std::fill(csum.begin(), csum.end(), 0);
      for (int ci = g * cig; ci < (g + 1) * cig; ++ci)
        for (size_t i = 0; i < plane; ++i) csum[i] += xp[ci * plane + i];
      int32_t* wg = ws.data() + g * P;
      std::fill(wg, wg + P, 0);
      for (int32_t t : taps_)
        for (int oh = 0; oh < Ho_; ++oh)
          for (int ow = 0; ow < Wo_; ++ow)
            wg[oh * Wo_ + ow] += csum[static_cast<size_t>(oh) * sh * Wp_ + ow * sw + t];
    }
    auto chan = [&](int c) {
      std::vector<int32_t> acc(P, 0);
      const int g = c / cog;
      const int8_t* base = xp.data() + static_cast<size_t>(g) * cig * plane;
      for (int64_t q = start_[c]; q < start_[c + 1]; ++q) {
        const int8_t* src = base + offsets_[q];
        for (int oh = 0; oh < Ho_; ++oh) {
          const int8_t* r = src + static_cast<size_t>(oh) * sh * Wp_;
          int32_t* a = acc.data() + oh * Wo_;
          if (sw == 1)
            for (int ow = 0; ow < Wo_; ++ow) a[ow] += r[ow];
          else
            for (int ow = 0; ow < Wo_; ++ow) a[ow] += r[ow * sw];
        }
      }
      const int32_t* wg = ws.data() + g * P;
      float* yc = yn + c * P;
      for (size_t p = 0; p < P; ++p)
        yc[p] = eta_[c] * static_cast<float>(acc[p]) +
                (xi_[c] * static_cast<float>(wg[p]) + bias_[c]);
    };
    if (pool && pool->size() > 1 && Co_ > 1)
      pool->parallel_for(Co_, chan);
    else
      for (int c = 0; c < Co_; ++c) chan(c);
  }
}

}  // namespace sbnn
