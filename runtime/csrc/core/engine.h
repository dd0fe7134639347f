// The native inference runtime: a straight-line graph of ops on float tensors (C, H, W) or
// flat (F,), built once, then run on batches (N, C, H, W).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/bconv.h"
#include "core/floatops.h"
#include "core/threadpool.h"

namespace sbnn {

struct TensorShape {
  int C = 0, H = 1, W = 1;
  bool flat = false;  // (C,) feature vector, H = W = 1
  size_t numel() const { return static_cast<size_t>(C) * H * W; }
  std::string str() const;
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
  int affine(int t, const float* scale, const float* shift, int C);
  int hardtanh(int t, float lo, float hi);
  int relu(int t);
  int rprelu(int t, const float* shift_in, const float* slope, const float* shift_out, int C);
  int add(int a, int b);
  int avgpool(int t, int k, int stride, int pad, bool count_include_pad);
  int maxpool(int t, int k, int stride, int pad);
  int global_avgpool(int t);
  int flatten(int t);
  int linear(int t, const float* w, int O, int I, const float* bias);
  void set_output(int t);

  const TensorShape& shape(int t) const;
  const TensorShape& input_shape() const;
  const TensorShape& output_shape() const;
  int num_threads() const { return pool_.size(); }
  int num_ops() const { return static_cast<int>(ops_.size()); }

  using LayerTimes = std::vector<std::pair<std::string, double>>;
  // x: (N, C, H, W) matching input(); y: N * output numel floats; times, when given, gets the
  // per-op (name, seconds) of this run. A run keeps all its state (buffers, timings) to itself,
  // so one built engine may run on many threads at once; they share the thread pool, one
  // parallel section at a time. Adding ops while a run is in flight is not allowed.
  void run(const float* x, int N, float* y, LayerTimes* times = nullptr) const;

 private:
  using Fn = std::function<void(const std::vector<const float*>&, float*, int)>;
  struct Op {
    std::string name;
    std::vector<int> inputs;
    int output;
    Fn fn;
  };
  int add_tensor(const TensorShape& s);
  void check_tensor(int t, const char* op) const;
  int push(std::string name, std::vector<int> inputs, const TensorShape& out, Fn fn);

  ThreadPool pool_;
  std::vector<TensorShape> shapes_;
  std::vector<Op> ops_;
  int input_ = -1, output_ = -1;
};

}  // namespace sbnn
