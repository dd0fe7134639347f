// Thin nanobind layer: takes arrays through DLPack (numpy, CPU torch), checks shapes, calls
// csrc/core. Arrays are requested C-contiguous: nanobind copies non-contiguous inputs (and casts
// other float/int dtypes) before they reach the kernels, so strides are never misread.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/bconv.h"
#include "core/bitpack.h"
#include "core/engine.h"
#include "core/floatops.h"
#include "core/isa.h"

namespace nb = nanobind;
using namespace nb::literals;

using U8Vec = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FArr = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using U8Arr = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using OptF = std::optional<FArr>;
using I8Arr = nb::ndarray<const int8_t, nb::c_contig, nb::device::cpu>;

namespace {

template <typename T>
nb::ndarray<nb::numpy, T> new_array(const std::vector<size_t>& shape, T** data,
                                    bool zero = true) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  // zero = false where the kernel writes every element: zeroing a large output costs as much
  // as a sparse layer's epilogue.
  T* buf = zero ? new T[n > 0 ? n : 1]() : new T[n > 0 ? n : 1];
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  *data = buf;
  return nb::ndarray<nb::numpy, T>(buf, shape.size(), shape.data(), owner);
}

std::string shape_str(size_t ndim, const size_t* shape) {
  std::string s = "(";
  for (size_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (ndim == 1 ? ",)" : ")");
}

template <typename A>
std::string shape_of(const A& a) {
  std::vector<size_t> sh(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) sh[i] = a.shape(i);
  return shape_str(sh.size(), sh.data());
}

template <typename A>
void expect_ndim(const A& a, size_t nd, const char* what, const char* layout) {
  if (a.ndim() != nd)
    throw std::invalid_argument(std::string(what) + ": expected a " + std::to_string(nd) +
                                "-D array " + layout + ", got shape " + shape_of(a));
}

// A 1-D float array of length n (or null when absent and allowed).
const float* vec_or_null(const OptF& a, size_t n, const char* what, bool required) {
  if (!a) {
    if (required) throw std::invalid_argument(std::string(what) + " is required");
    return nullptr;
  }
  if (a->ndim() != 1 || a->shape(0) != n)
    throw std::invalid_argument(std::string(what) + ": expected shape (" + std::to_string(n) +
                                ",), got " + shape_of(*a));
  return a->data();
}

sbnn::BConvKind parse_kind(const std::string& k) {
  if (k == "sparse") return sbnn::BConvKind::Sparse;
  if (k == "dense") return sbnn::BConvKind::Dense;
  throw std::invalid_argument("kind must be 'sparse', 'dense' or 'tiny', got '" + k + "'");
}

int as_int(size_t v) { return static_cast<int>(v); }

// The geometry of an int8 conv on a (Ci, H, W) input: stride [sh, sw], pads [top, left, bottom,
// right], dilation [dh, dw]; checked here so the kernel never sees a bad one.
sbnn::QGeom qgeom(const I8Arr& w, int Ci, int H, int W, const std::vector<int>& stride,
                  const std::vector<int>& pads, const std::vector<int>& dil, int groups) {
  expect_ndim(w, 4, "qconv2d weight", "(Co, Ci / groups, kh, kw)");
  if (stride.size() != 2 || pads.size() != 4 || dil.size() != 2)
    throw std::invalid_argument("qconv2d: stride and dilation take 2 values, pads 4");
  sbnn::QGeom g;
  g.Ci = Ci, g.H = H, g.W = W, g.Co = as_int(w.shape(0)), g.kh = as_int(w.shape(2));
  g.kw = as_int(w.shape(3)), g.sh = stride[0], g.sw = stride[1], g.pt = pads[0];
  g.pl = pads[1], g.pb = pads[2], g.pr = pads[3], g.dh = dil[0], g.dw = dil[1], g.groups = groups;
  const long long taps = static_cast<long long>(w.shape(1)) * g.kh * g.kw;
  if (groups < 1 || Ci % groups || g.Co % groups || as_int(w.shape(1)) * groups != Ci ||
      g.Co < 1 || g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 ||
      g.pt < 0 || g.pl < 0 || g.pb < 0 || g.pr < 0 || taps > (2147483647LL / (255 * 127)))
    throw std::invalid_argument("qconv2d: weight " + shape_of(w) + " with " +
                                std::to_string(groups) + " group(s) does not fit " +
                                std::to_string(Ci) + " input channels, or a bad geometry");
  const int ekh = (g.kh - 1) * g.dh + 1, ekw = (g.kw - 1) * g.dw + 1;
  g.Ho = (H + g.pt + g.pb - ekh) / g.sh + 1;
  g.Wo = (W + g.pl + g.pr - ekw) / g.sw + 1;
  if (H + g.pt + g.pb < ekh || W + g.pl + g.pr < ekw)
    throw std::invalid_argument("qconv2d: the kernel does not fit the padded input");
  return g;
}

// A prepared binary conv bound to one input size, with its own thread pool.
class PyBConv {
 public:
  PyBConv(U8Arr bits, FArr eta, FArr xi, FArr bias, int H, int W, int stride, int padding,
          OptF thr, const std::string& kind, const std::string& impl, int num_threads)
      : pool_(num_threads) {
    expect_ndim(bits, 4, "bits", "(Co, Ci, kh, kw)");
    const int Co = as_int(bits.shape(0)), Ci = as_int(bits.shape(1));
    vec_or_null(eta, Co, "eta", true);
    vec_or_null(xi, Co, "xi", true);
    vec_or_null(bias, Co, "bias", true);
    layer_ = std::make_unique<sbnn::BConvLayer>(
        bits.data(), Co, Ci, as_int(bits.shape(2)), as_int(bits.shape(3)), eta.data(), xi.data(),
        bias.data(), vec_or_null(thr, Ci, "thr", false), stride, padding, H, W,
        parse_kind(kind == "tiny" ? "sparse" : kind), sbnn::parse_isa(impl));
    if (kind == "tiny")  // the tiny-map kernel (bconv_tiny.h); the sparse layer keeps the geometry
      tiny_ = std::make_unique<sbnn::BConvTiny>(
          bits.data(), Co, Ci, as_int(bits.shape(2)), as_int(bits.shape(3)), eta.data(),
          xi.data(), bias.data(), vec_or_null(thr, Ci, "thr", false), stride, padding, H, W,
          sbnn::parse_isa(impl));
  }

  void check_x(const FArr& x) const {
    const sbnn::ConvGeom& g = layer_->geom();
    expect_ndim(x, 4, "x", "(N, Ci, H, W)");
    if (as_int(x.shape(1)) != g.Ci || as_int(x.shape(2)) != g.H || as_int(x.shape(3)) != g.W)
      throw std::invalid_argument("x: expected shape (N, " + std::to_string(g.Ci) + ", " +
                                  std::to_string(g.H) + ", " + std::to_string(g.W) + "), got " +
                                  shape_of(x));
  }

  nb::ndarray<nb::numpy, float> forward(FArr x) {
    check_x(x);
    const sbnn::ConvGeom& g = layer_->geom();
    const size_t N = x.shape(0);
    float* y;
    auto out = new_array<float>({N, static_cast<size_t>(layer_->out_channels()),
                                 static_cast<size_t>(g.Ho), static_cast<size_t>(g.Wo)},
                                &y, false);
    {
      nb::gil_scoped_release rel;
      if (tiny_)
        tiny_->forward(x.data(), as_int(N), y, &pool_);
      else
        layer_->forward(x.data(), as_int(N), y, &pool_);
    }
    return out;
  }

  nb::tuple counts(FArr x) {
    check_x(x);
    const sbnn::ConvGeom& g = layer_->geom();
    const size_t N = x.shape(0), Ho = g.Ho, Wo = g.Wo;
    int32_t *c, *w;
    auto cnt =
        new_array<int32_t>({N, static_cast<size_t>(layer_->out_channels()), Ho, Wo}, &c, false);
    auto ws = new_array<int32_t>({N, Ho, Wo}, &w, false);
    {
      nb::gil_scoped_release rel;
      if (tiny_)
        tiny_->counts(x.data(), as_int(N), c, w, &pool_);
      else
        layer_->counts(x.data(), as_int(N), c, w, &pool_);
    }
    return nb::make_tuple(cnt, ws);
  }

  std::string impl() const { return sbnn::isa_name(layer_->isa()); }
  int64_t ones() const { return layer_->ones(); }
  int images_per_group() const { return layer_->geom().G; }
  std::vector<int> out_shape() const {
    const sbnn::ConvGeom& g = layer_->geom();
    return {layer_->out_channels(), g.Ho, g.Wo};
  }

 private:
  sbnn::ThreadPool pool_;
  std::unique_ptr<sbnn::BConvLayer> layer_;
  std::unique_ptr<sbnn::BConvTiny> tiny_;  // kind "tiny"
};

PyBConv make_bconv_for(const FArr& x, U8Arr bits, FArr eta, FArr xi, FArr bias, int stride,
                       int padding, OptF thr, const std::string& kind, const std::string& impl,
                       int num_threads) {
  expect_ndim(x, 4, "x", "(N, Ci, H, W)");
  return PyBConv(bits, eta, xi, bias, as_int(x.shape(2)), as_int(x.shape(3)), stride, padding, thr,
                 kind, impl, num_threads);
}

sbnn::ConvGeometry to_geometry(const std::vector<int>& g) {
  if (g.size() != 9)
    throw std::invalid_argument("conv geometry: needs 9 numbers (sh, sw, pt, pl, pb, pr, dh, "
                                "dw, groups)");
  return sbnn::ConvGeometry{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
}

// Float conv2d in one call (the module functions conv2d and conv2d_ex): checks x against the
// weight and groups, prepares the layer for x's size and runs it. w_layout and expects word the
// error messages of the calling function.
nb::ndarray<nb::numpy, float> float_conv2d(const FArr& x, const FArr& w, const OptF& bias,
                                           const sbnn::ConvGeometry& g, int num_threads,
                                           const std::string& impl, const char* w_layout,
                                           const char* expects) {
  expect_ndim(x, 4, "x", "(N, Ci, H, W)");
  expect_ndim(w, 4, "weight", w_layout);
  if (static_cast<int64_t>(w.shape(1)) * g.groups != static_cast<int64_t>(x.shape(1)))
    throw std::invalid_argument("conv2d: x has " + std::to_string(x.shape(1)) + " channels, " +
                                expects + " " + std::to_string(w.shape(1) * g.groups));
  const int Co = as_int(w.shape(0));
  sbnn::FloatConv conv(w.data(), Co, as_int(x.shape(1)), as_int(w.shape(2)), as_int(w.shape(3)),
                       vec_or_null(bias, Co, "bias", false), g, as_int(x.shape(2)),
                       as_int(x.shape(3)), sbnn::parse_isa(impl));
  float* y;
  auto out = new_array<float>({x.shape(0), static_cast<size_t>(Co),
                               static_cast<size_t>(conv.Ho()), static_cast<size_t>(conv.Wo())},
                              &y);
  sbnn::ThreadPool pool(num_threads);
  {
    nb::gil_scoped_release rel;
    conv.forward(x.data(), as_int(x.shape(0)), y, &pool);
  }
  return out;
}

// ------------------------------------------------------------------ engine binding
class PyEngine {
 public:
  explicit PyEngine(int num_threads) : eng_(num_threads) {}

  int input(int C, int H, int W) { return eng_.input(C, H, W); }

  int conv2d(int t, FArr w, OptF bias, int stride, int padding) {
    expect_ndim(w, 4, "conv2d weight", "(Co, Ci, kh, kw)");
    const int Co = as_int(w.shape(0));
    return eng_.conv2d(t, w.data(), Co, as_int(w.shape(1)), as_int(w.shape(2)),
                       as_int(w.shape(3)), vec_or_null(bias, Co, "conv2d bias", false), stride,
                       padding);
  }

  int sbconv2d(int t, U8Arr bits, FArr eta, FArr xi, FArr bias, int stride, int padding, OptF thr,
               bool sparse, const std::string& impl) {
    expect_ndim(bits, 4, "sbconv2d bits", "(Co, Ci, kh, kw)");
    const int Co = as_int(bits.shape(0)), Ci = as_int(bits.shape(1));
    return eng_.sbconv2d(t, bits.data(), Co, Ci, as_int(bits.shape(2)), as_int(bits.shape(3)),
                         vec_or_null(eta, Co, "sbconv2d eta", true),
                         vec_or_null(xi, Co, "sbconv2d xi", true),
                         vec_or_null(bias, Co, "sbconv2d bias", true), stride, padding,
                         vec_or_null(thr, Ci, "sbconv2d thr", false), sparse,
                         sbnn::parse_isa(impl));
  }

  // geom: sbnn_runtime.ops.conv_geometry's 9 numbers
  int conv2d_ex(int t, FArr w, OptF bias, const std::vector<int>& geom) {
    expect_ndim(w, 4, "conv2d weight", "(Co, Ci / groups, kh, kw)");
    const int Co = as_int(w.shape(0));
    return eng_.conv2d_ex(t, w.data(), Co, as_int(w.shape(1)), as_int(w.shape(2)),
                          as_int(w.shape(3)), vec_or_null(bias, Co, "conv2d bias", false),
                          to_geometry(geom));
  }

  int sbconv2d_ex(int t, U8Arr bits, FArr eta, FArr xi, FArr bias, OptF thr,
                  const std::vector<int>& geom) {
    expect_ndim(bits, 4, "sbconv2d bits", "(Co, Ci / groups, kh, kw)");
    const int Co = as_int(bits.shape(0));
    const sbnn::ConvGeometry g = to_geometry(geom);
    return eng_.sbconv2d_ex(t, bits.data(), Co, as_int(bits.shape(1)), as_int(bits.shape(2)),
                            as_int(bits.shape(3)), vec_or_null(eta, Co, "sbconv2d eta", true),
                            vec_or_null(xi, Co, "sbconv2d xi", true),
                            vec_or_null(bias, Co, "sbconv2d bias", true),
                            vec_or_null(thr, as_int(bits.shape(1)) * g.groups, "sbconv2d thr",
                                        false),
                            g);
  }

  int affine(int t, FArr scale, FArr shift) {
    const int C = eng_.shape(t).C;
    return eng_.affine(t, vec_or_null(scale, C, "affine scale", true),
                       vec_or_null(shift, C, "affine shift", true), C);
  }

  int rprelu(int t, FArr s1, FArr slope, FArr s2) {
    const int C = eng_.shape(t).C;
    return eng_.rprelu(t, vec_or_null(s1, C, "rprelu shift_in", true),
                       vec_or_null(slope, C, "rprelu slope", true),
                       vec_or_null(s2, C, "rprelu shift_out", true), C);
  }

  // int8 layers: scale = float32(x_scale * w_scale_c) per output channel
  int qconv2d(int t, I8Arr w, FArr scale, OptF bias, float x_scale, int x_zero,
              std::vector<int> stride, std::vector<int> pads, std::vector<int> dilation,
              int groups, const std::string& impl) {
    const sbnn::TensorShape& s = eng_.shape(t);
    sbnn::QGeom g = qgeom(w, s.C, s.H, s.W, stride, pads, dilation, groups);
    return eng_.qconv2d(t, w.data(), vec_or_null(scale, g.Co, "qconv2d scale", true),
                        vec_or_null(bias, g.Co, "qconv2d bias", false), x_scale, x_zero, g,
                        sbnn::parse_isa(impl));
  }
  int qlinear(int t, I8Arr w, FArr scale, OptF bias, float x_scale, int x_zero,
              const std::string& impl) {
    expect_ndim(w, 2, "qlinear weight", "(O, I)");
    const int O = as_int(w.shape(0));
    return eng_.qlinear(t, w.data(), O, as_int(w.shape(1)),
                        vec_or_null(scale, O, "qlinear scale", true),
                        vec_or_null(bias, O, "qlinear bias", false), x_scale, x_zero,
                        sbnn::parse_isa(impl));
  }

  int linear(int t, FArr w, OptF bias) {
    expect_ndim(w, 2, "linear weight", "(O, I)");
    const int O = as_int(w.shape(0));
    return eng_.linear(t, w.data(), O, as_int(w.shape(1)),
                       vec_or_null(bias, O, "linear bias", false));
  }

  std::vector<size_t> out_dims(size_t N) const {
    const sbnn::TensorShape& s = eng_.output_shape();
    if (s.flat) return {N, static_cast<size_t>(s.C)};
    return {N, static_cast<size_t>(s.C), static_cast<size_t>(s.H), static_cast<size_t>(s.W)};
  }

  nb::object run(FArr x, bool profile) {
    const sbnn::TensorShape& in = eng_.input_shape();
    expect_ndim(x, 4, "Engine.run x", "(N, C, H, W)");
    if (as_int(x.shape(1)) != in.C || as_int(x.shape(2)) != in.H || as_int(x.shape(3)) != in.W)
      throw std::invalid_argument("Engine.run: expected x of shape (N, " + std::to_string(in.C) +
                                  ", " + std::to_string(in.H) + ", " + std::to_string(in.W) +
                                  "), got " + shape_of(x));
    float* y;
    auto out = new_array<float>(out_dims(x.shape(0)), &y);
    // Per-call timings: other Python threads may run this engine while the GIL is released.
    sbnn::Engine::LayerTimes times;
    {
      nb::gil_scoped_release rel;
      eng_.run(x.data(), as_int(x.shape(0)), y, profile ? &times : nullptr);
    }
    if (!profile) return nb::cast(out);
    last_times_ = times;  // GIL held again: the last profiled run's, for layer_times()
    return nb::make_tuple(out, times);
  }

  sbnn::Engine& eng() { return eng_; }
  const sbnn::Engine::LayerTimes& last_times() const { return last_times_; }

 private:
  sbnn::Engine eng_;
  sbnn::Engine::LayerTimes last_times_;
};

std::vector<int> shape_vec(const sbnn::TensorShape& s) {
  if (s.flat) return {s.C};
  return {s.C, s.H, s.W};
}

}  // namespace

static nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>> pack_bits(U8Vec bits) {
  const size_t n = bits.shape(0);
  const size_t nbytes = (n + 7) / 8;
  auto* out = new uint8_t[nbytes > 0 ? nbytes : 1];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
  sbnn::pack_bits_u8(bits.data(), n, out);
  return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(out, {nbytes}, owner);
}

NB_MODULE(_core, m) {
  m.doc() = "sbnn native core (framework-free C++ kernels)";
  m.def("pack_bits", &pack_bits, "bits"_a,
        "Pack a 1-D uint8 array of 0/1 values into bytes, little-endian bit order.");

  m.def(
      "cpu_features",
      [] {
        const sbnn::CpuFeatures f = sbnn::cpu_features();
        nb::dict d;
        d["popcnt"] = f.popcnt;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512vpopcntdq"] = f.avx512vpopcntdq;
        d["neon"] = f.neon;
        return d;
      },
      "CPU features seen by the runtime dispatch.");
  m.def("available_impls", &sbnn::available_isas,
        "Kernel implementations this CPU can run: ref, scalar, avx2 / avx512 (x86), neon "
        "(aarch64).");
  m.def(
      "default_impl", [] { return std::string(sbnn::isa_name(sbnn::default_isa())); },
      "What impl='auto' picks (the best ISA, or the SBNN_ISA environment variable).");

  m.def(
      "bconv_geometry",
      [](int Ci, int H, int W, int kh, int kw, int stride, int pad, int vec_bytes,
         int max_group) {
        const sbnn::ConvGeom g =
            sbnn::make_geom(Ci, H, W, kh, kw, stride, pad, vec_bytes, max_group);
        nb::dict d;
#define SBNN_GEOM_FIELD(f) d[#f] = static_cast<int64_t>(g.f)
        SBNN_GEOM_FIELD(Ci); SBNN_GEOM_FIELD(H); SBNN_GEOM_FIELD(W); SBNN_GEOM_FIELD(kh);
        SBNN_GEOM_FIELD(kw); SBNN_GEOM_FIELD(stride); SBNN_GEOM_FIELD(pad);
        SBNN_GEOM_FIELD(Hp); SBNN_GEOM_FIELD(Wp); SBNN_GEOM_FIELD(Ho); SBNN_GEOM_FIELD(Wo);
        SBNN_GEOM_FIELD(Hs); SBNN_GEOM_FIELD(Wph); SBNN_GEOM_FIELD(G); SBNN_GEOM_FIELD(Hph);
        SBNN_GEOM_FIELD(L); SBNN_GEOM_FIELD(Lr); SBNN_GEOM_FIELD(phase_size);
        SBNN_GEOM_FIELD(plane_elems); SBNN_GEOM_FIELD(plane_alloc); SBNN_GEOM_FIELD(ssum_alloc);
        SBNN_GEOM_FIELD(Cw); SBNN_GEOM_FIELD(K); SBNN_GEOM_FIELD(Kp);
        SBNN_GEOM_FIELD(prep_work_bytes); SBNN_GEOM_FIELD(wrap);
#undef SBNN_GEOM_FIELD
        return d;
      },
      "Ci"_a, "H"_a, "W"_a, "kh"_a, "kw"_a, "stride"_a, "pad"_a, "vec_bytes"_a = 32,
      "max_group"_a = 64,
      "The binary conv's grid layout (sbnn::make_geom), for the loader's cost model's tests.");

  nb::class_<PyBConv>(m, "BConv2d",
                      "Binary conv prepared for one input size: y = eta*conv(x,b) + "
                      "xi*conv(x,1) + bias, x = +1 if input >= thr else -1, zero padding.")
      .def(nb::init<U8Arr, FArr, FArr, FArr, int, int, int, int, OptF, const std::string&,
                    const std::string&, int>(),
           "bits"_a, "eta"_a, "xi"_a, "bias"_a, "H"_a, "W"_a, "stride"_a = 1, "padding"_a = 0,
           "thr"_a = nb::none(), "kind"_a = "sparse", "impl"_a = "auto", "num_threads"_a = 1)
      .def("__call__", &PyBConv::forward, "x"_a, "x: (N, Ci, H, W) -> (N, Co, Ho, Wo) float32")
      .def("counts", &PyBConv::counts, "x"_a,
           "x -> (conv(x, b) int32 (N, Co, Ho, Wo), conv(x, 1) int32 (N, Ho, Wo))")
      .def_prop_ro("impl", &PyBConv::impl)
      .def_prop_ro("ones", &PyBConv::ones)
      .def_prop_ro("images_per_group", &PyBConv::images_per_group,
                   "sparse: images stacked into one accumulation grid (small maps)")
      .def_prop_ro("out_shape", &PyBConv::out_shape);

  m.def(
      "bconv2d",
      [](FArr x, U8Arr bits, FArr eta, FArr xi, FArr bias, int stride, int padding, OptF thr,
         const std::string& impl, const std::string& kind, int num_threads) {
        PyBConv c =
            make_bconv_for(x, bits, eta, xi, bias, stride, padding, thr, kind, impl, num_threads);
        return c.forward(x);
      },
      "x"_a, "bits"_a, "eta"_a, "xi"_a, "bias"_a, "stride"_a = 1, "padding"_a = 0,
      "thr"_a = nb::none(), "impl"_a = "auto", "kind"_a = "sparse", "num_threads"_a = 1,
      "Binary conv in one call (prepares the weights each time). x: (N, Ci, H, W) float32, "
      "bits: (Co, Ci, kh, kw) 0/1 uint8 -> (N, Co, Ho, Wo) float32.");
  m.def(
      "bconv2d_counts",
      [](FArr x, U8Arr bits, int stride, int padding, OptF thr, const std::string& impl,
         const std::string& kind) {
        expect_ndim(bits, 4, "bits", "(Co, Ci, kh, kw)");
        std::vector<float> zeros(bits.shape(0), 0.0f);
        const size_t Co = bits.shape(0);
        FArr z(zeros.data(), {Co}, nb::handle());
        PyBConv c = make_bconv_for(x, bits, z, z, z, stride, padding, thr, kind, impl, 1);
        return c.counts(x);
      },
      "x"_a, "bits"_a, "stride"_a = 1, "padding"_a = 0, "thr"_a = nb::none(), "impl"_a = "auto",
      "kind"_a = "sparse",
      "The exact integer parts: (conv(x, b) int32 (N, Co, Ho, Wo), conv(x, 1) int32 (N, Ho, Wo)).");

  // The tiny-map binary conv (core/bconv_tiny.h, issue 20) on its own, for its tests: the
  // engine only runs it where its first-run timing beats the sparse and dense kernels.
  m.def(
      "bconv2d_tiny",
      [](FArr x, U8Arr bits, FArr eta, FArr xi, FArr bias, int stride, int padding, OptF thr,
         OptF res, bool clamp, float lo, float hi, OptF rp_in, OptF rp_slope, OptF rp_out,
         const std::string& impl, int num_threads) {
        expect_ndim(x, 4, "x", "(N, Ci, H, W)");
        expect_ndim(bits, 4, "bits", "(Co, Ci, kh, kw)");
        const int Co = as_int(bits.shape(0)), Ci = as_int(bits.shape(1));
        if (as_int(x.shape(1)) != Ci)
          throw std::invalid_argument("bconv2d_tiny: x has " + std::to_string(x.shape(1)) +
                                      " channels, bits expect " + std::to_string(Ci));
        sbnn::BConvTiny k(bits.data(), Co, Ci, as_int(bits.shape(2)), as_int(bits.shape(3)),
                          vec_or_null(eta, Co, "eta", true), vec_or_null(xi, Co, "xi", true),
                          vec_or_null(bias, Co, "bias", true), vec_or_null(thr, Ci, "thr", false),
                          stride, padding, as_int(x.shape(2)), as_int(x.shape(3)),
                          sbnn::parse_isa(impl));
        const size_t N = x.shape(0), Ho = k.Ho(), Wo = k.Wo();
        sbnn::BConvPost post;
        if (res) {
          if (res->size() != N * Co * Ho * Wo)
            throw std::invalid_argument("bconv2d_tiny: res must be (N, Co, Ho, Wo)");
          post.res = res->data();
        }
        post.clamp = clamp;
        post.lo = lo;
        post.hi = hi;
        if (rp_in || rp_slope || rp_out) {
          post.rp_in = vec_or_null(rp_in, Co, "rp_in", true);
          post.rp_slope = vec_or_null(rp_slope, Co, "rp_slope", true);
          post.rp_out = vec_or_null(rp_out, Co, "rp_out", true);
        }
        float* y;
        int32_t *cnt, *ws;
        auto yo = new_array<float>({N, static_cast<size_t>(Co), Ho, Wo}, &y);
        auto co = new_array<int32_t>({N, static_cast<size_t>(Co), Ho, Wo}, &cnt);
        auto wo = new_array<int32_t>({N, Ho, Wo}, &ws);
        sbnn::ThreadPool pool(num_threads);
        {
          nb::gil_scoped_release rel;
          k.forward(x.data(), as_int(N), y, &pool, post);
          k.counts(x.data(), as_int(N), cnt, ws, &pool);
        }
        return nb::make_tuple(yo, co, wo);
      },
      "x"_a, "bits"_a, "eta"_a, "xi"_a, "bias"_a, "stride"_a = 1, "padding"_a = 0,
      "thr"_a = nb::none(), "res"_a = nb::none(), "clamp"_a = false, "lo"_a = -1.0f,
      "hi"_a = 1.0f, "rp_in"_a = nb::none(), "rp_slope"_a = nb::none(), "rp_out"_a = nb::none(),
      "impl"_a = "auto", "num_threads"_a = 1,
      "The tiny-map binary conv (Ho * Wo <= 16) with the engine's fused post-ops: (y float32 "
      "(N, Co, Ho, Wo), conv(x, b) int32 (N, Co, Ho, Wo), conv(x, 1) int32 (N, Ho, Wo)).");

  m.def(
      "conv2d",
      [](FArr x, FArr w, OptF bias, int stride, int padding, int num_threads,
         const std::string& impl) {
        return float_conv2d(x, w, bias,
                            sbnn::ConvGeometry{stride, stride, padding, padding, padding, padding,
                                               1, 1, 1},
                            num_threads, impl, "(Co, Ci, kh, kw)", "weight expects");
      },
      "x"_a, "weight"_a, "bias"_a = nb::none(), "stride"_a = 1, "padding"_a = 0,
      "num_threads"_a = 1, "impl"_a = "auto",
      "Float conv2d (im2col into panels + the ISA's register-tiled FMA GEMM), as the engine "
      "runs it; impl='ref' runs the plain blocked loops.");

  m.def(
      "conv2d_ex",
      [](FArr x, FArr w, OptF bias, const std::vector<int>& geom, int num_threads,
         const std::string& impl) {
        return float_conv2d(x, w, bias, to_geometry(geom), num_threads, impl,
                            "(Co, Ci / groups, kh, kw)", "weight and groups expect");
      },
      "x"_a, "weight"_a, "bias"_a, "geom"_a, "num_threads"_a = 1, "impl"_a = "auto",
      "Float conv2d of any geometry (geom: sh, sw, pt, pl, pb, pr, dh, dw, groups), as the "
      "engine runs it: depthwise direct, else im2col + GEMM per group; impl='ref': plain loops.");

  m.def(
      "qconv2d",
      [](FArr x, I8Arr w, FArr scale, OptF bias, float x_scale, int x_zero,
         std::vector<int> stride, std::vector<int> pads, std::vector<int> dilation, int groups,
         const std::string& impl, int num_threads) {
        expect_ndim(x, 4, "x", "(N, Ci, H, W)");
        sbnn::QGeom g = qgeom(w, as_int(x.shape(1)), as_int(x.shape(2)), as_int(x.shape(3)),
                              stride, pads, dilation, groups);
        sbnn::QConv conv(w.data(), vec_or_null(scale, g.Co, "scale", true),
                         vec_or_null(bias, g.Co, "bias", false), x_scale, x_zero, g,
                         sbnn::parse_isa(impl));
        float* y;
        auto out = new_array<float>({x.shape(0), static_cast<size_t>(g.Co),
                                     static_cast<size_t>(g.Ho), static_cast<size_t>(g.Wo)},
                                    &y, false);
        sbnn::ThreadPool pool(num_threads);
        {
          nb::gil_scoped_release rel;
          conv.forward(x.data(), as_int(x.shape(0)), y, &pool);
        }
        return out;
      },
      "x"_a, "weight"_a, "scale"_a, "bias"_a.none(), "x_scale"_a, "x_zero"_a, "stride"_a,
      "pads"_a, "dilation"_a, "groups"_a = 1, "impl"_a = "auto", "num_threads"_a = 1,
      "int8 conv as the engine runs it (sbnn_runtime.qkernels): x float32 (N, Ci, H, W), "
      "weight int8 (Co, Ci / groups, kh, kw), scale = float32(x_scale * w_scale) -> float32.");
  m.def(
      "int8_kernel",
      [](const std::string& impl) {
        const char* name = "scalar";
        sbnn::qgemm_for(sbnn::parse_isa(impl), &name);
        return std::string(name);
      },
      "impl"_a = "auto",
      "The int8 GEMM an ISA runs here: 'scalar', 'avx2', 'vnni' or 'neon'.");

  nb::class_<PyEngine>(m, "Engine",
                       "Native inference runtime: build a graph op by op (each returns a tensor "
                       "id), set_output, then run(x) on float32 (N, C, H, W) batches.")
      .def(nb::init<int>(), "num_threads"_a = 1)
      .def("input", &PyEngine::input, "C"_a, "H"_a, "W"_a)
      .def("conv2d", &PyEngine::conv2d, "t"_a, "weight"_a, "bias"_a = nb::none(), "stride"_a = 1,
           "padding"_a = 0)
      .def("sbconv2d", &PyEngine::sbconv2d, "t"_a, "bits"_a, "eta"_a, "xi"_a, "bias"_a,
           "stride"_a = 1, "padding"_a = 0, "thr"_a = nb::none(), "sparse"_a = true,
           "impl"_a = "auto")
      .def("conv2d_ex", &PyEngine::conv2d_ex, "t"_a, "weight"_a, "bias"_a, "geom"_a)
      .def("sbconv2d_ex", &PyEngine::sbconv2d_ex, "t"_a, "bits"_a, "eta"_a, "xi"_a, "bias"_a,
           "thr"_a, "geom"_a)
      .def("affine", &PyEngine::affine, "t"_a, "scale"_a, "shift"_a)
      .def(
          "hardtanh", [](PyEngine& e, int t, float lo, float hi) { return e.eng().hardtanh(t, lo, hi); },
          "t"_a, "lo"_a = -1.0f, "hi"_a = 1.0f)
      .def(
          "relu", [](PyEngine& e, int t) { return e.eng().relu(t); }, "t"_a)
      .def(
          "activation",
          [](PyEngine& e, int t, int kind, float alpha) { return e.eng().activation(t, kind, alpha); },
          "t"_a, "kind"_a, "alpha"_a = 0.0f)
      .def(
          "softmax", [](PyEngine& e, int t) { return e.eng().softmax(t); }, "t"_a)
      .def(
          "eltwise", [](PyEngine& e, int a, int b, int kind) { return e.eng().eltwise(a, b, kind); },
          "a"_a, "b"_a, "kind"_a)
      .def(
          "concat", [](PyEngine& e, int a, int b) { return e.eng().concat(a, b); }, "a"_a, "b"_a)
      .def("rprelu", &PyEngine::rprelu, "t"_a, "shift_in"_a, "slope"_a, "shift_out"_a)
      .def(
          "add", [](PyEngine& e, int a, int b) { return e.eng().add(a, b); }, "t1"_a, "t2"_a)
      .def(
          "avgpool",
          [](PyEngine& e, int t, int k, int stride, int pad, bool cip) {
            return e.eng().avgpool(t, k, stride, pad, cip);
          },
          "t"_a, "k"_a, "stride"_a, "pad"_a = 0, "count_include_pad"_a = true)
      .def(
          "maxpool",
          [](PyEngine& e, int t, int k, int stride, int pad) {
            return e.eng().maxpool(t, k, stride, pad);
          },
          "t"_a, "k"_a, "stride"_a, "pad"_a = 0)
      .def(
          "pool2d",
          [](PyEngine& e, int t, bool is_max, int kh, int kw, int sh, int sw, int pt, int pl,
             int pb, int pr, bool ceil, bool cip) {
            sbnn::PoolGeom g;
            g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.pt = pt, g.pl = pl, g.pb = pb,
            g.pr = pr, g.ceil = ceil;
            return e.eng().pool2d(t, is_max, g, cip);
          },
          "t"_a, "is_max"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "pt"_a, "pl"_a, "pb"_a, "pr"_a,
          "ceil_mode"_a = false, "count_include_pad"_a = true)
      .def(
          "reshape",
          [](PyEngine& e, int t, int C, int H, int W, bool flat) {
            return e.eng().reshape(t, C, H, W, flat);
          },
          "t"_a, "C"_a, "H"_a = 1, "W"_a = 1, "flat"_a = false)
      .def(
          "channel_shuffle",
          [](PyEngine& e, int t, int groups) { return e.eng().channel_shuffle(t, groups); },
          "t"_a, "groups"_a)
      .def(
          "upsample",
          [](PyEngine& e, int t, int scale, int mode, bool align_corners) {
            return e.eng().upsample(t, scale, mode, align_corners);
          },
          "t"_a, "scale"_a, "mode"_a, "align_corners"_a = false)
      .def(
          "global_avgpool", [](PyEngine& e, int t) { return e.eng().global_avgpool(t); }, "t"_a)
      .def(
          "flatten", [](PyEngine& e, int t) { return e.eng().flatten(t); }, "t"_a)
      .def("linear", &PyEngine::linear, "t"_a, "weight"_a, "bias"_a = nb::none())
      .def("qconv2d", &PyEngine::qconv2d, "t"_a, "weight"_a, "scale"_a, "bias"_a.none(),
           "x_scale"_a, "x_zero"_a, "stride"_a, "pads"_a, "dilation"_a, "groups"_a = 1,
           "impl"_a = "auto")
      .def("qlinear", &PyEngine::qlinear, "t"_a, "weight"_a, "scale"_a, "bias"_a.none(),
           "x_scale"_a, "x_zero"_a, "impl"_a = "auto")
      .def(
          "set_output", [](PyEngine& e, int t) { e.eng().set_output(t); }, "t"_a)
      .def(
          "shape", [](PyEngine& e, int t) { return shape_vec(e.eng().shape(t)); }, "t"_a,
          "Per-image shape of tensor t: [C, H, W] or [F] when flat.")
      .def_prop_ro("num_threads", [](PyEngine& e) { return e.eng().num_threads(); })
      .def_prop_ro("num_ops", [](PyEngine& e) { return e.eng().num_ops(); })
      .def("run", &PyEngine::run, "x"_a, "profile"_a = false,
           "x: float32 (N, C, H, W) -> numpy float32 (N, ...); with profile=True returns "
           "(y, layer_times).")
      .def(
          "layer_times", [](PyEngine& e) { return e.last_times(); },
          "[(op name, seconds)] of the last run with profile=True, in op order.")
      .def(
          "layer_info",
          [](PyEngine& e) {
            nb::list out;
            for (const sbnn::LayerInfo& li : e.eng().layer_info()) {
              nb::dict d;
              d["name"] = li.name;
              d["kernel"] = li.kernel;
              d["isa"] = li.isa;
              d["sparse_s"] = li.sparse_s;
              d["dense_s"] = li.dense_s;
              d["tiny_s"] = li.tiny_s;
              d["batch"] = li.batch;
              out.append(d);
            }
            return out;
          },
          "Per op of the plan the engine runs (fused ops as one, in run order): {name, kernel, "
          "isa, sparse_s, dense_s, tiny_s, batch}. Binary convs: kernel 'sparse', 'dense' or "
          "'tiny' (tiny maps) as chosen at the first run of the last batch size (timings of "
          "each there, seconds; -1 for one not built), 'auto' "
          "before that; float convs: 'gemm:<isa>'.")
      .def(
          "set_groups",
          [](PyEngine& e, std::vector<std::vector<int>> groups) {
            e.eng().set_groups(std::move(groups));
          },
          "groups"_a,
          "Fusion groups from the graph passes (sbnn_runtime.passes.plan(...).groups(), as "
          "tensor ids): each runs as one op, the anchor conv's epilogue doing the rest. "
          "Raises ValueError on a group the engine cannot fuse; [] (the default): no fusion.")
      .def_prop_ro(
          "groups", [](PyEngine& e) { return e.eng().groups(); },
          "The fusion groups set by set_groups.")
      .def(
          "set_memory_plan",
          [](PyEngine& e, std::vector<int64_t> offsets, int64_t arena_bytes) {
            e.eng().set_memory_plan(std::move(offsets), arena_bytes);
          },
          "offsets"_a, "arena_bytes"_a,
          "The memory plan from the graph passes (sbnn_runtime.passes.plan_buffers): per tensor "
          "id its byte offset (-1: the caller's input) in one arena of arena_bytes for one "
          "image, offsets multiples of 64. A run of N images allocates one arena of N * "
          "arena_bytes and puts tensor t at N * offsets[t]. Raises ValueError on a plan that "
          "misses an op's output or leaves the arena (the old plan stays).")
      .def_prop_ro(
          "arena_bytes", [](PyEngine& e) { return e.eng().arena_bytes(); },
          "Bytes of the arena for one image, of the memory plan in force (a run of N images "
          "allocates N times this).")
      .def(
          "set_choice", [](PyEngine& e, bool on) { e.eng().set_choice(on); }, "on"_a,
          "Binary convs added after this call: with on (the default) a sparse conv also "
          "prepares the dense kernel and runs the faster per batch size; off: sparse only.");
}
