// Bit packing: framework-free reference kernels.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sbnn {

// Packs n values of `bits` (each 0 or non-zero) into ceil(n / 8) bytes,
// little-endian within a byte: element i goes to bit (i % 8) of byte i / 8.
// Same layout as numpy.packbits(..., bitorder="little") and sbnn.pack_bits.
void pack_bits_u8(const uint8_t* bits, size_t n, uint8_t* out);

}  // namespace sbnn
