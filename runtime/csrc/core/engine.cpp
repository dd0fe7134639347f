#include "core/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>

namespace sbnn {

namespace {

std::invalid_argument err(const std::string& op, const std::string& msg) {
  return std::invalid_argument(op + ": " + msg);
}

// Runs fn(n, c) over all (image, channel) planes in parallel.
void for_planes(ThreadPool& pool, int N, int C, const std::function<void(int, int)>& fn) {
  const int total = N * C;
  const int nt = pool.size();
  if (nt <= 1 || total < 2) {
    for (int i = 0; i < total; ++i) fn(i / C, i % C);
    return;
  }
  const int chunks = std::min(total, nt * 4);
  pool.parallel_for(chunks, [&](int k) {
    const int i0 = static_cast<int>(static_cast<int64_t>(total) * k / chunks);
    const int i1 = static_cast<int>(static_cast<int64_t>(total) * (k + 1) / chunks);
    for (int i = i0; i < i1; ++i) fn(i / C, i % C);
  });
}

// PyTorch's output size of a pooling along one axis (leading pad p0, trailing pad p1)
int pool_out(int n, int k, int s, int p0, int p1, bool ceil) {
  const int num = n + p0 + p1 - k + (ceil ? s - 1 : 0);
  int out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;  // floor division
  if (ceil && (out - 1) * s >= n + p0) --out;
  return out;
}

// Output shape of a pooling with window g, or the error that says why the arguments don't fit.
TensorShape pooled_shape(const TensorShape& s, const PoolGeom& g, const char* op) {
  if (s.flat) throw err(op, "input is a flat tensor " + s.str());
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || std::min({g.pt, g.pl, g.pb, g.pr}) < 0 ||
      2 * std::max(g.pt, g.pb) > g.kh || 2 * std::max(g.pl, g.pr) > g.kw)
    throw err(op, "need k >= 1, stride >= 1, 0 <= pad <= k / 2");
  const int Ho = pool_out(s.H, g.kh, g.sh, g.pt, g.pb, g.ceil);
  const int Wo = pool_out(s.W, g.kw, g.sw, g.pl, g.pr, g.ceil);
  if (Ho < 1 || Wo < 1) throw err(op, "kernel larger than the padded input " + s.str());
  return TensorShape{s.C, Ho, Wo, false};
}

PoolGeom square(int k, int stride, int pad) {
  PoolGeom g;
  g.kh = g.kw = k;
  g.sh = g.sw = stride;
  g.pt = g.pl = g.pb = g.pr = pad;
  return g;
}

}  // namespace

std::string TensorShape::str() const {
  if (flat) return "(" + std::to_string(C) + ",)";
  return "(" + std::to_string(C) + ", " + std::to_string(H) + ", " + std::to_string(W) + ")";
}

Engine::Engine(int num_threads) : pool_(num_threads) {}

int Engine::add_tensor(const TensorShape& s) {
  shapes_.push_back(s);
  return static_cast<int>(shapes_.size()) - 1;
}

void Engine::check_tensor(int t, const char* op) const {
  if (t < 0 || t >= static_cast<int>(shapes_.size()))
    throw err(op, "unknown tensor id " + std::to_string(t));
}

const TensorShape& Engine::shape(int t) const {
  check_tensor(t, "shape");
  return shapes_[t];
}

const TensorShape& Engine::input_shape() const {
  if (input_ < 0) throw std::invalid_argument("engine has no input; call input(C, H, W) first");
  return shapes_[input_];
}

const TensorShape& Engine::output_shape() const {
  if (output_ < 0) throw std::invalid_argument("engine has no output; call set_output(t) first");
  return shapes_[output_];
}

int Engine::push(std::string name, std::vector<int> inputs, const TensorShape& out, Fn fn,
                 Kind kind) {
  const int t = add_tensor(out);
  Op op;
  op.name = std::move(name);
  op.inputs = std::move(inputs);
  op.output = t;
  op.fn = std::move(fn);
  op.kind = kind;
  ops_.push_back(std::move(op));
  plan_valid_ = false;
  return t;
}

// ------------------------------------------------------------------ binary conv: kernel choice
// Rounds of (sparse, dense) timing calls; the best of each decides, so a choice survives one
// preempted call of the faster kernel on a shared machine. Two, not more: a first run costs
// about kChoiceRounds calls of both kernels where the loader's work limit counts one, and with
// five rounds the first run of a graph of small binary convs took 10-14x its work estimate's
// median rate (docs/HARDENING.md); a choice between kernels within a few percent of each other
// matters little, and a clear one shows in two rounds.
constexpr int kChoiceRounds = 2;
constexpr double kChoiceOnceSeconds = 0.05;

