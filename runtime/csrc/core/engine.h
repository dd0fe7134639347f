// The native inference runtime: a straight-line graph of ops on float tensors (C, H, W) or
// flat (F,), built once, then run on batches (N, C, H, W).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/bconv.h"
#include "core/bconv_tiny.h"
#include "core/floatops.h"
#include "core/int8.h"
#include "core/threadpool.h"

namespace sbnn {

struct TensorShape {
  int C = 0, H = 1, W = 1;
  bool flat = false;  // (C,) feature vector, H = W = 1
  size_t numel() const { return static_cast<size_t>(C) * H * W; }
  std::string str() const;
};

// One binary conv of the graph: the layer(s) it may run and, when both a sparse and a dense
// kernel are there, which one each batch size runs, settled at the first run of that batch size
// by timing both on that very input (interleaved, best of 5 calls each: a preempted call
// cannot decide it) and cached. sparse=False in the engine keeps the dense layer only.
struct BConvOp {
  std::shared_ptr<BConvLayer> sparse, dense;  // either may be null, not both
  // Tiny output maps (Ho * Wo <= 16, bconv_tiny.h): a third candidate of the choice, built
  // beside the sparse kernel unless SBNN_TINY_MAPS=0 (issue 20).
  std::shared_ptr<BConvTiny> tiny;
  bool tiny_only = false;  // SBNN_TINY_MAPS=only: run it without a choice (tests, benches)
  void run(const float* x, int N, float* y, ThreadPool* pool, const BConvPost& post);
  // The kernel the last run used ("sparse", "dense", "tiny"; "auto" before any run with a
  // choice).
  std::string kernel() const;
  std::mutex mu;
  std::map<int, int> use;  // per batch size: the chosen kernel, 0 sparse, 1 dense, 2 tiny
  int last_n = -1;
  // seconds, best of the timing calls (last choice); -1 for a kernel not built
  double t_sparse = -1.0, t_dense = -1.0, t_tiny = -1.0;
};

// Per op of the running plan (after fusion): what it is and which kernel runs it.
struct LayerInfo {
  std::string name, kernel, isa;
  double sparse_s = -1.0, dense_s = -1.0;  // binary convs with a choice: the timings it used
  double tiny_s = -1.0;                    // ... and the tiny-map kernel's, where built
  int batch = -1;                          // the batch size those timings were taken at
};

// The window of a pooling: kernel, stride, pads (top, left, bottom, right) and PyTorch's
// ceil_mode (sbnn_runtime.ops.PoolGeometry).
struct PoolGeom {
  int kh = 1, kw = 1, sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0;
  bool ceil = false;
};

class Engine {
 public:
  explicit Engine(int num_threads);

  int input(int C, int H, int W);
  int conv2d(int t, const float* w, int Co, int Ci, int kh, int kw, const float* bias, int stride,
             int pad);
  int sbconv2d(int t, const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
               const float* xi, const float* bias, int stride, int pad, const float* thr,
               bool sparse, Isa isa);
  // Any conv geometry (groups, dilation, non-square strides and pads): w / bits are
  // (Co, Ci / groups, kh, kw). The binary one runs sbnn::BConvDirect (no fusion).
  int conv2d_ex(int t, const float* w, int Co, int Cig, int kh, int kw, const float* bias,
                const ConvGeometry& geo);
  int sbconv2d_ex(int t, const uint8_t* bits, int Co, int Cig, int kh, int kw, const float* eta,
                  const float* xi, const float* bias, const float* thr, const ConvGeometry& geo);
  int affine(int t, const float* scale, const float* shift, int C);
  int hardtanh(int t, float lo, float hi);
  int relu(int t);
  // element-wise activation `kind` (the index of sbnn_runtime.ops.ACTIVATION_KINDS:
  // leaky_relu, sigmoid, tanh, silu, hardswish, hardsigmoid); alpha: leaky_relu's slope
  int activation(int t, int kind, float alpha);
  // softmax over the channels (features) at every position
  int softmax(int t);
  // a * b (kind 0) or a + b (kind 1), b of a's shape or one value per channel (C, 1, 1)
  int eltwise(int a, int b, int kind);
  // the channels of a, then those of b (same H, W)
  int concat(int a, int b);
  int rprelu(int t, const float* shift_in, const float* slope, const float* shift_out, int C);
  int add(int a, int b);
  int avgpool(int t, int k, int stride, int pad, bool count_include_pad);
  int maxpool(int t, int k, int stride, int pad);
  // any window: an average counts the cells inside the padded input (count_include_pad) or
  // inside the input, never those past the trailing pad that only ceil_mode reaches
  int pool2d(int t, bool is_max, const PoolGeom& g, bool count_include_pad);
  int global_avgpool(int t);
  int flatten(int t);
  // the same values in a new shape (C, H, W), or (C,) when flat
  int reshape(int t, int C, int H, int W, bool flat);
  // channel c' = j * groups + i takes channel i * (C / groups) + j (ShuffleNet's shuffle)
  int channel_shuffle(int t, int groups);
  // (C, H, W) -> (C, H * scale, W * scale): nearest (mode 0) or bilinear (mode 1, PyTorch's
  // half-pixel centres, or align_corners)
  int upsample(int t, int scale, int mode, bool align_corners);
  int linear(int t, const float* w, int O, int I, const float* bias);
  // int8 conv / linear (core/int8.h): g's Ci, H, W come from tensor t; scale = float32(x_scale
  // * w_scale_c); bias may be null; the output is float
  int qconv2d(int t, const int8_t* w, const float* scale, const float* bias, float x_scale,
              int x_zero, QGeom g, Isa isa);
  int qlinear(int t, const int8_t* w, int O, int I, const float* scale, const float* bias,
              float x_scale, int x_zero, Isa isa);
  void set_output(int t);

