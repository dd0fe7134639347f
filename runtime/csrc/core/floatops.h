// Full-precision helpers of the engine: float conv2d (im2col + blocked GEMM), linear.
#pragma once
#include <vector>

#include "core/threadpool.h"

namespace sbnn {

class FloatConv {
 public:
  // w: (Co, Ci, kh, kw), bias: (Co) or null.
  FloatConv(const float* w, int Co, int Ci, int kh, int kw, const float* bias, int stride, int pad,
            int H, int W);
  // x: (N, Ci, H, W) -> y: (N, Co, Ho, Wo)
  void forward(const float* x, int N, float* y, ThreadPool* pool) const;
  int Ho() const { return Ho_; }
  int Wo() const { return Wo_; }

 private:
  void image(const float* x, float* y, ThreadPool* pool) const;
  int Co_, Ci_, kh_, kw_, stride_, pad_, H_, W_, Ho_, Wo_;
  std::vector<float> w_, bias_;
};

// y (Co-block rows) = bias + w (rows c0..c1 of (Co, K)) @ col (K, P)
void gemm_f32(const float* w, int K, const float* col, int P, const float* bias, int c0, int c1,
              float* y);

// x: (N, I) -> y: (N, O) = x @ w^T + bias (bias may be null)
void linear_f32(const float* x, int N, const float* w, int O, int I, const float* bias, float* y,
                ThreadPool* pool);

}  // namespace sbnn