void BConvOp::run(const float* x, int N, float* y, ThreadPool* pool, const BConvPost& post) {
  const int nk = (sparse ? 1 : 0) + (dense ? 1 : 0) + (tiny ? 1 : 0);
  auto call = [&](int k) {
    if (k == 0)
      sparse->forward(x, N, y, pool, post);
    else if (k == 1)
      dense->forward(x, N, y, pool, post);
    else
      tiny->forward(x, N, y, pool, post);
  };
  if (nk == 1 || (tiny && tiny_only)) {
    call(tiny && (tiny_only || nk == 1) ? 2 : sparse ? 0 : 1);
    return;
  }
  int k;
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = use.find(N);
    if (it == use.end()) {
      // First run at this batch size: time every kernel on this input, interleaved; every
      // call writes the full (correct) output, so the last one leaves y right whichever wins.
      using clk = std::chrono::steady_clock;
      const bool have[3] = {sparse != nullptr, dense != nullptr, tiny != nullptr};
      double t[3] = {1e30, 1e30, 1e30};
      int last = -1;
      for (int r = 0; r < kChoiceRounds; ++r) {
        double sum = 0.0;
        for (int c = 0; c < 3; ++c) {
          if (!have[c]) continue;
          auto t0 = clk::now();
          call(c);
          t[c] = std::min(t[c], std::chrono::duration<double>(clk::now() - t0).count());
          sum += t[c];
          last = c;
        }
        // A big layer is timed once: at tens of ms a call, preemption cannot flip the choice,
        // and the first run stays within a small factor of a plain one (the loader's work
        // limit counts one call of each kernel).
        if (sum > kChoiceOnceSeconds) break;
      }
      int best = -1;
      for (int c = 0; c < 3; ++c)
        if (have[c] && (best < 0 || t[c] < t[best])) best = c;
      t_sparse = have[0] ? t[0] : -1.0;
      t_dense = have[1] ? t[1] : -1.0;
      t_tiny = have[2] ? t[2] : -1.0;
      use[N] = best;
      last_n = N;
      if (best != last) call(best);  // else y already holds its result, the last call
      return;
    }
    k = it->second;
    last_n = N;
  }
  call(k);
}

std::string BConvOp::kernel() const {
  const int nk = (sparse ? 1 : 0) + (dense ? 1 : 0) + (tiny ? 1 : 0);
  if (tiny && tiny_only) return "tiny";
  if (nk == 1) return sparse ? "sparse" : dense ? "dense" : "tiny";
  auto it = use.find(last_n);
  if (it == use.end()) return "auto";
  return it->second == 0 ? "sparse" : it->second == 1 ? "dense" : "tiny";
}

void Engine::set_groups(std::vector<std::vector<int>> groups) {
  std::vector<std::vector<int>> old = std::move(groups_);
  groups_ = std::move(groups);
  plan_valid_ = false;
  try {
    plan();  // a bad group throws here, and the engine keeps its old groups
  } catch (...) {
    groups_ = std::move(old);
    plan_valid_ = false;
    throw;
  }
}

// The plan: ops_ with each fusion group (given by set_groups, decided by the graph passes) as
// one op at the place of its last member. A binary conv's epilogue adds the residual and
// applies the hardtanh or RPReLU; a float conv clamps in its GEMM tasks. The groups are checked
// here, so a wrong one cannot make the engine skip a tensor somebody reads.
const std::vector<Engine::Op>& Engine::plan() const {
  std::lock_guard<std::mutex> lk(plan_mu_);
  if (plan_valid_) return plan_;
  const int nt = static_cast<int>(shapes_.size()), no = static_cast<int>(ops_.size());
  std::vector<int> ncons(nt, 0), producer(nt, -1);
  for (int i = 0; i < no; ++i) {
    producer[ops_[i].output] = i;
    for (int t : ops_[i].inputs) ++ncons[t];
  }
  if (output_ >= 0) ++ncons[output_];
  std::vector<bool> used(no, false), placed(no, true);
  std::vector<Op> at(ops_);
  ThreadPool* pool = &pool_;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const std::vector<int>& grp = groups_[gi];
    const std::string what = "fusion group " + std::to_string(gi);
    std::vector<int> idx;
    for (int t : grp) {
      if (t < 0 || t >= nt || producer[t] < 0)
        throw err(what, "unknown op output " + std::to_string(t));
      if (used[producer[t]])
        throw err(what, "the op of tensor " + std::to_string(t) + " is in a group already");
      used[producer[t]] = true;
      idx.push_back(producer[t]);
    }
    if (idx.size() < 2) throw err(what, "needs an op and at least one op to fuse into it");
    Op op = ops_[idx[0]];
    if (op.kind != Kind::BConv && op.kind != Kind::FloatConv)
      throw err(what, "starts with " + op.name + ", not a conv");
    int t = op.output, res = -1;
    bool clamp = false;
    float lo = 0.0f, hi = 0.0f;
    std::shared_ptr<const std::vector<float>> rp;
    for (size_t k = 1; k < idx.size(); ++k) {
      const Op& m = ops_[idx[k]];
      const bool reads = std::find(m.inputs.begin(), m.inputs.end(), t) != m.inputs.end();
      if (!reads || ncons[t] != 1)
        throw err(what, m.name + " is not the only reader of the op before it");
      const bool bconv = op.kind == Kind::BConv;
      if (m.kind == Kind::Add && bconv && k == 1) {
        res = m.inputs[0] == t ? m.inputs[1] : m.inputs[0];
        if (res == t) throw err(what, "adds a tensor to itself");
      } else if (m.kind == Kind::Hardtanh && !clamp && !rp) {
        clamp = true;
        lo = m.lo;
        hi = m.hi;
      } else if (m.kind == Kind::RPReLU && bconv && !clamp && !rp) {
        rp = m.rp;
      } else {
        throw err(what, "cannot fuse " + m.name + " into " + op.name);
      }
      op.name += "+" + m.name;
      t = m.output;
    }
    const int pos = idx.back();
    op.output = t;
    if (op.kind == Kind::BConv) {
      std::shared_ptr<BConvOp> b = op.bconv;
      if (res >= 0) op.inputs.push_back(res);
      const bool has_res = res >= 0;
      const int C = shapes_[t].C;
      op.fn = [b, pool, has_res, clamp, lo, hi, rp, C](const std::vector<const float*>& in,
                                                     float* out, int N) {
        BConvPost p;
        p.res = has_res ? in[1] : nullptr;
        p.clamp = clamp;
        p.lo = lo;
        p.hi = hi;
        if (rp) {
          p.rp_in = rp->data();
          p.rp_slope = rp->data() + C;
          p.rp_out = rp->data() + 2 * C;
        }
        b->run(in[0], N, out, pool, p);
      };
    } else {
      std::shared_ptr<FloatConv> fc = op.fconv;
      op.fn = [fc, pool, lo, hi](const std::vector<const float*>& in, float* out, int N) {
        fc->forward(in[0], N, out, pool, true, lo, hi);
      };
    }
    for (int k : idx) placed[k] = false;
    placed[pos] = true;
    at[pos] = std::move(op);
  }
  std::vector<Op> ops;
  for (int i = 0; i < no; ++i)
    if (placed[i]) ops.push_back(std::move(at[i]));
  // Where each op's output lives in the arena: the memory plan's offsets (checked: aligned,
  // inside the arena), or without one, end to end.
  constexpr size_t kAlignFloats = static_cast<size_t>(kArenaAlign) / sizeof(float);
  std::vector<size_t> off(nt, 0);
  size_t floats = 0;
  for (const Op& op : ops) {
    const int t = op.output;
    const size_t n = shapes_[t].numel();
    if (!mem_set_) {
      off[t] = floats;
      floats = (floats + n + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
      continue;
    }
    const int64_t o = t < static_cast<int>(mem_off_.size()) ? mem_off_[t] : -1;
    if (o < 0)
      throw err("memory plan", "tensor " + std::to_string(t) + " (" + op.name +
                                   ") has no place in the arena");
    if (o % kArenaAlign != 0 || static_cast<uint64_t>(o) / sizeof(float) + n >
                                    static_cast<uint64_t>(mem_bytes_) / sizeof(float))
      throw err("memory plan", "tensor " + std::to_string(t) + " (" + op.name + ") at byte " +
                                   std::to_string(o) + " is misaligned or outside the arena of " +
                                   std::to_string(mem_bytes_) + " bytes");
    off[t] = static_cast<size_t>(o) / sizeof(float);
  }
  if (mem_set_) floats = static_cast<size_t>(mem_bytes_) / sizeof(float);
  plan_ = std::move(ops);
  run_off_ = std::move(off);
  run_floats_ = floats;
  plan_valid_ = true;
  return plan_;
}

