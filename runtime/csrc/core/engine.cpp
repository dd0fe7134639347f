#include "core/engine.h"

#include <algorithm>
#include <cmath>
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

int pool_out(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

// Output shape of a k x k pooling of s, or the error that says why the arguments don't fit.
TensorShape pooled_shape(const TensorShape& s, int k, int stride, int pad, const char* op) {
  if (s.flat) throw err(op, "input is a flat tensor " + s.str());
  if (k < 1 || stride < 1 || pad < 0 || 2 * pad > k)
    throw err(op, "need k >= 1, stride >= 1, 0 <= pad <= k / 2");
  const int Ho = pool_out(s.H, k, stride, pad), Wo = pool_out(s.W, k, stride, pad);
  if (Ho < 1 || Wo < 1 || s.H + 2 * pad < k || s.W + 2 * pad < k)
    throw err(op, "kernel larger than the padded input " + s.str());
  return TensorShape{s.C, Ho, Wo, false};
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

int Engine::push(std::string name, std::vector<int> inputs, const TensorShape& out, Fn fn) {
  const int t = add_tensor(out);
  ops_.push_back(Op{std::move(name), std::move(inputs), t, std::move(fn)});
  return t;
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
  return push("conv2d", {t}, TensorShape{Co, conv->Ho(), conv->Wo(), false},
              [conv, pool](const std::vector<const float*>& in, float* out, int N) {
                conv->forward(in[0], N, out, pool);
              });
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
  auto layer = std::make_shared<BConvLayer>(bits, Co, Ci, kh, kw, eta, xi, bias, thr, stride, pad,
                                            s.H, s.W,
                                            sparse ? BConvKind::Sparse : BConvKind::Dense, isa);
  ThreadPool* pool = &pool_;
  const ConvGeom& g = layer->geom();
  return push(sparse ? "sbconv2d" : "bconv2d_dense", {t}, TensorShape{Co, g.Ho, g.Wo, false},
              [layer, pool](const std::vector<const float*>& in, float* out, int N) {
                layer->forward(in[0], N, out, pool);
              });
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
                  for (int i = 0; i < hw; ++i) out[o + i] = in[0][o + i] * a[c] + b[c];
                });
              });
}

int Engine::hardtanh(int t, float lo, float hi) {
  check_tensor(t, "hardtanh");
  if (!(lo <= hi)) throw err("hardtanh", "lo must be <= hi");
  const TensorShape s = shapes_[t];
  return push("hardtanh", {t}, s, [s, lo, hi](const std::vector<const float*>& in, float* out,
                                              int N) {
    const size_t n = static_cast<size_t>(N) * s.numel();
    for (size_t i = 0; i < n; ++i) out[i] = std::min(std::max(in[0][i], lo), hi);
  });
}

