// The per-layer fixed cost of the sparse binary conv (issue 20): sbnn::BConvLayer on the seven
// binary-conv shapes of ResNet-18 (CIFAR), batch 1, one thread, with the residual add and
// hardtanh in its epilogue as the engine runs them. With ONES = 0 every filter is all-zero, so
// a call is only the fixed cost: binarising the input into phase planes, channel and window
// sums, allocations and one epilogue per output channel.
//   fixed_cost [ONES] [SHAPE]     prints, per shape, the best of $REPS calls (default 200) in us
// Built and run against two versions of the code by benchmarks/fixed_cost.sh.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/bconv.h"
#include "core/isa.h"
using namespace sbnn;
int main(int argc, char** argv) {
  int reps = getenv("REPS") ? atoi(getenv("REPS")) : 200;
  double ones = argc > 1 ? atof(argv[1]) : 0.0;
  const char* only = argc > 2 ? argv[2] : nullptr;
  struct S { int Ci, Co, H, s; const char* nm; } shapes[] = {
      {64, 64, 32, 1, "64@32"}, {64, 128, 32, 2, "64>128s2"}, {128, 128, 16, 1, "128@16"},
      {128, 256, 16, 2, "128>256s2"}, {256, 256, 8, 1, "256@8"}, {256, 512, 8, 2, "256>512s2"},
      {512, 512, 4, 1, "512@4"}};
  const char* forced = getenv("SBNN_ISA");
  const Isa isa = forced && std::string(forced) == "scalar" ? Isa::Scalar : Isa::Avx2;
  std::mt19937 rng(1);
  for (auto& sh : shapes) {
    if (only && std::string(only) != sh.nm) continue;
    std::bernoulli_distribution bd(ones);
    std::normal_distribution<float> nd;
    std::vector<uint8_t> bits((size_t)sh.Co * sh.Ci * 9);
    for (auto& b : bits) b = bd(rng);
    std::vector<float> eta(sh.Co), xi(sh.Co), bias(sh.Co), thr(sh.Ci);
    for (auto& v : eta) v = nd(rng);
    for (auto& v : xi) v = nd(rng) * 0.1f;
    for (auto& v : bias) v = nd(rng);
    for (auto& v : thr) v = nd(rng) * 0.1f;
    BConvLayer L(bits.data(), sh.Co, sh.Ci, 3, 3, eta.data(), xi.data(), bias.data(), thr.data(),
                 sh.s, 1, sh.H, sh.H, BConvKind::Sparse, isa);
    std::vector<float> x((size_t)sh.Ci * sh.H * sh.H);
    for (auto& v : x) v = nd(rng);
    const auto& g = L.geom();
    std::vector<float> y((size_t)sh.Co * g.Ho * g.Wo), res(y.size());
    for (auto& v : res) v = nd(rng);
    BConvPost p; p.res = res.data(); p.clamp = true;
    double best = 1e9;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      L.forward(x.data(), 1, y.data(), nullptr, p);
      auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    double cs = 0;  // the same in both builds: their outputs are bit-identical
    for (float v : y) cs += v;
    printf("%-10s %8.2f us  (checksum %.4f)\n", sh.nm, best * 1e6, cs);
  }
}