void Engine::set_memory_plan(std::vector<int64_t> offsets, int64_t arena_bytes) {
  if (arena_bytes < 0) throw err("memory plan", "arena_bytes must be >= 0");
  const bool old_set = mem_set_;
  std::vector<int64_t> old_off = std::move(mem_off_);
  const int64_t old_bytes = mem_bytes_;
  mem_set_ = true;
  mem_off_ = std::move(offsets);
  mem_bytes_ = arena_bytes;
  plan_valid_ = false;
  try {
    plan();  // a bad plan throws here, and the engine keeps its old one
  } catch (...) {
    mem_set_ = old_set;
    mem_off_ = std::move(old_off);
    mem_bytes_ = old_bytes;
    plan_valid_ = false;
    throw;
  }
}

int64_t Engine::arena_bytes() const {
  plan();
  std::lock_guard<std::mutex> lk(plan_mu_);
  return static_cast<int64_t>(run_floats_ * sizeof(float));
}

std::vector<LayerInfo> Engine::layer_info() {
  std::vector<LayerInfo> out;
  for (const Op& op : plan()) {
    LayerInfo li;
    li.name = op.name;
    li.kernel = op.kernel;
    if (op.bconv) {
      std::lock_guard<std::mutex> lk(op.bconv->mu);
      li.kernel = op.bconv->kernel();
      const BConvLayer& l = op.bconv->sparse ? *op.bconv->sparse : *op.bconv->dense;
      li.isa = isa_name(l.isa());
      li.sparse_s = op.bconv->t_sparse;
      li.dense_s = op.bconv->t_dense;
      li.tiny_s = op.bconv->t_tiny;
      li.batch = op.bconv->last_n;
    }
    out.push_back(std::move(li));
  }
  return out;
}

int Engine::input(int C, int H, int W) {
  if (input_ >= 0) throw err("input", "the engine already has an input");
  if (C < 1 || H < 1 || W < 1) throw err("input", "C, H, W must be >= 1");
  input_ = add_tensor(TensorShape{C, H, W, false});
  return input_;
}

int Engine::conv2d(int t, const float* w, int Co, int Ci, int kh, int kw, const float* bias,
                   int stride, int pad) {
  check_tensor(t, "conv2d");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("conv2d", "input is a flat tensor " + s.str());
  if (Ci != s.C)
    throw err("conv2d", "weight has " + std::to_string(Ci) + " input channels, tensor is " +
                            s.str());
  auto conv = std::make_shared<FloatConv>(w, Co, Ci, kh, kw, bias, stride, pad, s.H, s.W);
  ThreadPool* pool = &pool_;
  const int r = push("conv2d", {t}, TensorShape{Co, conv->Ho(), conv->Wo(), false},
                     [conv, pool](const std::vector<const float*>& in, float* out, int N) {
                       conv->forward(in[0], N, out, pool);
                     },
                     Kind::FloatConv);
  ops_.back().kernel = std::string("gemm:") + conv->gemm_name();
  ops_.back().fconv = conv;
  return r;
}

