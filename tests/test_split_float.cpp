// model/split_float.h: an fp32 pattern split into its bf16 rounding (ties away from zero) and its
// low 16 bits, and joined back. Every high pattern with low halves around the rounding point and
// at the ends, plus 2^20 random patterns: the join gives the bits back (NaN stays NaN), and the
// high half is the nearest bf16, the one farther from zero on a tie. Also the Tensor views of an
// f32_split tensor (high_half, low_half_bits, rows) on memory of the test's own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>

#include "model/split_float.h"
#include "model/tensor.h"

namespace sy {
namespace {

float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

bool is_nan_bits(uint32_t bits) { return std::isnan(as_float(bits)); }

// The nearest bf16 to a finite or infinite fp32, ties away from zero, by comparing distances in
// double (not by the bit trick under test).
uint16_t nearest_bf16_ties_away(uint32_t bits) {
  const uint32_t below = bits & 0xFFFF'0000u;  // toward zero
  const uint32_t above = below + 0x1'0000u;    // away from zero (inf past the largest)
  const double x = std::fabs(static_cast<double>(as_float(bits)));
  const double lo = std::fabs(static_cast<double>(as_float(below)));
  // Past the largest bf16 the next step is 2^128 (IEEE rounds to inf from halfway there).
  const double above_value = std::fabs(static_cast<double>(as_float(above)));
  const double hi = std::isinf(above_value) ? std::ldexp(1.0, 128) : above_value;
  if (std::isinf(x)) return static_cast<uint16_t>(bits >> 16);
  return static_cast<uint16_t>((x - lo < hi - x ? below : above) >> 16);
}

void check_pattern(uint32_t bits) {
  const SplitHalves halves = split_float_bits(bits);
  const uint32_t joined = join_float_bits(halves.high, halves.low);
  if (is_nan_bits(bits)) {
    ASSERT_TRUE(is_nan_bits(joined)) << std::hex << bits;
    ASSERT_TRUE(is_nan_bits(static_cast<uint32_t>(halves.high) << 16)) << std::hex << bits;
    return;
  }
  ASSERT_EQ(joined, bits) << std::hex << bits;
  ASSERT_EQ(halves.low, bits & 0xFFFFu) << std::hex << bits;
  ASSERT_EQ(halves.high, nearest_bf16_ties_away(bits)) << std::hex << bits;
}

TEST(SplitFloat, EveryHighPatternWithTheLowHalvesThatMatter) {
  const uint32_t lows[] = {0x0000, 0x0001, 0x3FFF, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFE, 0xFFFF};
  for (uint32_t top = 0; top <= 0xFFFF; ++top)
    for (uint32_t low : lows) check_pattern((top << 16) | low);
}

TEST(SplitFloat, RandomPatterns) {
  std::mt19937 gen(20261204);
  for (int i = 0; i < (1 << 20); ++i) check_pattern(static_cast<uint32_t>(gen()));
}

TEST(SplitFloat, TiesGoAwayFromZeroAndCarryIntoTheExponent) {
  // 1 + 2^-8 exactly between two bf16 neighbours: away from zero, on both signs.
  EXPECT_EQ(split_float_bits(0x3F80'8000u).high, 0x3F81u);
  EXPECT_EQ(split_float_bits(0xBF80'8000u).high, 0xBF81u);
  // The largest mantissa rounds up into the next binade; the largest finite float to inf.
  EXPECT_EQ(split_float_bits(0x3FFF'8000u).high, 0x4000u);
  EXPECT_EQ(split_float_bits(0x7F7F'FFFFu).high, 0x7F80u);
  EXPECT_EQ(join_float_bits(0x7F80u, 0xFFFFu), 0x7F7F'FFFFu);
  // A NaN whose rounding would carry into the sign bit stays a NaN.
  EXPECT_TRUE(is_nan_bits(static_cast<uint32_t>(split_float_bits(0x7FFF'FFFFu).high) << 16));
}

TEST(SplitFloat, TensorViewsOfTheTwoPlanes) {
  // [3, 4] elements: 12 high halves, then 12 low halves.
  auto buffer = std::shared_ptr<void>(new uint16_t[24](),
                                      [](void* p) { delete[] static_cast<uint16_t*>(p); });
  const Tensor t(buffer, buffer.get(), {3, 4}, DType::f32_split, Device::cpu, 12);
  EXPECT_EQ(t.nbytes(), 48u);  // as f32 on the host
  EXPECT_EQ(host_dtype(t.dtype()), DType::f32);
  const Tensor high = t.high_half();
  EXPECT_EQ(high.dtype(), DType::bf16);
  EXPECT_EQ(high.data(), t.data());
  EXPECT_EQ(t.low_half_bits(), static_cast<uint16_t*>(buffer.get()) + 12);
  const Tensor row = t.rows(1, 3);  // rows 1 and 2: 2 bytes an element in each plane
  EXPECT_EQ(row.data(), static_cast<void*>(static_cast<uint16_t*>(buffer.get()) + 4));
  EXPECT_EQ(row.low_half_bits(), static_cast<uint16_t*>(buffer.get()) + 16);
  EXPECT_EQ(row.reshape({8}).low_half_bits(), row.low_half_bits());
  EXPECT_THROW(high.low_half_bits(), std::runtime_error);
  EXPECT_THROW(high.high_half(), std::runtime_error);
}

}  // namespace
}  // namespace sy
