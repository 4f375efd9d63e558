#include "data/mixture_interleave.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace sy {

// Largest remainders: floor(share_j kPeriod) each, then one more to the largest fractional
// parts (the lower j on ties) until they sum to kPeriod.
std::vector<int64_t> MixtureInterleave::per_period(const std::vector<double>& weights) {
  const int64_t period = kPeriod;
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<int64_t> counts(weights.size());
  std::vector<double> remainder(weights.size());
  int64_t given = 0;
  for (size_t j = 0; j < weights.size(); ++j) {
    const double exact = weights[j] / total * static_cast<double>(period);
    counts[j] = std::min<int64_t>(period, static_cast<int64_t>(std::floor(exact)));
    remainder[j] = exact - static_cast<double>(counts[j]);
    given += counts[j];
  }
  std::vector<size_t> order(weights.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (size_t i = 0; given < period && i < order.size(); ++i)
    if (weights[order[i]] > 0) ++counts[order[i]], ++given;
  return counts;
}

MixtureInterleave::MixtureInterleave(const std::vector<double>& weights,
                                     const std::vector<std::string>& names)
    : per_period_(per_period(weights)), source_(kPeriod), rank_(kPeriod) {
  if (weights.size() > 65535)
    throw std::runtime_error("data.sampling: epoch takes at most 65535 sources, got " +
                             std::to_string(weights.size()));
  for (size_t j = 0; j < weights.size(); ++j)
    if (weights[j] > 0 && per_period_[j] == 0)
      throw std::runtime_error(names[j] + ": weight " + std::to_string(weights[j]) +
                               " is under 1/" + std::to_string(kPeriod) +
                               " of the total, the finest share epoch sampling keeps");
  // Deficits in whole units: m_j (p + 1) - taken_j kPeriod. They sum to kPeriod > 0, so the
  // largest is positive and its source has taken fewer than m_j: each ends with exactly m_j.
  std::vector<int64_t> taken(weights.size(), 0);
  for (int64_t p = 0; p < kPeriod; ++p) {
    size_t best = 0;
    int64_t best_deficit = 0;
    for (size_t j = 0; j < weights.size(); ++j) {
      const int64_t deficit = per_period_[j] * (p + 1) - taken[j] * kPeriod;
      if (j == 0 || deficit > best_deficit) best = j, best_deficit = deficit;
    }
    source_[p] = static_cast<uint16_t>(best);
    rank_[p] = static_cast<int32_t>(taken[best]++);
  }
}

}  // namespace sy