int Engine::sbconv2d(int t, const uint8_t* bits, int Co, int Ci, int kh, int kw, const float* eta,
                     const float* xi, const float* bias, int stride, int pad, const float* thr,
                     bool sparse, Isa isa) {
  check_tensor(t, "sbconv2d");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("sbconv2d", "input is a flat tensor " + s.str());
  if (Ci != s.C)
    throw err("sbconv2d", "bits have " + std::to_string(Ci) + " input channels, tensor is " +
                              s.str());
  auto b = std::make_shared<BConvOp>();
  auto make = [&](BConvKind k) {
    return std::make_shared<BConvLayer>(bits, Co, Ci, kh, kw, eta, xi, bias, thr, stride, pad,
                                        s.H, s.W, k, isa);
  };
  if (sparse) b->sparse = make(BConvKind::Sparse);
  // The reference ISA has one kernel; otherwise a sparse conv may still run dense where
  // that is faster (choice at the first run of each batch size).
  if (!sparse || (choose_ && isa != Isa::Ref)) b->dense = make(BConvKind::Dense);
  // Tiny maps (issue 20): the channel-vectorised kernel of bconv_tiny.h competes in the
  // choice where the output map has at most 16 pixels (ReActNet-18's 2x2 stage, ResNet-18's
  // 4x4 one) and its work is within 2x of the sparse kernel's (~12 instructions a row-vector
  // against ~4 a 1-bit): a candidate that cannot win costs the first run a call per round and
  // risks a noisy choice (at 4x4 and 1 % ones it is 3x slower). SBNN_TINY_MAPS=0 in the
  // environment leaves it out, =only runs it wherever it fits, without timing the others.
  const char* tiny_env = std::getenv("SBNN_TINY_MAPS");
  const bool tiny_on = !(tiny_env && tiny_env[0] == '0');
  const bool tiny_only = tiny_env && std::string(tiny_env) == "only";
  if (tiny_on && b->sparse && choose_ && isa != Isa::Ref) {
    const ConvGeom& sg = b->sparse->geom();
    const bool cheap = tiny_only || 3 * BConvTiny::row_vectors(Co, Ci, kh, kw, stride, pad,
                                                               s.H, s.W, isa) <=
                                        2 * b->sparse->ones();
    if (cheap && BConvTiny::fits(Ci, kh, kw, sg.Ho, sg.Wo))
      b->tiny = std::make_shared<BConvTiny>(bits, Co, Ci, kh, kw, eta, xi, bias, thr, stride,
                                            pad, s.H, s.W, isa);
    b->tiny_only = tiny_only;
  }
  ThreadPool* pool = &pool_;
  const ConvGeom& g = (b->sparse ? b->sparse : b->dense)->geom();
  const int r = push(sparse ? "sbconv2d" : "bconv2d_dense", {t},
                     TensorShape{Co, g.Ho, g.Wo, false},
                     [b, pool](const std::vector<const float*>& in, float* out, int N) {
                       b->run(in[0], N, out, pool, BConvPost());
                     },
                     Kind::BConv);
  ops_.back().bconv = b;
  return r;
}

int Engine::conv2d_ex(int t, const float* w, int Co, int Cig, int kh, int kw, const float* bias,
                      const ConvGeometry& geo) {
  check_tensor(t, "conv2d");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("conv2d", "input is a flat tensor " + s.str());
  if (static_cast<int64_t>(Cig) * geo.groups != s.C)
    throw err("conv2d", "weight has " + std::to_string(Cig) + " input channels per group, " +
                            std::to_string(geo.groups) + " groups, tensor is " + s.str());
  auto conv = std::make_shared<FloatConv>(w, Co, s.C, kh, kw, bias, geo, s.H, s.W);
  ThreadPool* pool = &pool_;
  const int r = push("conv2d", {t}, TensorShape{Co, conv->Ho(), conv->Wo(), false},
                     [conv, pool](const std::vector<const float*>& in, float* out, int N) {
                       conv->forward(in[0], N, out, pool);
                     },
                     Kind::FloatConv);
  ops_.back().kernel = geo.groups == s.C && s.C > 1 ? std::string("depthwise")
                                         : std::string("gemm:") + conv->gemm_name();
  ops_.back().fconv = conv;
  return r;
}

int Engine::sbconv2d_ex(int t, const uint8_t* bits, int Co, int Cig, int kh, int kw,
                        const float* eta, const float* xi, const float* bias, const float* thr,
                        const ConvGeometry& geo) {
  check_tensor(t, "sbconv2d");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("sbconv2d", "input is a flat tensor " + s.str());
  if (static_cast<int64_t>(Cig) * geo.groups != s.C)
    throw err("sbconv2d", "bits have " + std::to_string(Cig) + " input channels per group, " +
                              std::to_string(geo.groups) + " groups, tensor is " + s.str());
  auto b = std::make_shared<BConvDirect>(bits, Co, s.C, kh, kw, eta, xi, bias, thr, geo, s.H,
                                         s.W);
  ThreadPool* pool = &pool_;
  const int r = push("sbconv2d", {t}, TensorShape{Co, b->Ho(), b->Wo(), false},
                     [b, pool](const std::vector<const float*>& in, float* out, int N) {
                       b->forward(in[0], N, out, pool);
                     });
  ops_.back().kernel = "direct";
  return r;
}

int Engine::affine(int t, const float* scale, const float* shift, int C) {
  check_tensor(t, "affine");
  const TensorShape s = shapes_[t];
  if (C != s.C)
    throw err("affine", "scale/shift have " + std::to_string(C) + " entries, tensor is " +
                            s.str());
  std::vector<float> a(scale, scale + C), b(shift, shift + C);
  ThreadPool* pool = &pool_;
  const int hw = s.H * s.W;
  return push("affine", {t}, s,
              [a, b, s, hw, pool](const std::vector<const float*>& in, float* out, int N) {
                for_planes(*pool, N, s.C, [&](int n, int c) {
                  const size_t o = (static_cast<size_t>(n) * s.C + c) * hw;
                  const float* __restrict src = in[0] + o;
                  float* __restrict dst = out + o;
                  const float sc = a[c], sh = b[c];
                  for (int i = 0; i < hw; ++i) dst[i] = src[i] * sc + sh;
                });
              });
}

