// CPU feature detection and the choice of kernel ISA.
#pragma once
#include <string>
#include <vector>

namespace sbnn {

// Ref: plain loops straight from the definition (the reference twin).
// Scalar: the optimised algorithms, portable C++ (no -m flags).
// Avx2: AVX2 + FMA + POPCNT.  Avx512: AVX-512 F/BW/VL + VPOPCNTDQ.
// Neon: AArch64 Advanced SIMD (every AArch64 CPU has it; kern_neon.cpp).
enum class Isa { Ref = 0, Scalar = 1, Avx2 = 2, Avx512 = 3, Neon = 4 };

struct CpuFeatures {
  bool popcnt = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vpopcntdq = false;
  bool neon = false;  // AArch64 Advanced SIMD
};

CpuFeatures cpu_features();
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
std::vector<std::string> available_isas();  // names of the ISAs this CPU can run
// The best ISA this CPU runs, unless the environment variable SBNN_ISA names another one.
Isa default_isa();
// "auto" -> default_isa(); otherwise the named ISA. Throws std::invalid_argument on an unknown
// name or on an ISA this CPU cannot run.
Isa parse_isa(const std::string& name);

}  // namespace sbnn
