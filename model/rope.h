// The rotary position embedding's frequencies (docs/model.md): at position s, pair i of a head
// of width Dh (dimensions i and i + Dh/2) turns by the angle s * f_i. One function computes the
// f_i, in double, for both backends' cos/sin tables.
#pragma once
#include <compare>
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

// The default of model.rope_theta (Llama's).
inline constexpr double kDefaultRopeTheta = 10000.0;

// model.rope_scaling: transformers' rope types that only change the f_i (the others also scale
// the attention or depend on the sequence: not supported).
//   none:   f_i = theta^(-2i/Dh)
//   linear: f_i / factor (position interpolation)
//   llama3: Llama 3.1's: with wavelength w_i = 2 pi / f_i, L = original_max_position,
//           f_i / factor where w_i > L / low_freq_factor, f_i where w_i < L / high_freq_factor,
//           and between them (1 - a) f_i / factor + a f_i, a = (L / w_i - low) / (high - low).
enum class RopeScaling { none, linear, llama3 };

struct Rotary {
  double theta = kDefaultRopeTheta;
  RopeScaling scaling = RopeScaling::none;
  double factor = 1.0;                   // linear, llama3
  double low_freq_factor = 1.0;          // llama3
  double high_freq_factor = 4.0;         // llama3
  int64_t original_max_position = 8192;  // llama3: the context length it was trained at

  Rotary() = default;
  // A plain theta is a rotary without scaling.
  Rotary(double theta) : theta(theta) {}  // NOLINT(google-explicit-constructor)
  auto operator<=>(const Rotary&) const = default;
};

// The rows of a cos/sin table that serves positions first_position .. first_position + S - 1:
// S from position 0 (training's tables), else a power of two, so that the positions of a
// generation, one more each token, share a few tables.
int64_t rope_table_rows(int64_t first_position, int64_t S);

// f_i for i < Dh / 2.
std::vector<double> rope_frequencies(int64_t Dh, const Rotary& rotary);

// "" when `rotary` is valid, else what is wrong with it, in one line.
std::string rotary_problem(const Rotary& rotary);

}  // namespace sy