int Engine::relu(int t) {
  check_tensor(t, "relu");
  const TensorShape s = shapes_[t];
  return push("relu", {t}, s, [s](const std::vector<const float*>& in, float* out, int N) {
    const size_t n = static_cast<size_t>(N) * s.numel();
    for (size_t i = 0; i < n; ++i) out[i] = in[0][i] > 0.0f ? in[0][i] : 0.0f;
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
  ThreadPool* pool = &pool_;
  const int hw = s.H * s.W;
  return push("rprelu", {t}, s,
              [s1, a, s2, s, hw, pool](const std::vector<const float*>& in, float* out, int N) {
                for_planes(*pool, N, s.C, [&](int n, int c) {
                  const size_t o = (static_cast<size_t>(n) * s.C + c) * hw;
                  for (int i = 0; i < hw; ++i) {
                    const float v = in[0][o + i] - s1[c];
                    out[o + i] = (v >= 0.0f ? v : a[c] * v) + s2[c];
                  }
                });
              });
}

int Engine::add(int a, int b) {
  check_tensor(a, "add");
  check_tensor(b, "add");
  const TensorShape sa = shapes_[a], sb = shapes_[b];
  if (sa.C != sb.C || sa.H != sb.H || sa.W != sb.W || sa.flat != sb.flat)
    throw err("add", "shape mismatch " + sa.str() + " vs " + sb.str());
  return push("add", {a, b}, sa, [sa](const std::vector<const float*>& in, float* out, int N) {
    const size_t n = static_cast<size_t>(N) * sa.numel();
    for (size_t i = 0; i < n; ++i) out[i] = in[0][i] + in[1][i];
  });
}

int Engine::avgpool(int t, int k, int stride, int pad, bool count_include_pad) {
  check_tensor(t, "avgpool");
  const TensorShape s = shapes_[t];
  const TensorShape o = pooled_shape(s, k, stride, pad, "avgpool");
  const int Ho = o.H, Wo = o.W;
  ThreadPool* pool = &pool_;
  return push("avgpool", {t}, o,
              [=](const std::vector<const float*>& in, float* out, int N) {
                for_planes(*pool, N, s.C, [&](int n, int c) {
                  const float* x = in[0] + (static_cast<size_t>(n) * s.C + c) * s.H * s.W;
                  float* y = out + (static_cast<size_t>(n) * s.C + c) * Ho * Wo;
                  for (int oh = 0; oh < Ho; ++oh)
                    for (int ow = 0; ow < Wo; ++ow) {
                      float sum = 0.0f;
                      int cnt = 0;
                      for (int ky = 0; ky < k; ++ky) {
                        const int h = oh * stride + ky - pad;
                        if (h < 0 || h >= s.H) continue;
                        for (int kx = 0; kx < k; ++kx) {
                          const int w = ow * stride + kx - pad;
                          if (w < 0 || w >= s.W) continue;
                          sum += x[h * s.W + w];
                          ++cnt;
                        }
                      }
                      y[oh * Wo + ow] = sum / static_cast<float>(count_include_pad ? k * k : cnt);
                    }
                });
              });
}

int Engine::maxpool(int t, int k, int stride, int pad) {
  check_tensor(t, "maxpool");
  const TensorShape s = shapes_[t];
  const TensorShape o = pooled_shape(s, k, stride, pad, "maxpool");
  const int Ho = o.H, Wo = o.W;
  ThreadPool* pool = &pool_;
  return push("maxpool", {t}, o,
              [=](const std::vector<const float*>& in, float* out, int N) {
                for_planes(*pool, N, s.C, [&](int n, int c) {
                  const float* x = in[0] + (static_cast<size_t>(n) * s.C + c) * s.H * s.W;
                  float* y = out + (static_cast<size_t>(n) * s.C + c) * Ho * Wo;
                  for (int oh = 0; oh < Ho; ++oh)
                    for (int ow = 0; ow < Wo; ++ow) {
                      float m = -std::numeric_limits<float>::infinity();
                      for (int ky = 0; ky < k; ++ky) {
                        const int h = oh * stride + ky - pad;
                        if (h < 0 || h >= s.H) continue;
                        for (int kx = 0; kx < k; ++kx) {
                          const int w = ow * stride + kx - pad;
                          if (w < 0 || w >= s.W) continue;
                          const float v = x[h * s.W + w];
                          if (v > m || std::isnan(v)) m = v;
                        }
                      }
                      y[oh * Wo + ow] = m;
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

int Engine::linear(int t, const float* w, int O, int I, const float* bias) {
  check_tensor(t, "linear");
  const TensorShape s = shapes_[t];
  if (!s.flat) throw err("linear", "input must be flat (call flatten first), got " + s.str());
  if (I != s.C)
    throw err("linear", "weight has " + std::to_string(I) + " input features, tensor is " +
                            s.str());
  if (O < 1) throw err("linear", "out_features must be >= 1");
  std::vector<float> wv(w, w + static_cast<size_t>(O) * I), bv;
  if (bias) bv.assign(bias, bias + O);
  ThreadPool* pool = &pool_;
  return push("linear", {t}, TensorShape{O, 1, 1, true},
              [wv, bv, O, I, pool](const std::vector<const float*>& in, float* out, int N) {
                linear_f32(in[0], N, wv.data(), O, I, bv.empty() ? nullptr : bv.data(), out,
                           pool);
              });
}

void Engine::set_output(int t) {
  check_tensor(t, "set_output");
  output_ = t;
}

void Engine::run(const float* x, int N, float* y, LayerTimes* times) const {
  const TensorShape& out_shape = output_shape();
  input_shape();
  const int nt = static_cast<int>(shapes_.size());
  // Last op reading each tensor, so that buffers go back to the free list early. (The loader's
  // memory limit simulates this reuse: sbnn_runtime.ops._activation_elems.)
  std::vector<int> last_use(nt, -1);
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i)
    for (int t : ops_[i].inputs) last_use[t] = i;
  std::vector<std::vector<float>> bufs(nt);
  std::vector<std::vector<float>> free_list;
  std::vector<const float*> ptr(nt, nullptr);
  ptr[input_] = x;
  if (times) times->clear();
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
    const Op& op = ops_[i];
    const size_t need = static_cast<size_t>(N) * shapes_[op.output].numel();
    std::vector<float> buf;
    for (size_t f = 0; f < free_list.size(); ++f)
      if (free_list[f].capacity() >= need) {
        buf.swap(free_list[f]);
        free_list.erase(free_list.begin() + static_cast<std::ptrdiff_t>(f));
        break;
      }
    buf.resize(need);
    std::vector<const float*> ins;
    for (int t : op.inputs) ins.push_back(ptr[t]);
    if (times) {
      const auto t0 = std::chrono::steady_clock::now();
      op.fn(ins, buf.data(), N);
      const auto t1 = std::chrono::steady_clock::now();
      times->emplace_back(op.name, std::chrono::duration<double>(t1 - t0).count());
    } else {
      op.fn(ins, buf.data(), N);
    }
    bufs[op.output].swap(buf);
    ptr[op.output] = bufs[op.output].data();
    for (int t : op.inputs)
      if (last_use[t] == i && t != output_ && t != input_ && !bufs[t].empty()) {
        free_list.push_back(std::move(bufs[t]));
        bufs[t] = std::vector<float>();
      }
  }
  const size_t n_out = static_cast<size_t>(N) * out_shape.numel();
  if (output_ == input_)
    std::copy(x, x + n_out, y);
  else
    std::copy(ptr[output_], ptr[output_] + n_out, y);
}

}  // namespace sbnn