int Engine::hardtanh(int t, float lo, float hi) {
  check_tensor(t, "hardtanh");
  if (!(lo <= hi)) throw err("hardtanh", "lo must be <= hi");
  const TensorShape s = shapes_[t];
  const int r = push("hardtanh", {t}, s,
                     [s, lo, hi](const std::vector<const float*>& in, float* out, int N) {
                       const size_t n = static_cast<size_t>(N) * s.numel();
                       for (size_t i = 0; i < n; ++i)
                         out[i] = std::min(std::max(in[0][i], lo), hi);
                     },
                     Kind::Hardtanh);
  ops_.back().lo = lo;
  ops_.back().hi = hi;
  return r;
}

int Engine::relu(int t) {
  check_tensor(t, "relu");
  const TensorShape s = shapes_[t];
  return push("relu", {t}, s, [s](const std::vector<const float*>& in, float* out, int N) {
    const size_t n = static_cast<size_t>(N) * s.numel();
    for (size_t i = 0; i < n; ++i) out[i] = in[0][i] > 0.0f ? in[0][i] : 0.0f;
  });
}

namespace {
float activate(int kind, float alpha, float x) {
  switch (kind) {
    case 0: return x >= 0.0f ? x : alpha * x;
    case 1: return 1.0f / (1.0f + std::exp(-x));
    case 2: return std::tanh(x);
    case 3: return x / (1.0f + std::exp(-x));
    case 4: return x * std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    default: return std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f;
  }
}
}  // namespace

int Engine::activation(int t, int kind, float alpha) {
  check_tensor(t, "activation");
  if (kind < 0 || kind > 5) throw err("activation", "unknown kind " + std::to_string(kind));
  const TensorShape s = shapes_[t];
  return push("activation", {t}, s,
              [s, kind, alpha](const std::vector<const float*>& in, float* out, int N) {
                const size_t n = static_cast<size_t>(N) * s.numel();
                for (size_t i = 0; i < n; ++i) out[i] = activate(kind, alpha, in[0][i]);
              });
}

int Engine::softmax(int t) {
  check_tensor(t, "softmax");
  const TensorShape s = shapes_[t];
  return push("softmax", {t}, s, [s](const std::vector<const float*>& in, float* out, int N) {
    const size_t hw = static_cast<size_t>(s.H) * s.W;
    for (int n = 0; n < N; ++n) {
      const float* x = in[0] + static_cast<size_t>(n) * s.numel();
      float* y = out + static_cast<size_t>(n) * s.numel();
      for (size_t p = 0; p < hw; ++p) {
        float m = x[p];
        for (int c = 1; c < s.C; ++c) m = std::max(m, x[c * hw + p]);
        float sum = 0.0f;
        for (int c = 0; c < s.C; ++c) {
          const float e = std::exp(x[c * hw + p] - m);
          y[c * hw + p] = e;
          sum += e;
        }
        for (int c = 0; c < s.C; ++c) y[c * hw + p] /= sum;
      }
    }
  });
}

int Engine::rprelu(int t, const float* shift_in, const float* slope, const float* shift_out,
                   int C) {
  check_tensor(t, "rprelu");
  const TensorShape s = shapes_[t];
  if (C != s.C)
    throw err("rprelu", "parameters have " + std::to_string(C) + " entries, tensor is " +
                            s.str());
  std::vector<float> s1(shift_in, shift_in + C), a(slope, slope + C), s2(shift_out, shift_out + C);
  auto all = std::make_shared<std::vector<float>>(s1);
  all->insert(all->end(), a.begin(), a.end());
  all->insert(all->end(), s2.begin(), s2.end());
  ThreadPool* pool = &pool_;
  const int hw = s.H * s.W;
  const int r = push("rprelu", {t}, s,
              [s1, a, s2, s, hw, pool](const std::vector<const float*>& in, float* out, int N) {
                for_planes(*pool, N, s.C, [&](int n, int c) {
                  const size_t o = (static_cast<size_t>(n) * s.C + c) * hw;
                  const float* __restrict src = in[0] + o;
                  float* __restrict dst = out + o;
                  const float sh = s1[c], sl = a[c], so = s2[c];
                  // branch-free (v >= 0 ? v : a * v): see post_plane in kernels_impl.inc
                  for (int i = 0; i < hw; ++i) {
                    const float v = src[i] - sh;
                    dst[i] = (std::max(v, 0.0f) + sl * std::min(v, 0.0f)) + so;
                  }
                });
              },
              Kind::RPReLU);
  ops_.back().rp = all;
  return r;
}

int Engine::add(int a, int b) {
  check_tensor(a, "add");
  check_tensor(b, "add");
  const TensorShape sa = shapes_[a], sb = shapes_[b];
  if (sa.C != sb.C || sa.H != sb.H || sa.W != sb.W || sa.flat != sb.flat)
    throw err("add", "shape mismatch " + sa.str() + " vs " + sb.str());
  return push(
      "add", {a, b}, sa,
      [sa](const std::vector<const float*>& in, float* out, int N) {
        const size_t n = static_cast<size_t>(N) * sa.numel();
        for (size_t i = 0; i < n; ++i) out[i] = in[0][i] + in[1][i];
      },
      Kind::Add);
}

