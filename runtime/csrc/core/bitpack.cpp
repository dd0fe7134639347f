#include "core/bitpack.h"

namespace sbnn {

void pack_bits_u8(const uint8_t* bits, size_t n, uint8_t* out) {
  const size_t nbytes = (n + 7) / 8;
  for (size_t j = 0; j < nbytes; ++j) out[j] = 0;
  for (size_t i = 0; i < n; ++i) {
    if (bits[i]) out[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
}

}  // namespace sbnn
