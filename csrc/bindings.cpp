// Thin nanobind layer: takes arrays through DLPack, calls csrc/core.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <stdexcept>

#include "core/bitpack.h"

namespace nb = nanobind;

using U8Vec = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

static nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>> pack_bits(U8Vec bits) {
  const size_t n = bits.shape(0);
  const size_t nbytes = (n + 7) / 8;
  auto* out = new uint8_t[nbytes > 0 ? nbytes : 1];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
  sbnn::pack_bits_u8(bits.data(), n, out);
  return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(out, {nbytes}, owner);
}

NB_MODULE(_core, m) {
  m.doc() = "sbnn native core (framework-free C++ kernels)";
  m.def("pack_bits", &pack_bits, nb::arg("bits"),
        "Pack a 1-D uint8 array of 0/1 values into bytes, little-endian bit order.");
}