int Engine::eltwise(int a, int b, int kind) {
  check_tensor(a, "eltwise");
  check_tensor(b, "eltwise");
  if (kind != 0 && kind != 1) throw err("eltwise", "unknown kind " + std::to_string(kind));
  const TensorShape sa = shapes_[a], sb = shapes_[b];
  const bool same = sa.C == sb.C && sa.H == sb.H && sa.W == sb.W && sa.flat == sb.flat;
  const bool per_channel = sa.C == sb.C && sb.H == 1 && sb.W == 1 && !sa.flat && !sb.flat;
  if (!same && !per_channel)
    throw err("eltwise", "cannot broadcast " + sb.str() + " to " + sa.str());
  const size_t bhw = same ? static_cast<size_t>(sa.H) * sa.W : 1;
  return push("eltwise", {a, b}, sa,
              [sa, bhw, kind](const std::vector<const float*>& in, float* out, int N) {
                const size_t hw = static_cast<size_t>(sa.H) * sa.W;
                for (size_t nc = 0; nc < static_cast<size_t>(N) * sa.C; ++nc) {
                  const float* x = in[0] + nc * hw;
                  const float* y = in[1] + nc * bhw;
                  float* o = out + nc * hw;
                  for (size_t i = 0; i < hw; ++i) {
                    const float v = y[bhw == 1 ? 0 : i];
                    o[i] = kind == 0 ? x[i] * v : x[i] + v;
                  }
                }
              });
}

int Engine::concat(int a, int b) {
  check_tensor(a, "concat");
  check_tensor(b, "concat");
  const TensorShape sa = shapes_[a], sb = shapes_[b];
  if (sa.H != sb.H || sa.W != sb.W || sa.flat != sb.flat)
    throw err("concat", "cannot join " + sa.str() + " and " + sb.str() + " along channels");
  TensorShape o = sa;
  o.C = sa.C + sb.C;
  return push("concat", {a, b}, o, [sa, sb](const std::vector<const float*>& in, float* out,
                                             int N) {
    const size_t na = sa.numel(), nb = sb.numel();
    for (int n = 0; n < N; ++n) {
      std::copy(in[0] + n * na, in[0] + (n + 1) * na, out + n * (na + nb));
      std::copy(in[1] + n * nb, in[1] + (n + 1) * nb, out + n * (na + nb) + na);
    }
  });
}

int Engine::avgpool(int t, int k, int stride, int pad, bool count_include_pad) {
  return pool2d(t, false, square(k, stride, pad), count_include_pad);
}

int Engine::maxpool(int t, int k, int stride, int pad) {
  return pool2d(t, true, square(k, stride, pad), true);
}

int Engine::pool2d(int t, bool is_max, const PoolGeom& g, bool count_include_pad) {
  const char* name = is_max ? "maxpool" : "avgpool";
  check_tensor(t, name);
  const TensorShape s = shapes_[t];
  const TensorShape o = pooled_shape(s, g, name);
  const int Ho = o.H, Wo = o.W;
  ThreadPool* pool = &pool_;
  const bool shortcut = !is_max && g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 &&
                        g.pt == 0 && g.pl == 0 && g.pb == 0 && g.pr == 0 && !g.ceil;
  if (is_max) {  // any window: floatops.cpp's kernel over runs of whole planes
    const MaxPoolGeom mg{s.H, s.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, Ho, Wo};
    const Isa isa = default_isa();
    return push(name, {t}, o, [=](const std::vector<const float*>& in, float* out, int N) {
      const int total = N * s.C;
      const int chunks = pool->size() > 1 ? std::min(total, 4 * pool->size()) : 1;
      auto run = [&](int k) {
        const int i0 = static_cast<int>(static_cast<int64_t>(total) * k / chunks);
        const int i1 = static_cast<int>(static_cast<int64_t>(total) * (k + 1) / chunks);
        maxpool_planes(in[0] + static_cast<size_t>(i0) * s.H * s.W, i1 - i0, mg,
                       out + static_cast<size_t>(i0) * Ho * Wo, isa);
      };
      if (chunks > 1)
        pool->parallel_for(chunks, run);
      else
        run(0);
    });
  }
  return push(name, {t}, o, [=](const std::vector<const float*>& in, float* out, int N) {
    for_planes(*pool, N, s.C, [&](int n, int c) {
      const float* x = in[0] + (static_cast<size_t>(n) * s.C + c) * s.H * s.W;
      float* y = out + (static_cast<size_t>(n) * s.C + c) * Ho * Wo;
      if (shortcut) {  // the ReActNet shortcut: no borders
        for (int oh = 0; oh < Ho; ++oh) {
          const float* r0 = x + static_cast<size_t>(2 * oh) * s.W;
          const float* r1 = r0 + s.W;
          for (int ow = 0; ow < Wo; ++ow)
            y[oh * Wo + ow] = (((r0[2 * ow] + r0[2 * ow + 1]) + r1[2 * ow]) + r1[2 * ow + 1]) / 4.0f;
        }
        return;
      }
      for (int oh = 0; oh < Ho; ++oh) {
        const int h0 = oh * g.sh - g.pt;
        const int h1 = std::min(h0 + g.kh, s.H + g.pb);  // past the trailing pad: not counted
        const int a0 = std::max(h0, 0), a1 = std::min(h1, s.H);
        for (int ow = 0; ow < Wo; ++ow) {
          const int w0 = ow * g.sw - g.pl;
          const int w1 = std::min(w0 + g.kw, s.W + g.pr);
          const int b0 = std::max(w0, 0), b1 = std::min(w1, s.W);
          float sum = 0.0f;
          for (int h = a0; h < a1; ++h)
            for (int w = b0; w < b1; ++w) sum += x[h * s.W + w];
          const int cnt = count_include_pad ? (h1 - h0) * (w1 - w0) : (a1 - a0) * (b1 - b0);
          y[oh * Wo + ow] = sum / static_cast<float>(cnt);
        }
      }
    });
  });
}

