#include "core/isa.h"

#include <cstdlib>
#include <stdexcept>

namespace sbnn {

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.popcnt = __builtin_cpu_supports("popcnt");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
  f.neon = true;  // mandatory in AArch64: no run-time check needed
#endif
  return f;
}

bool isa_supported(Isa isa) {
  const CpuFeatures f = cpu_features();
  switch (isa) {
    case Isa::Ref:
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
#ifdef SBNN_HAVE_X86_KERNELS
      return f.avx2 && f.fma && f.popcnt;
#else
      return false;
#endif
    case Isa::Avx512:
#ifdef SBNN_HAVE_X86_KERNELS
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vpopcntdq && f.avx2 && f.fma;
#else
      return false;
#endif
    case Isa::Neon:
#if defined(__aarch64__) && defined(__ARM_NEON)
      return f.neon;
#else
      return false;
#endif
  }
  return false;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Ref: return "ref";
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "?";
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (Isa i : {Isa::Ref, Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(i)) out.emplace_back(isa_name(i));
  return out;
}

static Isa parse_named(const std::string& name) {
  for (Isa i : {Isa::Ref, Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (name == isa_name(i)) {
      if (!isa_supported(i))
        throw std::invalid_argument("impl '" + name + "' is not supported by this CPU");
      return i;
    }
  }
  throw std::invalid_argument("unknown impl '" + name +
                              "'; expected one of auto, ref, scalar, avx2, avx512, neon");
}

Isa default_isa() {
  const char* env = std::getenv("SBNN_ISA");
  if (env && *env && std::string(env) != "auto") return parse_named(env);
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  if (isa_supported(Isa::Neon)) return Isa::Neon;
  return Isa::Scalar;
}

Isa parse_isa(const std::string& name) {
  if (name == "auto" || name.empty()) return default_isa();
  return parse_named(name);
}

}  // namespace sbnn
