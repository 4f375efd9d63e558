#include "model/rope.h"

#include <cmath>
#include <numbers>

namespace sy {

std::vector<double> rope_frequencies(int64_t Dh, const Rotary& rotary) {
  std::vector<double> frequencies(static_cast<size_t>(Dh / 2));
  const double L = static_cast<double>(rotary.original_max_position);
  const double low = rotary.low_freq_factor, high = rotary.high_freq_factor;
  for (int64_t i = 0; i < Dh / 2; ++i) {
    double f = std::pow(rotary.theta, -2.0 * static_cast<double>(i) / static_cast<double>(Dh));
    if (rotary.scaling == RopeScaling::linear) f /= rotary.factor;
    if (rotary.scaling == RopeScaling::llama3) {
      const double wavelength = 2.0 * std::numbers::pi / f;
      if (wavelength > L / low) {
        f /= rotary.factor;
      } else if (!(wavelength < L / high)) {  // between the two: a blend
        const double a = (L / wavelength - low) / (high - low);
        f = (1.0 - a) * f / rotary.factor + a * f;
      }
    }
    frequencies[static_cast<size_t>(i)] = f;
  }
  return frequencies;
}

std::string rotary_problem(const Rotary& rotary) {
  auto positive = [](double value) { return value > 0 && std::isfinite(value); };
  if (!positive(rotary.theta)) return "theta must be positive and finite";
  if (rotary.scaling == RopeScaling::none) return "";
  if (!positive(rotary.factor)) return "the scaling factor must be positive and finite";
  if (rotary.scaling != RopeScaling::llama3) return "";
  if (!positive(rotary.low_freq_factor) || !positive(rotary.high_freq_factor) ||
      !(rotary.high_freq_factor > rotary.low_freq_factor))
    return "llama3 scaling needs 0 < low_freq_factor < high_freq_factor";
  if (rotary.original_max_position < 1) return "llama3 scaling needs original_max_position >= 1";
  return "";
}

int64_t rope_table_rows(int64_t first_position, int64_t S) {
  if (first_position == 0) return S;
  int64_t rows = 1;
  while (rows < first_position + S) rows *= 2;
  return rows;
}

}  // namespace sy