int Engine::global_avgpool(int t) {
  check_tensor(t, "global_avgpool");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("global_avgpool", "input is a flat tensor " + s.str());
  const int hw = s.H * s.W;
  return push("global_avgpool", {t}, TensorShape{s.C, 1, 1, false},
              [s, hw](const std::vector<const float*>& in, float* out, int N) {
                for (size_t q = 0; q < static_cast<size_t>(N) * s.C; ++q) {
                  float sum = 0.0f;
                  for (int i = 0; i < hw; ++i) sum += in[0][q * hw + i];
                  out[q] = sum / static_cast<float>(hw);
                }
              });
}

int Engine::flatten(int t) {
  check_tensor(t, "flatten");
  const TensorShape s = shapes_[t];
  const size_t n = s.numel();
  return push("flatten", {t}, TensorShape{static_cast<int>(n), 1, 1, true},
              [n](const std::vector<const float*>& in, float* out, int N) {
                std::copy(in[0], in[0] + static_cast<size_t>(N) * n, out);
              });
}

int Engine::reshape(int t, int C, int H, int W, bool flat) {
  check_tensor(t, "reshape");
  const TensorShape s = shapes_[t];
  const TensorShape o{C, flat ? 1 : H, flat ? 1 : W, flat};
  if (C < 1 || H < 1 || W < 1 || o.numel() != s.numel())
    throw err("reshape", "cannot reshape " + s.str() + " to " + o.str());
  const size_t n = s.numel();
  return push("reshape", {t}, o, [n](const std::vector<const float*>& in, float* out, int N) {
    std::copy(in[0], in[0] + static_cast<size_t>(N) * n, out);
  });
}

int Engine::channel_shuffle(int t, int groups) {
  check_tensor(t, "channel_shuffle");
  const TensorShape s = shapes_[t];
  if (s.flat || groups < 1 || s.C % groups != 0)
    throw err("channel_shuffle", std::to_string(groups) + " groups do not divide " + s.str());
  const int per = s.C / groups;
  const size_t hw = static_cast<size_t>(s.H) * s.W;
  return push("channel_shuffle", {t}, s,
              [s, groups, per, hw](const std::vector<const float*>& in, float* out, int N) {
                for (int n = 0; n < N; ++n)
                  for (int i = 0; i < groups; ++i)
                    for (int j = 0; j < per; ++j) {
                      const float* x = in[0] + (static_cast<size_t>(n) * s.C + i * per + j) * hw;
                      std::copy(x, x + hw, out + (static_cast<size_t>(n) * s.C + j * groups + i) * hw);
                    }
              });
}

