// Standalone test driver of the binary-conv kernels (no Python): every optimised ISA path this
// CPU runs (scalar, avx2, avx512 on x86; scalar, neon on aarch64) against the reference twin,
// exact on the integer counts, close on the float output; the float conv against a plain loop;
// plus a small engine graph, and one engine run by several std::threads at once (the race
// ThreadSanitizer looks for: SBNN_SANITIZE=thread scripts/sanitize.sh). Built by
// scripts/sanitize.sh under ASan/UBSan (or TSan), and cross-built for aarch64 and run under qemu
// by scripts/cross_test.sh.
//   kernel_test            run the checks, exit status 0 when all pass
//   kernel_test --bench    time 256->256 3x3 on 14x14 per ISA (dense p=0.5, sparse p=0.05/0.01)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/bconv.h"
#include "core/bconv_tiny.h"
#include "core/engine.h"
#include "core/floatops.h"
#include "core/isa.h"

using namespace sbnn;

namespace {

struct Case {
  int N, Ci, Co, H, W, k, s, p;
};

int g_fail = 0;

void check_case(const Case& c, double frac, unsigned seed, Isa isa, BConvKind kind, bool thr_on) {
  if (std::getenv("SBNN_TEST_VERBOSE"))  // names the case before a sanitizer report
    std::fprintf(stderr, "case %s N=%d Ci=%d Co=%d %dx%d k=%d s=%d p=%d\n", isa_name(isa), c.N,
                 c.Ci, c.Co, c.H, c.W, c.k, c.s, c.p);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud;
  std::vector<float> x(static_cast<size_t>(c.N) * c.Ci * c.H * c.W);
  for (auto& v : x) v = nd(rng);
  x[0] = 0.0f;
  std::vector<uint8_t> bits(static_cast<size_t>(c.Co) * c.Ci * c.k * c.k);
  for (auto& b : bits) b = ud(rng) < frac;
  std::vector<float> eta(c.Co), xi(c.Co), bias(c.Co), thr(c.Ci);
  for (int i = 0; i < c.Co; ++i) {
    eta[i] = 0.5f + static_cast<float>(ud(rng));
    xi[i] = 0.1f * nd(rng);
    bias[i] = nd(rng);
  }
  for (auto& t : thr) t = 0.3f * nd(rng);
  const float* tp = thr_on ? thr.data() : nullptr;
  BConvLayer ref(bits.data(), c.Co, c.Ci, c.k, c.k, eta.data(), xi.data(), bias.data(), tp, c.s,
                 c.p, c.H, c.W, kind, Isa::Ref);
  BConvLayer opt(bits.data(), c.Co, c.Ci, c.k, c.k, eta.data(), xi.data(), bias.data(), tp, c.s,
                 c.p, c.H, c.W, kind, isa);
  const ConvGeom& g = ref.geom();
  const size_t P = static_cast<size_t>(g.Ho) * g.Wo, out = c.N * c.Co * P;
  std::vector<int32_t> rc(out), rw(c.N * P), oc(out, -7), ow(c.N * P, -7);
  std::vector<float> ry(out), oy(out);
  ThreadPool pool(2);
  ref.counts(x.data(), c.N, rc.data(), rw.data(), nullptr);
  opt.counts(x.data(), c.N, oc.data(), ow.data(), &pool);
  ref.forward(x.data(), c.N, ry.data(), nullptr);
  opt.forward(x.data(), c.N, oy.data(), &pool);
  bool ok = rc == oc && rw == ow;
  for (size_t i = 0; i < out && ok; ++i)
    ok = std::fabs(ry[i] - oy[i]) <= 1e-4f * (1.0f + std::fabs(ry[i]));
  // the fused epilogue: + residual, then clamp
  std::vector<float> res(out);
  for (auto& v : res) v = nd(rng);
  BConvPost post;
  post.res = res.data();
  post.clamp = true;
  post.lo = -0.5f;
  post.hi = 0.75f;
  ref.forward(x.data(), c.N, ry.data(), nullptr, post);
  opt.forward(x.data(), c.N, oy.data(), &pool, post);
  for (size_t i = 0; i < out && ok; ++i)
    ok = std::fabs(ry[i] - oy[i]) <= 1e-4f * (1.0f + std::fabs(ry[i])) && ry[i] >= -0.5f &&
         ry[i] <= 0.75f;
  if (!ok) {
    ++g_fail;
    std::printf("FAIL %s %s N=%d Ci=%d Co=%d %dx%d k=%d s=%d p=%d frac=%.2f thr=%d\n",
                isa_name(isa), kind == BConvKind::Sparse ? "sparse" : "dense", c.N, c.Ci, c.Co,
                c.H, c.W, c.k, c.s, c.p, frac, thr_on);
  }
}

// parse_isa: every ISA this CPU runs by name, the others refused with an error.
void check_isa_names() {
  for (Isa isa : {Isa::Ref, Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    bool ok;
    try {
      const Isa got = parse_isa(isa_name(isa));
      ok = isa_supported(isa) && got == isa;
    } catch (const std::invalid_argument&) {
      ok = !isa_supported(isa);
    }
    if (!ok) {
      ++g_fail;
      std::printf("FAIL parse_isa(\"%s\")\n", isa_name(isa));
    }
  }
}

void check_engine() {
  // input -> sbconv (sparse) -> add skip -> global avg pool -> flatten -> linear, against the
  // same graph with a dense conv.
  const int C = 5;
  std::vector<uint8_t> bits(C * C * 9);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = (i * 7) % 5 == 0;
  std::vector<float> one(C, 1.0f), w(3 * C, 0.5f), x(2 * C * 6 * 6);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
  std::vector<float> y[2];
  for (int d = 0; d < 2; ++d) {
    Engine e(2);
    int t = e.input(C, 6, 6);
    int u = e.sbconv2d(t, bits.data(), C, C, 3, 3, one.data(), one.data(), one.data(), 1, 1,
                       nullptr, d == 0, default_isa());
    u = e.add(u, t);
    u = e.flatten(e.global_avgpool(u));
    e.set_output(e.linear(u, w.data(), 3, C, nullptr));
    y[d].resize(2 * 3);
    e.run(x.data(), 2, y[d].data());
  }
  for (int i = 0; i < 6; ++i)
    if (std::fabs(y[0][i] - y[1][i]) > 1e-4f) {
      ++g_fail;
      std::printf("FAIL engine sparse vs dense\n");
      break;
    }
}

// One engine (a pool of 2) over a 300-op graph, run by 4 threads at once, profiled: every run
// must give the single-threaded output and its own timings (one per op of the fused plan).
void check_engine_threads() {
  const int C = 6, H = 7, N = 2, kOps = 300;
  std::vector<uint8_t> bits(C * C * 9);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = (i * 5) % 3 == 0;
  std::vector<float> eta(C, 0.05f), zero(C, 0.0f), x(static_cast<size_t>(N) * C * H * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.37f * static_cast<float>(i));
  Engine e(2);
  int t = e.input(C, H, H);
  for (int i = 0; i < kOps; ++i) {
    if (i % 30 == 10)
      t = e.sbconv2d(t, bits.data(), C, C, 3, 3, eta.data(), zero.data(), zero.data(), 1, 1,
                     nullptr, i % 60 == 10, default_isa());
    else if (i % 2)
      t = e.hardtanh(t, -1.0f, 1.0f);
    else
      t = e.relu(t);
  }
  e.set_output(t);
  const size_t n_out = static_cast<size_t>(N) * C * H * H;
  std::vector<float> want(n_out);
  e.run(x.data(), N, want.data());
  const int n_plan = e.num_ops();  // ops of the fused plan, one timing each
  std::vector<int> bad(4, 0);
  std::vector<std::thread> ts;
  for (int k = 0; k < 4; ++k)
    ts.emplace_back([&, k] {
      std::vector<float> y(n_out);
      Engine::LayerTimes times;
      for (int r = 0; r < 10; ++r) {
        e.run(x.data(), N, y.data(), &times);
        if (y != want || static_cast<int>(times.size()) != n_plan) ++bad[k];
      }
    });
  for (auto& th : ts) th.join();
  for (int k = 0; k < 4; ++k)
    if (bad[k]) {
      ++g_fail;
      std::printf("FAIL engine shared by threads: thread %d, %d bad runs\n", k, bad[k]);
    }
  bool refused = false;
  try {
    ThreadPool p(kMaxThreads + 1);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  if (!refused) {
    ++g_fail;
    std::printf("FAIL ThreadPool(%d) was not refused\n", kMaxThreads + 1);
  }
}

// FloatConv (im2col + gemm_f32, NEON on aarch64) against a plain loop that sums in the same
// order (bias, then (ci, ky, kx)): equal bit for bit where gemm_f32 keeps that order without fused
// multiply-adds (the portable and the NEON GEMM do), else within float rounding.
void check_float_conv() {
  struct FCase { int N, Ci, Co, H, W, k, s, p; bool bias; };
  const FCase cases[] = {{1, 1, 16, 28, 28, 3, 1, 1, false}, {2, 3, 5, 7, 9, 3, 2, 1, true},
                         {1, 4, 7, 5, 6, 1, 1, 0, true},     {1, 9, 3, 11, 13, 5, 2, 2, false},
                         {2, 6, 33, 17, 19, 3, 1, 0, true},  {1, 2, 1, 1, 1, 1, 1, 0, false}};
  std::mt19937 rng(123);
  std::normal_distribution<float> nd;
  int n_exact = 0;
  for (const FCase& c : cases) {
    std::vector<float> x(static_cast<size_t>(c.N) * c.Ci * c.H * c.W),
        w(static_cast<size_t>(c.Co) * c.Ci * c.k * c.k), b(c.Co);
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    for (auto& v : b) v = nd(rng);
    FloatConv conv(w.data(), c.Co, c.Ci, c.k, c.k, c.bias ? b.data() : nullptr, c.s, c.p, c.H,
                   c.W);
    const int Ho = conv.Ho(), Wo = conv.Wo();
    std::vector<float> y(static_cast<size_t>(c.N) * c.Co * Ho * Wo), want(y.size());
    ThreadPool pool(2);
    conv.forward(x.data(), c.N, y.data(), &pool);
    for (int n = 0; n < c.N; ++n)
      for (int co = 0; co < c.Co; ++co)
        for (int oh = 0; oh < Ho; ++oh)
          for (int ow = 0; ow < Wo; ++ow) {
            float a = c.bias ? b[co] : 0.0f;
            for (int ci = 0; ci < c.Ci; ++ci)
              for (int ky = 0; ky < c.k; ++ky)
                for (int kx = 0; kx < c.k; ++kx) {
                  const int h = oh * c.s + ky - c.p, ww = ow * c.s + kx - c.p;
                  const bool in = h >= 0 && h < c.H && ww >= 0 && ww < c.W;
                  const size_t xrow = (static_cast<size_t>(n) * c.Ci + ci) * c.H;
                  const float xv = in ? x[(xrow + h) * c.W + ww] : 0.0f;
                  const float prod =
                      w[((static_cast<size_t>(co) * c.Ci + ci) * c.k + ky) * c.k + kx] * xv;
                  a = a + prod;
                }
            want[((static_cast<size_t>(n) * c.Co + co) * Ho + oh) * Wo + ow] = a;
          }
    bool ok = true, exact = true;
    for (size_t i = 0; i < y.size(); ++i) {
      exact = exact && y[i] == want[i];
      ok = ok && std::fabs(y[i] - want[i]) <= 1e-5f * (1.0f + std::fabs(want[i])) * c.Ci * c.k;
    }
    n_exact += exact;
    if (!ok) {
      ++g_fail;
      std::printf("FAIL float conv N=%d Ci=%d Co=%d %dx%d k=%d s=%d p=%d bias=%d exact=%d\n", c.N,
                  c.Ci, c.Co, c.H, c.W, c.k, c.s, c.p, c.bias, exact);
    }
  }
  std::printf("float conv: %d cases, %d bit-identical to the plain loop\n",
              static_cast<int>(sizeof(cases) / sizeof(cases[0])), n_exact);
}

void check_floatconv(Isa isa) {
  // (N, Ci, Co, H, W, k, s, p): tiles of 12/6/4 rows and 8/16/32 columns with remainders
  const Case cases[] = {{1, 3, 64, 32, 32, 3, 1, 1}, {2, 5, 7, 9, 11, 3, 2, 1},
                        {1, 1, 1, 1, 1, 1, 1, 0},    {2, 13, 25, 4, 4, 3, 1, 1},
                        {1, 64, 30, 8, 8, 1, 2, 0},  {1, 17, 13, 5, 3, 3, 1, 0}};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (const Case& c : cases) {
    std::vector<float> x(static_cast<size_t>(c.N) * c.Ci * c.H * c.W),
        w(static_cast<size_t>(c.Co) * c.Ci * c.k * c.k), b(c.Co);
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    for (auto& v : b) v = nd(rng);
    FloatConv ref(w.data(), c.Co, c.Ci, c.k, c.k, b.data(), c.s, c.p, c.H, c.W, Isa::Ref);
    FloatConv opt(w.data(), c.Co, c.Ci, c.k, c.k, b.data(), c.s, c.p, c.H, c.W, isa);
    const size_t out = static_cast<size_t>(c.N) * c.Co * ref.Ho() * ref.Wo();
    std::vector<float> ry(out), oy(out, -7.0f);
    ThreadPool pool(2);
    ref.forward(x.data(), c.N, ry.data(), nullptr);
    opt.forward(x.data(), c.N, oy.data(), &pool);
    std::vector<float> cy(out);
    opt.forward(x.data(), c.N, cy.data(), &pool, true, -0.5f, 0.5f);  // fused hardtanh
    for (size_t i = 0; i < out; ++i)
      if (cy[i] != std::min(std::max(oy[i], -0.5f), 0.5f)) {
        ++g_fail;
        std::printf("FAIL %s conv2d+hardtanh\n", isa_name(isa));
        break;
      }
    for (size_t i = 0; i < out; ++i)
      if (std::fabs(ry[i] - oy[i]) > 1e-4f * (1.0f + std::fabs(ry[i])) * c.k * std::sqrt(c.Ci)) {
        ++g_fail;
        std::printf("FAIL %s conv2d Ci=%d Co=%d %dx%d k=%d s=%d\n", isa_name(isa), c.Ci, c.Co,
                    c.H, c.W, c.k, c.s);
        break;
      }
  }
}

// Every small geometry (issue 18): input 1-4 square, kernel 1-5, stride 1-3, pad 0-2 (pad <
// kernel, the format's rule; the kernel must fit the padded input, PyTorch's), plus a fixed
// sample of non-square ones (kh != kw, H != W up to 9): the float conv against a plain loop,
// both binary kernels (binarised input) against the reference twin (exact counts), and max/avg
// pooling (pad <= k/2) and the global average pool through the engine against plain loops.
struct Geo {
  int H, W, kh, kw, s, p;
};

std::vector<Geo> small_geometries() {
  std::vector<Geo> out;
  for (int n = 1; n <= 4; ++n)
    for (int k = 1; k <= 5; ++k)
      for (int s = 1; s <= 3; ++s)
        for (int p = 0; p <= 2; ++p)
          if (p < k && n + 2 * p >= k) out.push_back({n, n, k, k, s, p});
  std::mt19937 rng(1818);
  std::uniform_int_distribution<int> side(1, 9), ker(1, 5), st(1, 3), pd(0, 2);
  while (out.size() < 260) {
    Geo g{side(rng), side(rng), ker(rng), ker(rng), st(rng), pd(rng)};
    if (g.p < std::max(g.kh, g.kw) && g.H + 2 * g.p >= g.kh && g.W + 2 * g.p >= g.kw)
      out.push_back(g);
  }
  return out;
}

float plain_conv_at(const std::vector<float>& x, const std::vector<float>& w, int Ci, const Geo& g,
                    int n, int co, int oh, int ow) {
  float a = 0.0f;
  for (int ci = 0; ci < Ci; ++ci)
    for (int ky = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx) {
        const int h = oh * g.s + ky - g.p, ww = ow * g.s + kx - g.p;
        if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
        a += w[((static_cast<size_t>(co) * Ci + ci) * g.kh + ky) * g.kw + kx] *
             x[((static_cast<size_t>(n) * Ci + ci) * g.H + h) * g.W + ww];
      }
  return a;
}

void check_geometries(Isa isa) {
  const int N = 2, Ci = 3, Co = 5;
  std::mt19937 rng(99);
  std::normal_distribution<float> nd;
  int ncase = 0, bad = 0;
  for (const Geo& g : small_geometries()) {
    if (std::getenv("SBNN_TEST_VERBOSE"))
      std::fprintf(stderr, "geometry %s %dx%d k=%dx%d s=%d p=%d\n", isa_name(isa), g.H, g.W, g.kh,
                   g.kw, g.s, g.p);
    std::vector<float> x(static_cast<size_t>(N) * Ci * g.H * g.W),
        w(static_cast<size_t>(Co) * Ci * g.kh * g.kw);
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    const int Ho = (g.H + 2 * g.p - g.kh) / g.s + 1, Wo = (g.W + 2 * g.p - g.kw) / g.s + 1;
    const size_t out = static_cast<size_t>(N) * Co * Ho * Wo;
    // float conv, the ISA's panels and GEMM (and the reference GEMM)
    for (Isa fi : {isa, Isa::Ref}) {
      FloatConv fc(w.data(), Co, Ci, g.kh, g.kw, nullptr, g.s, g.p, g.H, g.W, fi);
      std::vector<float> y(out, -7.0f);
      fc.forward(x.data(), N, y.data(), nullptr);
      bool ok = fc.Ho() == Ho && fc.Wo() == Wo;
      for (int n = 0; n < N && ok; ++n)
        for (int co = 0; co < Co; ++co)
          for (int oh = 0; oh < Ho; ++oh)
            for (int ow = 0; ow < Wo; ++ow) {
              const float want = plain_conv_at(x, w, Ci, g, n, co, oh, ow);
              const float got = y[((static_cast<size_t>(n) * Co + co) * Ho + oh) * Wo + ow];
              if (std::fabs(got - want) > 1e-4f * (1.0f + std::fabs(want)) * g.kh * g.kw) ok = false;
            }
      if (!ok) {
        ++bad;
        std::printf("FAIL geometry float conv %s %dx%d k=%dx%d s=%d p=%d\n", isa_name(fi), g.H,
                    g.W, g.kh, g.kw, g.s, g.p);
      }
      ++ncase;
    }
    // binary conv on binarised input: both kernels, exact integer parts
    std::vector<uint8_t> bits(w.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = w[i] > 0.3f;
    std::vector<float> eta(Co, 1.0f), xi(Co, 0.25f), bias(Co, 0.5f);
    BConvLayer ref(bits.data(), Co, Ci, g.kh, g.kw, eta.data(), xi.data(), bias.data(), nullptr,
                   g.s, g.p, g.H, g.W, BConvKind::Sparse, Isa::Ref);
    std::vector<int32_t> rc(out), rw(static_cast<size_t>(N) * Ho * Wo);
    ref.counts(x.data(), N, rc.data(), rw.data(), nullptr);
    for (BConvKind kind : {BConvKind::Sparse, BConvKind::Dense}) {
      BConvLayer opt(bits.data(), Co, Ci, g.kh, g.kw, eta.data(), xi.data(), bias.data(), nullptr,
                     g.s, g.p, g.H, g.W, kind, isa);
      std::vector<int32_t> oc(out, -7), ow(rw.size(), -7);
      opt.counts(x.data(), N, oc.data(), ow.data(), nullptr);
      if (oc != rc || ow != rw) {
        ++bad;
        std::printf("FAIL geometry bconv %s %s %dx%d k=%dx%d s=%d p=%d\n", isa_name(isa),
                    kind == BConvKind::Sparse ? "sparse" : "dense", g.H, g.W, g.kh, g.kw, g.s,
                    g.p);
      }
      ++ncase;
    }
    // pools: square windows k = kh, pad <= k / 2
    if (g.kh != g.kw || 2 * g.p > g.kh) continue;
    for (int kind = 0; kind < 3; ++kind) {
      Engine e(1);
      const int t = e.input(Ci, g.H, g.W);
      int u;
      if (kind == 0) u = e.maxpool(t, g.kh, g.s, g.p);
      else u = e.avgpool(t, g.kh, g.s, g.p, kind == 1);
      e.set_output(u);
      std::vector<float> y(static_cast<size_t>(N) * Ci * Ho * Wo, -7.0f);
      e.run(x.data(), N, y.data());
      bool ok = true;
      for (int n = 0; n < N; ++n)
        for (int c = 0; c < Ci; ++c)
          for (int oh = 0; oh < Ho; ++oh)
            for (int ow2 = 0; ow2 < Wo; ++ow2) {
              float mx = -INFINITY, sum = 0.0f;
              int cnt = 0;
              for (int ky = 0; ky < g.kh; ++ky)
                for (int kx = 0; kx < g.kh; ++kx) {
                  const int h = oh * g.s + ky - g.p, ww = ow2 * g.s + kx - g.p;
                  if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
                  const float v = x[((static_cast<size_t>(n) * Ci + c) * g.H + h) * g.W + ww];
                  mx = std::max(mx, v);
                  sum += v;
                  ++cnt;
                }
              const float want = kind == 0 ? mx : sum / (kind == 1 ? g.kh * g.kh : cnt);
              const float got = y[((static_cast<size_t>(n) * Ci + c) * Ho + oh) * Wo + ow2];
              if (!(std::fabs(got - want) <= 1e-5f * (1.0f + std::fabs(want)))) ok = false;
            }
      if (!ok) {
        ++bad;
        std::printf("FAIL geometry %s %dx%d k=%d s=%d p=%d\n",
                    kind == 0 ? "maxpool" : (kind == 1 ? "avgpool(pad counted)" : "avgpool"), g.H,
                    g.W, g.kh, g.s, g.p);
      }
      ++ncase;
    }
  }
  // global average pool on every small map
  for (int h = 1; h <= 9; ++h)
    for (int w = 1; w <= 9; ++w) {
      Engine e(1);
      e.set_output(e.global_avgpool(e.input(2, h, w)));
      std::vector<float> x(static_cast<size_t>(2) * h * w), y(2, -7.0f);
      for (auto& v : x) v = nd(rng);
      e.run(x.data(), 1, y.data());
      for (int c = 0; c < 2; ++c) {
        float s = 0.0f;
        for (int i = 0; i < h * w; ++i) s += x[static_cast<size_t>(c) * h * w + i];
        if (!(std::fabs(y[c] - s / (h * w)) <= 1e-5f * (1.0f + std::fabs(s)))) {
          ++bad;
          std::printf("FAIL geometry global_avgpool %dx%d\n", h, w);
        }
      }
      ++ncase;
    }
  g_fail += bad;
  std::printf("geometries %s: %d cases, %d failures\n", isa_name(isa), ncase, bad);
}

// sbconv -> add(skip) -> hardtanh -> sbconv s2 -> hardtanh, fused (with the per-layer choice;
// the groups the graph passes would give) against the same graph unfused and sparse-only.
void check_fusion(Isa isa) {
  const int C = 6, H = 7;
  std::vector<uint8_t> bits(C * C * 9);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = (i * 7) % 5 == 0;
  std::vector<float> one(C, 0.1f), x(3 * C * H * H), y[3];
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
  for (int v = 0; v < 3; ++v) {
    Engine e(v == 2 ? 1 : 2);
    e.set_choice(v != 2);
    const int t = e.input(C, H, H);
    const int c1 = e.sbconv2d(t, bits.data(), C, C, 3, 3, one.data(), one.data(), one.data(), 1,
                              1, nullptr, true, isa);
    const int a1 = e.add(c1, t);
    const int h1 = e.hardtanh(a1, -1.0f, 1.0f);
    const int c2 = e.sbconv2d(h1, bits.data(), C, C, 3, 3, one.data(), one.data(), one.data(), 2,
                              1, nullptr, true, isa);
    const int h2 = e.hardtanh(c2, -0.2f, 0.3f);
    e.set_output(h2);
    if (v != 1) e.set_groups({{c1, a1, h1}, {c2, h2}});
    const TensorShape& o = e.output_shape();
    y[v].resize(3 * o.numel());
    e.run(x.data(), 3, y[v].data());
    if ((v != 1) != (e.num_ops() == 2)) {
      ++g_fail;
      std::printf("FAIL %s fusion: %d ops\n", isa_name(isa), e.num_ops());
    }
  }
  for (int v = 1; v < 3; ++v)
    for (size_t i = 0; i < y[0].size(); ++i)
      if (std::fabs(y[0][i] - y[v][i]) > 1e-5f) {
        ++g_fail;
        std::printf("FAIL %s fused vs %s\n", isa_name(isa), v == 1 ? "unfused" : "sparse-only");
        break;
      }
}

// The fused epilogue + post-ops of a table against its own two passes (affine_epilogue(8) then
// post_plane): identical floats, on rows of 1..33 (vector, 4-wide and scalar tails), int8 and
// int32 counts, with and without residual, clamp and RPReLU, and with the residual aliasing y.
void check_epilogue_post(Isa isa) {
  const KernelTable& kt = kernel_table(isa);
  if (!kt.affine_epilogue_post || !kt.affine_epilogue8_post) return;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> cnt(-60, 60);
  const int sizes[][2] = {{1, 1}, {2, 2}, {3, 5}, {4, 4}, {5, 7}, {8, 8}, {6, 9}, {16, 16},
                          {7, 13}, {32, 32}, {3, 33}};
  for (const auto& hw : sizes)
    for (int wide = 0; wide < 2; ++wide)
      for (int mode = 0; mode < 7; ++mode) {
        // none, res, clamp, res+clamp, res aliasing y, res+rprelu, res+clamp+rprelu
        const int Ho = hw[0], Wo = hw[1], pitch = Wo + 3, P = Ho * Wo;
        const bool use_res = mode == 1 || mode >= 3, clamp = mode == 2 || mode == 3 || mode == 6;
        const float rpv[3] = {0.1f * nd(rng), 0.25f + 0.1f * nd(rng), 0.2f * nd(rng)};
        const float* rp = mode >= 5 ? rpv : nullptr;
        std::vector<int8_t> a8(static_cast<size_t>(Ho) * pitch + 64);
        std::vector<int32_t> a32(a8.size());
        for (size_t i = 0; i < a8.size(); ++i) a32[i] = a8[i] = static_cast<int8_t>(cnt(rng));
        if (wide)
          for (auto& v : a32) v *= 37;
        std::vector<float> ws(P), res(P), y1(P), y2(P);
        for (int i = 0; i < P; ++i) {
          ws[i] = static_cast<float>(cnt(rng));
          res[i] = nd(rng);
        }
        const float eta = 0.013f * nd(rng), xi = 0.02f * nd(rng), bias = nd(rng);
        if (wide)
          kt.affine_epilogue(a32.data(), Ho, Wo, pitch, ws.data(), eta, xi, bias, y1.data());
        else
          kt.affine_epilogue8(a8.data(), Ho, Wo, pitch, ws.data(), eta, xi, bias, y1.data());
        auto post = kt.post_plane ? kt.post_plane : kernels_scalar().post_plane;
        post(y1.data(), use_res ? res.data() : nullptr, P, clamp, -0.7f, 0.9f, rp);
        const float* r = use_res ? res.data() : nullptr;
        if (mode == 4) {  // in place: y holds the residual on entry
          y2 = res;
          r = y2.data();
        }
        if (wide)
          kt.affine_epilogue_post(a32.data(), Ho, Wo, pitch, ws.data(), eta, xi, bias, y2.data(),
                                  r, clamp, -0.7f, 0.9f, rp);
        else
          kt.affine_epilogue8_post(a8.data(), Ho, Wo, pitch, ws.data(), eta, xi, bias, y2.data(),
                                   r, clamp, -0.7f, 0.9f, rp);
        if (std::memcmp(y1.data(), y2.data(), sizeof(float) * P) != 0) {
          ++g_fail;
          std::printf("FAIL epilogue_post %s %dx%d wide=%d mode=%d\n", isa_name(isa), Ho, Wo,
                      wide, mode);
        }
      }
}

double time_us(const BConvLayer& l, const std::vector<float>& x, std::vector<float>& y) {
  for (int i = 0; i < 20; ++i) l.forward(x.data(), 1, y.data(), nullptr);
  std::vector<double> ts;
  for (int r = 0; r < 15; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) l.forward(x.data(), 1, y.data(), nullptr);
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                 20 * 1e6);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

void bench() {
  const int C = 256, H = 14;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud;
  std::vector<float> x(C * H * H), y(C * H * H), one(C, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    for (double p : {0.5, 0.05, 0.01}) {
      std::vector<uint8_t> bits(static_cast<size_t>(C) * C * 9);
      for (auto& b : bits) b = ud(rng) < p;
      for (BConvKind kind : {BConvKind::Dense, BConvKind::Sparse}) {
        if (kind == BConvKind::Dense && p != 0.5) continue;
        BConvLayer l(bits.data(), C, C, 3, 3, one.data(), one.data(), one.data(), nullptr, 1, 1,
                     H, H, kind, isa);
        std::printf("%-7s %-6s p=%.2f  %8.1f us\n", isa_name(isa),
                    kind == BConvKind::Sparse ? "sparse" : "dense", p, time_us(l, x, y));
      }
    }
  }
}

}  // namespace

// The tiny-map kernel (bconv_tiny.h): integer counts and window sums equal to the reference
// twin's, float outputs (with a fused residual add + clamp) equal to the sparse kernel's of the
// same ISA bit for bit (the same epilogue); 2x2, 4x4, 1x1 and odd maps, blocks of filters
// over and under one vector of bits, stride 1 and 2, pad 0 and 1.
void check_tiny(Isa isa) {
  const Case cases[] = {{1, 512, 40, 2, 2, 3, 1, 1}, {2, 64, 300, 2, 2, 3, 1, 1},
                        {3, 96, 24, 4, 4, 3, 2, 1},  {1, 70, 9, 4, 4, 3, 1, 1},
                        {2, 33, 5, 1, 1, 3, 1, 1},   {1, 130, 257, 3, 3, 3, 1, 0},
                        {2, 5, 3, 4, 4, 3, 1, 0},    {3, 20, 11, 7, 7, 3, 2, 1},
                        {4, 7, 6, 2, 3, 1, 1, 0}};
  int k = 0;
  for (const Case& c : cases)
    for (double frac : {0.0, 0.05, 0.5, 1.0}) {
      std::mt19937 rng(static_cast<unsigned>(1000 + k++));
      std::normal_distribution<float> nd;
      std::uniform_real_distribution<double> ud;
      std::vector<float> x(static_cast<size_t>(c.N) * c.Ci * c.H * c.W);
      for (auto& v : x) v = nd(rng);
      std::vector<uint8_t> bits(static_cast<size_t>(c.Co) * c.Ci * c.k * c.k);
      for (auto& b : bits) b = ud(rng) < frac;
      std::vector<float> eta(c.Co), xi(c.Co), bias(c.Co), thr(c.Ci);
      for (auto& v : eta) v = nd(rng);
      for (auto& v : xi) v = nd(rng);
      for (auto& v : bias) v = nd(rng);
      for (auto& v : thr) v = 0.3f * nd(rng);
      BConvLayer ref(bits.data(), c.Co, c.Ci, c.k, c.k, eta.data(), xi.data(), bias.data(),
                     thr.data(), c.s, c.p, c.H, c.W, BConvKind::Sparse, Isa::Ref);
      BConvLayer sp(bits.data(), c.Co, c.Ci, c.k, c.k, eta.data(), xi.data(), bias.data(),
                    thr.data(), c.s, c.p, c.H, c.W, BConvKind::Sparse, isa);
      BConvTiny tiny(bits.data(), c.Co, c.Ci, c.k, c.k, eta.data(), xi.data(), bias.data(),
                     thr.data(), c.s, c.p, c.H, c.W, isa);
      const ConvGeom& g = ref.geom();
      const size_t P = static_cast<size_t>(g.Ho) * g.Wo, out = c.N * c.Co * P;
      std::vector<int32_t> rc(out), rw(c.N * P), oc(out, -7), ow(c.N * P, -7);
      ThreadPool pool(2);
      ref.counts(x.data(), c.N, rc.data(), rw.data(), nullptr);
      tiny.counts(x.data(), c.N, oc.data(), ow.data(), &pool);
      bool ok = rc == oc && rw == ow;
      std::vector<float> res(out), sy(out), ty(out);
      for (auto& v : res) v = nd(rng);
      BConvPost post;
      post.res = res.data();
      post.clamp = true;
      for (const BConvPost& q : {BConvPost(), post}) {
        sp.forward(x.data(), c.N, sy.data(), nullptr, q);
        tiny.forward(x.data(), c.N, ty.data(), &pool, q);
        ok = ok && std::memcmp(sy.data(), ty.data(), out * sizeof(float)) == 0;
      }
      if (!ok) {
        ++g_fail;
        std::printf("FAIL %s tiny N=%d Ci=%d Co=%d %dx%d k=%d s=%d p=%d frac=%.2f\n",
                    isa_name(isa), c.N, c.Ci, c.Co, c.H, c.W, c.k, c.s, c.p, frac);
      }
    }
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    bench();
    return 0;
  }
  const Case cases[] = {{1, 1, 3, 5, 5, 3, 1, 1},   {2, 3, 5, 7, 9, 3, 1, 1},
                        {1, 63, 4, 6, 5, 3, 2, 1},  {1, 64, 7, 5, 7, 3, 1, 0},
                        {2, 65, 6, 9, 8, 3, 2, 0},  {1, 130, 5, 4, 6, 1, 1, 0},
                        {1, 65, 9, 7, 7, 1, 2, 0},  {1, 130, 3, 3, 3, 3, 1, 1},
                        {2, 3, 40, 11, 13, 3, 2, 1}, {1, 200, 3, 12, 12, 3, 1, 1},
                        // small maps stacked into shared grids, partial last groups
                        {5, 33, 19, 4, 4, 3, 1, 1}, {3, 70, 9, 8, 8, 3, 2, 1},
                        {4, 5, 7, 2, 3, 3, 1, 1},   {5, 70, 6, 1, 1, 1, 1, 0},
                        // long grids (several 256-byte tiles + a remainder), wide rows with a
                        // shifted-back last vector, 5x5, and > 62 words per dense patch (the
                        // NEON GEMM's byte accumulators fold more than once)
                        {1, 4, 6, 30, 33, 3, 1, 1}, {2, 8, 5, 17, 19, 5, 1, 2},
                        {1, 520, 5, 6, 6, 3, 1, 1}, {3, 17, 4, 15, 11, 3, 2, 0},
                        {2, 12, 5, 16, 16, 3, 1, 1}, {1, 7, 4, 8, 8, 3, 1, 1},
                        // batches smaller than a full group (plans with G = batch)
                        {1, 33, 19, 4, 4, 3, 1, 1}, {2, 70, 9, 8, 8, 3, 2, 1},
                        {1, 9, 5, 2, 2, 3, 2, 1},   {3, 17, 4, 5, 5, 3, 2, 0},
                        // stride 2 on rows of 8, 16, 24, 32 (the byte-shuffle split)
                        {1, 20, 5, 16, 16, 3, 2, 1}, {2, 9, 3, 32, 24, 3, 2, 0},
                        {1, 5, 4, 7, 32, 3, 2, 1},
                        // wrapped grids (ConvGeom::wrap): 8x8 at batch 1 and 2 (int32 counts
                        // past 127 1-bits), 5x5 kernels, stacked 4x4 and 7x7
                        {1, 300, 5, 8, 8, 3, 1, 1}, {2, 150, 4, 8, 8, 3, 1, 1},
                        {1, 6, 4, 8, 8, 5, 1, 2},   {3, 20, 5, 4, 4, 3, 1, 1},
                        {4, 9, 3, 7, 7, 3, 1, 1}};
  const char* target =
#if defined(__aarch64__)
      "aarch64";
#elif defined(__x86_64__)
      "x86_64";
#else
      "other";
#endif
  std::printf("target %s, default ISA %s, available:", target, isa_name(default_isa()));
  for (const auto& name : available_isas()) std::printf(" %s", name.c_str());
  std::printf("\n");
  int n = 0;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) {
      std::printf("skip %s (not on this CPU)\n", isa_name(isa));
      continue;
    }
    for (const Case& c : cases)
      for (double frac : {0.0, 0.05, 0.5, 1.0})
        for (BConvKind kind : {BConvKind::Sparse, BConvKind::Dense})
          for (bool thr_on : {false, true}) {
            check_case(c, frac, static_cast<unsigned>(n), isa, kind, thr_on);
            ++n;
          }
    check_floatconv(isa);
    check_fusion(isa);
    check_epilogue_post(isa);
    check_geometries(isa);
    check_tiny(isa);
  }
  check_isa_names();
  check_float_conv();
  check_floatconv(Isa::Scalar);
  check_engine();
  check_engine_threads();
  std::printf("%d cases, %d failures\n", n, g_fail);
  return g_fail == 0 ? 0 : 1;
}