  const TensorShape& shape(int t) const;
  const TensorShape& input_shape() const;
  const TensorShape& output_shape() const;
  int num_threads() const { return pool_.size(); }
  int num_ops() { return static_cast<int>(plan().size()); }  // after fusion (groups)

  using LayerTimes = std::vector<std::pair<std::string, double>>;
  // x: (N, C, H, W) matching input(); y: N * output numel floats; times, when given, gets the
  // per-op (name, seconds) of this run. A run keeps all its state (buffers, timings) to itself,
  // so one built engine may run on many threads at once; they share the thread pool, one
  // parallel section at a time. Adding ops while a run is in flight is not allowed.
  // With T > 1 threads and no times wanted, a batch of N >= 2 is split into min(N, 2T) even
  // slices, each run through the whole plan on one thread (its own arena, the ops' own
  // parallel loops inline): one synchronisation per run instead of one or more per op, and
  // each slice's tensors stay in its core's cache (issue 20: batch throughput on every core).
  void run(const float* x, int N, float* y, LayerTimes* times = nullptr) const;

  // Per op of the plan the engine runs (fused ops as one).
  std::vector<LayerInfo> layer_info();
  // The fusion groups of the plan, decided by the graph passes (sbnn_runtime.passes,
  // fuse_epilogues), not here: each group is the output tensors of the ops that run as one, the
  // anchor first. A binary conv may take an add (a residual: the add's other operand becomes an
  // input) and then a hardtanh or an RPReLU; a float conv a hardtanh. Each member must read the
  // one before it, whose output nobody else reads. The plan is built, and a bad group throws
  // std::invalid_argument naming it, at the next run. No groups (the default): every op alone.
  void set_groups(std::vector<std::vector<int>> groups);
  const std::vector<std::vector<int>>& groups() const { return groups_; }
  // The memory plan, decided by the graph passes (sbnn_runtime.passes.plan_buffers), not here:
  // per tensor id its offset in bytes into one arena of arena_bytes for one image (-1: not in
  // the arena, the caller's input). A run of N images allocates one arena of N * arena_bytes,
  // kArenaAlign-aligned, and puts tensor t at N * offsets[t] (every size scales with N, so the
  // placement holds at any batch). Each offset must be a multiple of kArenaAlign; every op's
  // output must lie inside the arena, else the next run (checked when the plan is built) throws
  // std::invalid_argument and the engine keeps its old memory plan. Without one (engines built
  // by hand), op outputs lie end to end, each at its own aligned place.
  void set_memory_plan(std::vector<int64_t> offsets, int64_t arena_bytes);
  // Bytes of the arena for one image, of the plan in force (a run of N takes N times this).
  int64_t arena_bytes() const;
  static constexpr int64_t kArenaAlign = 64;
  // Sparse binary convs time the dense kernel too at the first run of a batch size and keep
  // the faster (on by default); off: the sparse kernel always.
  void set_choice(bool on) { choose_ = on; }
 private:
  using Fn = std::function<void(const std::vector<const float*>&, float*, int)>;
  enum class Kind { Other, BConv, FloatConv, Add, Hardtanh, RPReLU };
  struct Op {
    std::string name;
    std::vector<int> inputs;
    int output;
    Fn fn;
    Kind kind = Kind::Other;
    std::shared_ptr<BConvOp> bconv;  // Kind::BConv
    std::shared_ptr<FloatConv> fconv;  // Kind::FloatConv
    float lo = 0.0f, hi = 0.0f;      // Kind::Hardtanh
    std::shared_ptr<const std::vector<float>> rp;  // Kind::RPReLU: shift_in, slope, shift_out
    std::string kernel;              // what runs it (layer_info)
  };
  int add_tensor(const TensorShape& s);
  void check_tensor(int t, const char* op) const;
  int push(std::string name, std::vector<int> inputs, const TensorShape& out, Fn fn,
           Kind kind = Kind::Other);
  // ops_ after fusion by groups_, built on first use after the graph or the groups changed
  // (under plan_mu_, so that
  // concurrent runs of a built engine share one plan).
  const std::vector<Op>& plan() const;
  // run's op-by-op loop over the plan on N images (ops split their work over the pool).
  void run_steps(const float* x, int N, float* y, LayerTimes* times) const;

  bool choose_ = true;
  std::vector<std::vector<int>> groups_;
  bool mem_set_ = false;
  std::vector<int64_t> mem_off_;  // set_memory_plan's, bytes per image
  int64_t mem_bytes_ = 0;
  mutable std::vector<size_t> run_off_;  // floats per image, per tensor (of plan_)
  mutable size_t run_floats_ = 0;        // floats of the arena per image
  mutable std::mutex plan_mu_;
  mutable std::vector<Op> plan_;
  mutable bool plan_valid_ = false;

  mutable ThreadPool pool_;  // internally synchronised: one parallel_for at a time
  std::vector<TensorShape> shapes_;
  std::vector<Op> ops_;
  int input_ = -1, output_ = -1;
};

}  // namespace sbnn