namespace {

// Source index and weight of the far neighbour of output position o along one axis of a
// bilinear upsampling from n to n * scale (PyTorch's upsample_bilinear2d rule).
void bilinear_tap(int o, int n, int scale, bool align_corners, int& i0, int& i1, float& l1) {
  float src;
  if (align_corners) {
    const int on = n * scale;
    src = on > 1 ? static_cast<float>(n - 1) / static_cast<float>(on - 1) * static_cast<float>(o)
                 : 0.0f;
  } else {
    src = (1.0f / static_cast<float>(scale)) * (static_cast<float>(o) + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
  }
  i0 = std::min(static_cast<int>(src), n - 1);
  i1 = std::min(i0 + 1, n - 1);
  l1 = src - static_cast<float>(i0);
}

}  // namespace

int Engine::upsample(int t, int scale, int mode, bool align_corners) {
  check_tensor(t, "upsample");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("upsample", "input is a flat tensor " + s.str());
  if (scale < 1 || scale > 64 || (mode != 0 && mode != 1))
    throw err("upsample", "need 1 <= scale <= 64 and mode 0 (nearest) or 1 (bilinear)");
  const TensorShape o{s.C, s.H * scale, s.W * scale, false};
  ThreadPool* pool = &pool_;
  return push("upsample", {t}, o, [=](const std::vector<const float*>& in, float* out, int N) {
    for_planes(*pool, N, s.C, [&](int n, int c) {
      const float* x = in[0] + (static_cast<size_t>(n) * s.C + c) * s.H * s.W;
      float* y = out + (static_cast<size_t>(n) * s.C + c) * o.H * o.W;
      for (int oh = 0; oh < o.H; ++oh) {
        if (mode == 0) {
          const float* r = x + static_cast<size_t>(oh / scale) * s.W;
          for (int ow = 0; ow < o.W; ++ow) y[oh * o.W + ow] = r[ow / scale];
          continue;
        }
        int h0, h1, w0, w1;
        float lh, lw;
        bilinear_tap(oh, s.H, scale, align_corners, h0, h1, lh);
        const float* r0 = x + static_cast<size_t>(h0) * s.W;
        const float* r1 = x + static_cast<size_t>(h1) * s.W;
        for (int ow = 0; ow < o.W; ++ow) {
          bilinear_tap(ow, s.W, scale, align_corners, w0, w1, lw);
          y[oh * o.W + ow] = (1.0f - lh) * ((1.0f - lw) * r0[w0] + lw * r0[w1]) +
                             lh * ((1.0f - lw) * r1[w0] + lw * r1[w1]);
        }
      }
    });
  });
}

int Engine::linear(int t, const float* w, int O, int I, const float* bias) {
  check_tensor(t, "linear");
  const TensorShape s = shapes_[t];
  if (!s.flat) throw err("linear", "input must be flat (call flatten first), got " + s.str());
  if (I != s.C)
    throw err("linear", "weight has " + std::to_string(I) + " input features, tensor is " +
                            s.str());
  if (O < 1) throw err("linear", "out_features must be >= 1");
  auto lin = std::make_shared<const FloatLinear>(w, O, I, bias, default_isa());
  ThreadPool* pool = &pool_;
  const int id = push("linear", {t}, TensorShape{O, 1, 1, true},
                      [lin, pool](const std::vector<const float*>& in, float* out, int N) {
                        lin->forward(in[0], N, out, pool);
                      });
  ops_.back().kernel = std::string("gemm:") + lin->gemm_name();
  return id;
}

// -- int8 layers (core/int8.h) --------------------------------------------------------------

int Engine::qconv2d(int t, const int8_t* w, const float* scale, const float* bias,
                    float x_scale, int x_zero, QGeom g, Isa isa) {
  check_tensor(t, "qconv2d");
  const TensorShape s = shapes_[t];
  if (s.flat) throw err("qconv2d", "input is a flat tensor " + s.str());
  if (g.Ci != s.C || g.H != s.H || g.W != s.W)
    throw err("qconv2d", "geometry does not match the input tensor " + s.str());
  auto conv = std::make_shared<QConv>(w, scale, bias, x_scale, x_zero, g, isa);
  ThreadPool* pool = &pool_;
  const int r = push("qconv2d", {t}, TensorShape{g.Co, g.Ho, g.Wo, false},
                     [conv, pool](const std::vector<const float*>& in, float* out, int N) {
                       conv->forward(in[0], N, out, pool);
                     });
  ops_.back().kernel = std::string("int8:") + conv->kernel_name();
  return r;
}

int Engine::qlinear(int t, const int8_t* w, int O, int I, const float* scale, const float* bias,
                    float x_scale, int x_zero, Isa isa) {
  check_tensor(t, "qlinear");
  const TensorShape s = shapes_[t];
  if (!s.flat) throw err("qlinear", "input must be flat (call flatten first), got " + s.str());
  if (I != s.C || O < 1)
    throw err("qlinear", "weight (" + std::to_string(O) + ", " + std::to_string(I) +
                             ") does not fit " + s.str());
  QGeom g;
  g.Ci = I;
  g.Co = O;
  auto conv = std::make_shared<QConv>(w, scale, bias, x_scale, x_zero, g, isa);
  ThreadPool* pool = &pool_;
  const int r = push("qlinear", {t}, TensorShape{O, 1, 1, true},
                     [conv, pool](const std::vector<const float*>& in, float* out, int N) {
                       conv->forward(in[0], N, out, pool);
                     });
  ops_.back().kernel = std::string("int8:") + conv->kernel_name();
  return r;
}

void Engine::set_output(int t) {
  check_tensor(t, "set_output");
  output_ = t;
  plan_valid_ = false;
}

void Engine::run(const float* x, int N, float* y, LayerTimes* times) const {
  const int T = pool_.size();
  if (T > 1 && N >= 2 && !times) {
    // Two batch slices per thread, as even as can be, taken in turn by whichever thread is
    // free (a thread the OS preempts leaves its second slice to the others); every op of a
    // slice runs on its thread.
    const TensorShape& is = input_shape();
    const size_t in_sz = is.numel(), out_sz = output_shape().numel();
    plan();  // built once, before the threads share it
    const int S = std::min(N, 2 * T);
    pool_.parallel_for(S, [&](int k) {
      const int n0 = static_cast<int>(static_cast<int64_t>(N) * k / S);
      const int n1 = static_cast<int>(static_cast<int64_t>(N) * (k + 1) / S);
      run_steps(x + static_cast<size_t>(n0) * in_sz, n1 - n0, y + static_cast<size_t>(n0) * out_sz,
                nullptr);
    });
    return;
  }
  run_steps(x, N, y, times);
}

void Engine::run_steps(const float* x, int N, float* y, LayerTimes* times) const {
  const TensorShape& out_shape = output_shape();
  input_shape();
  const int nt = static_cast<int>(shapes_.size());
  const std::vector<Op>& ops = plan();
  // One arena for this run, N times the memory plan's (sbnn_runtime.passes.plan_buffers): each
  // tensor at N times its offset for one image. Its own per run, so that concurrent runs of one
  // engine never share state; not zeroed (every op writes its whole output).
  constexpr size_t kAlignFloats = static_cast<size_t>(kArenaAlign) / sizeof(float);
  const size_t n = static_cast<size_t>(N);
  if (n > 0 &&
      run_floats_ > (std::numeric_limits<size_t>::max() / sizeof(float) - kAlignFloats) / n)
    throw std::length_error("Engine.run: the arena of a batch of " + std::to_string(N) +
                            " does not fit the address space");
  std::unique_ptr<float[]> arena(new float[n * run_floats_ + kAlignFloats]);
  float* base = arena.get();
  base += (kAlignFloats - reinterpret_cast<uintptr_t>(base) / sizeof(float) % kAlignFloats) %
          kAlignFloats;
  std::vector<const float*> ptr(nt, nullptr);
  ptr[input_] = x;
  if (times) times->clear();
  std::vector<const float*> ins;
  for (const Op& op : ops) {
    float* out = base + n * run_off_[op.output];
    ins.clear();
    for (int t : op.inputs) ins.push_back(ptr[t]);
    if (times) {
      const auto t0 = std::chrono::steady_clock::now();
      op.fn(ins, out, N);
      const auto t1 = std::chrono::steady_clock::now();
      times->emplace_back(op.name, std::chrono::duration<double>(t1 - t0).count());
    } else {
      op.fn(ins, out, N);
    }
    ptr[op.output] = out;
  }
  const size_t n_out = static_cast<size_t>(N) * out_shape.numel();
  if (output_ == input_)
    std::copy(x, x + n_out, y);
  else
    std::copy(ptr[output_], ptr[output_] + n_out, y);
}

}  // namespace sbnn
