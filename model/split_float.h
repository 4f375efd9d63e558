// An fp32 value held as two 16-bit halves, for master weights in bf16 training (DType::f32_split):
// `high` is the value rounded to bf16, which is the copy the GEMMs read, and `low` is the low 16
// bits of the fp32 pattern. Together they give back the fp32 bits exactly, so the optimizer
// updates the same fp32 master weights as before while the separate bf16 compute copy (2 bytes a
// parameter, read and written every step) is gone.
//
// Rounding is to nearest with ties away from zero (in magnitude: 0x8000 added to the pattern):
// high was rounded up exactly when low >= 0x8000, which is what lets join undo it. Ties to even
// could not be undone: a tie rounds to the even neighbour whichever way it went. The two differ
// only on exact ties, one fp32 pattern in 65536. NaN stays NaN both ways (its payload may not).
// Host and device share these definitions; tests/test_split_float.cpp checks them exhaustively.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__
#else
#define SY_HOST_DEVICE
#endif

namespace sy {

struct SplitHalves {
  uint16_t high;  // the bf16 bits
  uint16_t low;   // the fp32 pattern's low 16 bits
};

SY_HOST_DEVICE inline bool float_bits_are_nan(uint32_t bits) {
  return (bits & 0x7FFF'FFFFu) > 0x7F80'0000u;
}

SY_HOST_DEVICE inline SplitHalves split_float_bits(uint32_t bits) {
  const uint16_t low = static_cast<uint16_t>(bits & 0xFFFFu);
  // A NaN keeps its exponent and gets the quiet bit: rounding could carry it into the sign bit
  // (and a zero). Any high with low >= 0x8000 then joins to a pattern that is still a NaN.
  if (float_bits_are_nan(bits)) return {static_cast<uint16_t>((bits >> 16) | 0x0040u), low};
  return {static_cast<uint16_t>((bits + 0x8000u) >> 16), low};
}

SY_HOST_DEVICE inline uint32_t join_float_bits(uint16_t high, uint16_t low) {
  const uint32_t truncated = static_cast<uint16_t>(high - (low >> 15));  // undo the round-up
  return (truncated << 16) | low;
}

}  // namespace sy
