// The whole engine on exported models, without Python: reads the dumps that
// scripts/dump_graph.py writes on x86 (the builder calls of a loaded .sbnn graph, their raw
// parameters, a batch of inputs and the x86 engine's outputs), rebuilds each graph through
// sbnn::Engine with every binary conv on the ISA under test (sparse and dense kernels), runs it
// and compares with the x86 outputs. scripts/cross_test.sh runs it on aarch64 under qemu.
//
//   engine_test [--isa a,b,...] [--tol T] [--threads N] DUMP...
//     --isa      ISAs to run (default: every one this CPU runs except ref, which is slow)
//     --tol      pass when |y - y_x86| <= tol * max(1, max |y_x86|) everywhere (default 1e-5)
//     --threads  engine threads (default 2)
// Exit status 0 when every model, ISA and kind is within the tolerance.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/isa.h"

using namespace sbnn;

namespace {

struct Array {
  std::string dtype;  // "f32" or "u8"
  std::vector<size_t> shape;
  size_t offset = 0;
  size_t numel() const {
    size_t n = 1;
    for (size_t d : shape) n *= d;
    return n;
  }
};

// One argument of a recorded builder call (see scripts/dump_graph.py for the tokens).
struct Arg {
  char kind = 'n';  // t tensor, i int, f float, b bool, s string, n none, a array
  long long i = 0;
  double f = 0.0;
  std::string s;
  Array a;
};

struct Call {
  std::string method;
  std::vector<Arg> args;
};

struct Dump {
  std::string path, model;
  std::vector<Call> calls;
  Array input;
  std::vector<std::pair<std::string, Array>> expected;  // (x86 ISA, outputs)
  std::vector<unsigned char> blob;

