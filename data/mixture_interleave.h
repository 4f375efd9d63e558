// Which source of a mixture takes each of the run's sequences under epoch sampling
// (docs/data.md, "Epochs"), and how many of that source's sequences came before it: a pure
// function of the sequence number, so that each source can walk its own epochs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

class MixtureInterleave {
 public:
  // The run's sequences in periods of kPeriod: source j takes m_j of each period, its weight's
  // share of kPeriod rounded by largest remainders (ties to the lower j). Within the period,
  // position p goes to the source furthest behind its share, largest m_j (p + 1) - taken_j
  // kPeriod (the lower j on ties), so that every prefix of the period is as close to the
  // shares as whole sequences allow. Throws naming names[j] for a positive weight whose share
  // rounds to no sequence of the period; weights must be finite and >= 0 with a positive sum
  // (the sampler checks them first).
  MixtureInterleave(const std::vector<double>& weights, const std::vector<std::string>& names);

  static constexpr int64_t kPeriod = 65536;
  // m_j for each source (a positive weight may get 0: the constructor refuses it).
  static std::vector<int64_t> per_period(const std::vector<double>& weights);

  // The source of the run's sequence q >= 0.
  int64_t source(int64_t q) const { return source_[q % kPeriod]; }
  // How many sequences of that source come before q: (q / kPeriod) m_j + its rank within the
  // period's sequences of source j.
  int64_t ordinal(int64_t q) const {
    return (q / kPeriod) * per_period_[source_[q % kPeriod]] + rank_[q % kPeriod];
  }
  // m_j / kPeriod: source j's share of the sequences.
  double share(int64_t j) const {
    return static_cast<double>(per_period_[j]) / static_cast<double>(kPeriod);
  }

 private:
  std::vector<int64_t> per_period_;  // m_j
  std::vector<uint16_t> source_;     // by position in the period
  std::vector<int32_t> rank_;        // by position: earlier positions of the same source
};

}  // namespace sy
