// The int8 kernels (core/int8.h) of every ISA this CPU runs against the scalar twin, bit for
// bit, on many shapes (groups, dilation, strides, pads, taps past several 64-byte blocks, more
// output positions than one task). scripts/cross_test.sh runs it under qemu-aarch64 with and
// without the dot product extension; x86 runs the same kernels from Python
// (runtime/tests/test_int8.py). Prints "int8_test: N cases, kernel K, F failures".
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/int8.h"
#include "core/isa.h"
#include "core/threadpool.h"

namespace {

struct Case {
  int N, Ci, Co, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups;
};

}  // namespace

int main() {
  using namespace sbnn;
  const Case cases[] = {
      {1, 3, 64, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
      {2, 64, 128, 8, 8, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1, 1},
      {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},
      {3, 5, 7, 9, 11, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1},
      {1, 8, 8, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 8},
      {2, 12, 6, 7, 9, 3, 2, 1, 2, 1, 0, 1, 1, 2, 1, 3},
      {1, 70, 9, 5, 5, 3, 3, 1, 1, 0, 1, 2, 0, 1, 1, 1},
      {1, 4, 5, 49, 10, 10, 4, 2, 2, 4, 1, 5, 2, 1, 1, 1},
      {2, 130, 33, 6, 6, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},
      {3, 300, 37, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},  // a linear: one position
  };
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::uniform_int_distribution<int> wd(-127, 127), zd(0, 255);
  ThreadPool pool(3);
  int n_cases = 0, fails = 0;
  const char* name = "scalar";
  qgemm_for(default_isa(), &name);
  for (const Case& c : cases) {
    QGeom g;
    g.Ci = c.Ci, g.H = c.H, g.W = c.W, g.Co = c.Co, g.kh = c.kh, g.kw = c.kw, g.sh = c.sh;
    g.sw = c.sw, g.pt = c.pt, g.pl = c.pl, g.pb = c.pb, g.pr = c.pr, g.dh = c.dh, g.dw = c.dw;
    g.groups = c.groups;
    g.Ho = (c.H + c.pt + c.pb - (c.kh - 1) * c.dh - 1) / c.sh + 1;
    g.Wo = (c.W + c.pl + c.pr - (c.kw - 1) * c.dw - 1) / c.sw + 1;
    std::vector<float> x(static_cast<size_t>(c.N) * c.Ci * c.H * c.W), scale(c.Co), bias(c.Co);
    std::vector<int8_t> w(static_cast<size_t>(c.Co) * (c.Ci / c.groups) * c.kh * c.kw);
    for (float& v : x) v = nd(rng);
    for (int8_t& v : w) v = static_cast<int8_t>(wd(rng));
    for (int o = 0; o < c.Co; ++o) scale[o] = 1e-3f * static_cast<float>(o + 1), bias[o] = nd(rng);
    const int z = zd(rng);
    const size_t out_n = static_cast<size_t>(c.N) * c.Co * g.Ho * g.Wo;
    QConv ref(w.data(), scale.data(), bias.data(), 0.05f, z, g, Isa::Ref);
    std::vector<float> want(out_n), got(out_n);
    ref.forward(x.data(), c.N, want.data(), nullptr);
    for (Isa isa : {Isa::Scalar, default_isa()}) {
      QConv q(w.data(), scale.data(), bias.data(), 0.05f, z, g, isa);
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        std::fill(got.begin(), got.end(), -1.0f);
        q.forward(x.data(), c.N, got.data(), p);
        ++n_cases;
        if (std::memcmp(got.data(), want.data(), out_n * sizeof(float)) != 0) {
          ++fails;
          std::printf("FAIL: %s, case %d\n", q.kernel_name(), static_cast<int>(&c - cases));
        }
      }
    }
  }
  std::printf("int8_test: %d cases, kernel %s, %d failures\n", n_cases, name, fails);
  return fails ? 1 : 0;
}