  template <typename T>
  const T* data(const Array& a, const char* dtype) const {
    if (a.dtype != dtype) throw std::runtime_error("array of " + a.dtype + ", expected " + dtype);
    if (a.offset % alignof(T) || a.offset + a.numel() * sizeof(T) > blob.size())
      throw std::runtime_error("array outside the blob");
    return reinterpret_cast<const T*>(blob.data() + a.offset);
  }
};

[[noreturn]] void bad(const std::string& where, const std::string& msg) {
  throw std::runtime_error(where + ": " + msg);
}

Array parse_array(const std::string& tok, const std::string& where) {
  // a<dtype>:<offset>:<d0>x<d1>...
  const size_t c1 = tok.find(':', 1), c2 = tok.find(':', c1 == std::string::npos ? 1 : c1 + 1);
  if (c1 == std::string::npos || c2 == std::string::npos) bad(where, "bad array token " + tok);
  Array a;
  a.dtype = tok.substr(1, c1 - 1);
  a.offset = std::stoull(tok.substr(c1 + 1, c2 - c1 - 1));
  const std::string dims = tok.substr(c2 + 1);
  if (dims != "-") {
    std::stringstream ss(dims);
    std::string d;
    while (std::getline(ss, d, 'x')) a.shape.push_back(std::stoull(d));
  }
  return a;
}

Arg parse_arg(const std::string& tok, const std::string& where) {
  if (tok.empty()) bad(where, "empty argument");
  Arg a;
  a.kind = tok[0];
  const std::string rest = tok.substr(1);
  switch (a.kind) {
    case 't': case 'i': case 'b': a.i = std::stoll(rest); break;
    case 'f': a.f = std::strtod(rest.c_str(), nullptr); break;
    case 's': a.s = rest; break;
    case 'n': break;
    case 'a': a.a = parse_array(tok, where); break;
    default: bad(where, "unknown argument " + tok);
  }
  return a;
}

Dump read_dump(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  Dump d;
  d.path = path;
  std::string line;
  if (!std::getline(f, line) || line != "sbnn-dump 1") bad(path, "not an sbnn dump (version 1)");
  size_t blob_bytes = 0;
  bool have_blob = false;
  while (!have_blob && std::getline(f, line)) {
    std::istringstream ls(line);
    std::string key;
    ls >> key;
    if (key == "model") {
      ls >> d.model;
    } else if (key == "call") {
      Call c;
      ls >> c.method;
      std::string tok;
      while (ls >> tok) c.args.push_back(parse_arg(tok, path + " (" + c.method + ")"));
      d.calls.push_back(std::move(c));
    } else if (key == "input") {
      d.input.dtype = "f32";
      size_t v;
      ls >> d.input.offset;
      while (ls >> v) d.input.shape.push_back(v);
      if (d.input.shape.size() != 4) bad(path, "input must be (N, C, H, W)");
    } else if (key == "expected") {
      std::string tag;
      Array a;
      a.dtype = "f32";
      size_t ndim, v;
      ls >> tag >> a.offset >> ndim;
      for (size_t k = 0; k < ndim && ls >> v; ++k) a.shape.push_back(v);
      if (a.shape.size() != ndim) bad(path, "bad expected line");
      d.expected.emplace_back(tag, a);
    } else if (key == "blob") {
      ls >> blob_bytes;
      have_blob = true;
    } else {
      bad(path, "unknown header line '" + key + "'");
    }
  }
  if (!have_blob) bad(path, "no blob line");
  d.blob.resize(blob_bytes);
  if (blob_bytes && !f.read(reinterpret_cast<char*>(d.blob.data()),
                            static_cast<std::streamsize>(blob_bytes)))
    bad(path, "truncated blob");
  if (d.expected.empty()) bad(path, "no expected outputs");
  return d;
}

int as_int(size_t v) { return static_cast<int>(v); }

// Rebuilds the recorded graph; mirrors the argument handling of runtime/csrc/bindings.cpp.
void build(const Dump& d, Engine& e, Isa isa, bool sparse) {
  std::vector<int> ids;  // recorded tensor id -> this engine's
  auto T = [&](const Arg& a) {
    if (a.kind != 't' || a.i < 0 || a.i >= static_cast<long long>(ids.size()))
      throw std::runtime_error("bad tensor argument");
    return ids[a.i];
  };
  auto F = [&](const Arg& a) -> const float* {
    return a.kind == 'n' ? nullptr : d.data<float>(a.a, "f32");
  };
  auto I = [](const Arg& a) { return static_cast<int>(a.i); };
  for (const Call& c : d.calls) {
    const auto& A = c.args;
    auto need = [&](size_t n) {
      if (A.size() != n)
        throw std::runtime_error(c.method + ": " + std::to_string(A.size()) + " args, expected " +
                                 std::to_string(n));
    };
    int t = -1;
    if (c.method == "input") {
      need(3);
      t = e.input(I(A[0]), I(A[1]), I(A[2]));
    } else if (c.method == "conv2d") {  // (t, weight, bias|None, stride, padding)
      need(5);
      const auto& s = A[1].a.shape;
      if (s.size() != 4) throw std::runtime_error("conv2d weight must be 4-D");
      t = e.conv2d(T(A[0]), F(A[1]), as_int(s[0]), as_int(s[1]), as_int(s[2]), as_int(s[3]),
                   F(A[2]), I(A[3]), I(A[4]));
    } else if (c.method == "sbconv2d") {
      // (t, bits, eta, xi, bias, stride, pad, thr, sparse, impl): sparse and impl replaced
      need(10);
      const auto& s = A[1].a.shape;
      if (s.size() != 4) throw std::runtime_error("sbconv2d bits must be 4-D");
      t = e.sbconv2d(T(A[0]), d.data<uint8_t>(A[1].a, "u8"), as_int(s[0]), as_int(s[1]),
                     as_int(s[2]), as_int(s[3]), F(A[2]), F(A[3]), F(A[4]), I(A[5]), I(A[6]),
                     F(A[7]), sparse, isa);
    } else if (c.method == "affine") {
      need(3);
      t = e.affine(T(A[0]), F(A[1]), F(A[2]), as_int(A[1].a.numel()));
    } else if (c.method == "hardtanh") {
      need(3);
      t = e.hardtanh(T(A[0]), static_cast<float>(A[1].f), static_cast<float>(A[2].f));
    } else if (c.method == "relu") {
      need(1);
      t = e.relu(T(A[0]));
    } else if (c.method == "rprelu") {
      need(4);
      t = e.rprelu(T(A[0]), F(A[1]), F(A[2]), F(A[3]), as_int(A[1].a.numel()));
    } else if (c.method == "add") {
      need(2);
      t = e.add(T(A[0]), T(A[1]));
    } else if (c.method == "avgpool") {
      need(5);
      t = e.avgpool(T(A[0]), I(A[1]), I(A[2]), I(A[3]), A[4].i != 0);
    } else if (c.method == "maxpool") {
      need(4);
      t = e.maxpool(T(A[0]), I(A[1]), I(A[2]), I(A[3]));
    } else if (c.method == "pool2d") {
      // (t, is_max, kh, kw, sh, sw, pt, pl, pb, pr, ceil_mode, count_include_pad)
      need(12);
      PoolGeom g;
      g.kh = I(A[2]), g.kw = I(A[3]), g.sh = I(A[4]), g.sw = I(A[5]);
      g.pt = I(A[6]), g.pl = I(A[7]), g.pb = I(A[8]), g.pr = I(A[9]);
      g.ceil = A[10].i != 0;
      t = e.pool2d(T(A[0]), A[1].i != 0, g, A[11].i != 0);
    } else if (c.method == "global_avgpool") {
      need(1);
      t = e.global_avgpool(T(A[0]));
    } else if (c.method == "flatten") {
      need(1);
      t = e.flatten(T(A[0]));
    } else if (c.method == "linear") {  // (t, weight (O, I), bias|None)
      need(3);
      const auto& s = A[1].a.shape;
      if (s.size() != 2) throw std::runtime_error("linear weight must be 2-D");
      t = e.linear(T(A[0]), F(A[1]), as_int(s[0]), as_int(s[1]), F(A[2]));
    } else if (c.method == "set_output") {
      need(1);
      e.set_output(T(A[0]));
      continue;
    } else if (c.method == "set_groups") {  // (t t ... s/ t t ...): the passes' fusion groups
      std::vector<std::vector<int>> groups(1);
      for (const Arg& a : A) {
        if (a.kind == 's' && a.s == "/")
          groups.emplace_back();
        else
          groups.back().push_back(T(a));
      }
      if (groups.back().empty()) groups.pop_back();
      e.set_groups(groups);
      continue;
    } else if (c.method == "set_memory_plan") {  // (arena bytes, byte offset per tensor)
      if (A.empty() || A.size() - 1 > ids.size())
        throw std::runtime_error("set_memory_plan: bad argument count");
      std::vector<int64_t> off(ids.empty() ? 0 : *std::max_element(ids.begin(), ids.end()) + 1,
                               -1);
      for (size_t k = 1; k < A.size(); ++k) off[ids[k - 1]] = A[k].i;
      e.set_memory_plan(off, A[0].i);
      continue;
    } else {
      throw std::runtime_error("unknown builder call '" + c.method + "'");
    }
    ids.push_back(t);
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> isas, paths;
  double tol = 1e-5;
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--isa" || a == "--tol" || a == "--threads") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--isa") isas = split(v, ',');
      if (a == "--tol") tol = std::strtod(v.c_str(), nullptr);
      if (a == "--threads") threads = std::atoi(v.c_str());
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "usage: engine_test [--isa a,b] [--tol T] [--threads N] DUMP...\n");
      return 2;
    } else {
      paths.push_back(a);
    }
  }
  if (paths.empty()) {
    std::fprintf(stderr, "engine_test: no dumps given\n");
    return 2;
  }
  Isa def;
  try {
    def = default_isa();  // throws when $SBNN_ISA names an ISA this CPU lacks
    for (const auto& n : isas) parse_isa(n);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "engine_test: %s\n", ex.what());
    return 2;
  }
  if (isas.empty())
    for (const auto& n : available_isas())
      if (n != "ref") isas.push_back(n);
  const char* target =
