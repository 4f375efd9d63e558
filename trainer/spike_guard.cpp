#include "trainer/spike_guard.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "trainer/metrics.h"

namespace sy {

SpikeGuard::SpikeGuard(int64_t window, double z, int64_t min_steps)
    : window_(window), z_(z), min_steps_(min_steps) {}

void SpikeGuard::moments(double& mean, double& std) const {
  // Two passes in a fixed order: every rank, and a resumed run, compute the same bits.
  double sum = 0;
  for (double loss : losses_) sum += loss;
  mean = sum / static_cast<double>(losses_.size());
  double squares = 0;
  for (double loss : losses_) squares += (loss - mean) * (loss - mean);
  std = std::sqrt(squares / static_cast<double>(losses_.size()));
}

bool SpikeGuard::is_spike(double loss) const {
  if (!enabled() || !std::isfinite(loss) || static_cast<int64_t>(losses_.size()) < min_steps_)
    return false;
  double mean = 0, std = 0;
  moments(mean, std);
  return std > 0 && loss > mean + z_ * std;
}

void SpikeGuard::accept(double loss) {
  if (!enabled()) return;
  losses_.push_back(loss);
  while (static_cast<int64_t>(losses_.size()) > window_) losses_.pop_front();
}

std::string SpikeGuard::describe(double loss) const {
  double mean = 0, std = 0;
  if (!losses_.empty()) moments(mean, std);
  char text[256];
  std::snprintf(text, sizeof text,
                "loss %.6g is %.1f standard deviations above the mean %.6g of the last %zu "
                "accepted steps (train.spike_z %g)",
                loss, std > 0 ? (loss - mean) / std : 0.0, mean, losses_.size(), z_);
  return text;
}

void SpikeGuard::restore(const std::vector<double>& losses) {
  losses_.clear();
  for (double loss : losses) accept(loss);
}

std::string spike_guard_log_path(const std::string& run_dir) {
  return (std::filesystem::path(run_dir) / "spike_guard.jsonl").string();
}

std::string spike_guard_log_line(int64_t step, double loss) {
  return JsonLine().add("step", step).add("loss", loss).str() + "\n";
}

std::vector<double> read_spike_guard_log(const std::string& path, int64_t last_step, bool& found) {
  std::vector<double> losses;
  std::ifstream in(path);
  found = static_cast<bool>(in);
  std::string text;
  while (std::getline(in, text)) {
    // Without exceptions: a torn last line (a crash mid-write) is discarded, not an error.
    const nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object()) continue;
    const auto step = line.find("step"), loss = line.find("loss");
    if (step == line.end() || loss == line.end() || !step->is_number_integer() ||
        !loss->is_number())
      continue;
    if (step->get<int64_t>() <= last_step) losses.push_back(loss->get<double>());
  }
  return losses;
}

}  // namespace sy