#if defined(__aarch64__)
      "aarch64";
#elif defined(__x86_64__)
      "x86_64";
#else
      "other";
#endif
  std::printf("engine_test: target %s, default ISA %s, testing", target, isa_name(def));
  for (const auto& n : isas) std::printf(" %s", n.c_str());
  std::printf(", tolerance %g\n", tol);
  int fails = 0, runs = 0;
  for (const auto& path : paths) {
    try {
      const Dump d = read_dump(path);
      const Array& xin = d.input;
      const float* x = d.data<float>(xin, "f32");
      for (const auto& name : isas) {
        const Isa isa = parse_isa(name);
        for (bool sparse : {true, false}) {
          Engine e(threads);
          build(d, e, isa, sparse);
          const size_t N = xin.shape[0];
          std::vector<float> y(N * e.output_shape().numel());
          e.run(x, as_int(N), y.data());
          ++runs;
          bool ok = true;
          std::string line;
          for (size_t k = 0; k < d.expected.size(); ++k) {
            const auto& [tag, arr] = d.expected[k];
            if (arr.numel() != y.size()) bad(path, "expected outputs of another size");
            const float* want = d.data<float>(arr, "f32");
            double scale = 1.0, gap = 0.0;
            size_t same = 0;
            for (size_t j = 0; j < y.size(); ++j)
              scale = std::max(scale, std::fabs(static_cast<double>(want[j])));
            for (size_t j = 0; j < y.size(); ++j) {
              const double g = std::fabs(static_cast<double>(y[j]) - want[j]);
              gap = std::isnan(g) ? INFINITY : std::max(gap, g);
              same += std::memcmp(&y[j], &want[j], sizeof(float)) == 0;
            }
            // the first expected output is the x86 portable path's: the one to reproduce
            if (k == 0) ok = gap <= tol * scale;
            char buf[160];
            std::snprintf(buf, sizeof buf,
                          "  vs x86 %s: max |gap| %.3g (scale %.3g), %zu/%zu identical",
                          tag.c_str(), gap, scale, same, y.size());
            line += buf;
          }
          std::printf("%s %-16s %-6s %-6s%s\n", ok ? "ok  " : "FAIL", d.model.c_str(),
                      name.c_str(), sparse ? "sparse" : "dense", line.c_str());
          fails += !ok;
        }
      }
    } catch (const std::exception& ex) {
      std::printf("FAIL %s: %s\n", path.c_str(), ex.what());
      ++fails;
    }
  }
  std::printf("engine_test: %d runs, %d failures\n", runs, fails);
  return fails == 0 && runs > 0 ? 0 : 1;
}
