// The loss-spike guard (train.spike_window, spike_z, spike_min_steps; docs/config.md): judges a
// step's loss, reduced over all ranks, against the mean and standard deviation of the last
// `window` accepted steps' losses. A spike is skipped like a non-finite step (no update, counted,
// train.max_bad_steps applies); skipped steps never enter the window.
//
// Resume: rank 0 appends every accepted step's loss to <run.dir>/spike_guard.jsonl
// ({"step": N, "loss": X}, written by JsonLine: X is the shortest text that reads back to the
// same double); a resumed run drops the lines after its checkpoint's step and refills the window
// from the last ones, bit for bit, so it judges every later step exactly as the uninterrupted
// run did.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace sy {

class SpikeGuard {
 public:
  SpikeGuard(int64_t window, double z, int64_t min_steps);

  bool enabled() const { return window_ > 0; }
  // True when the window holds at least min_steps losses, their standard deviation is above 0,
  // and `loss` exceeds mean + z * std. A non-finite loss is not judged here (false).
  bool is_spike(double loss) const;
  // The step was accepted: its loss enters the window (the oldest one leaves a full window).
  void accept(double loss);
  // "loss 9.21 is 14.2 standard deviations above the mean 3.10 of the last 100 accepted steps".
  std::string describe(double loss) const;

  const std::deque<double>& losses() const { return losses_; }
  // Refills the window with the newest `window` of `losses` (oldest first).
  void restore(const std::vector<double>& losses);

 private:
  void moments(double& mean, double& std) const;  // over the window, summed oldest first

  int64_t window_;
  double z_;
  int64_t min_steps_;
  std::deque<double> losses_;
};

// The spike guard's file in a run directory, one line per accepted step.
std::string spike_guard_log_path(const std::string& run_dir);
std::string spike_guard_log_line(int64_t step, double loss);
// The losses of the lines with step <= last_step, in file order; lines that do not parse (a
// torn last line) are passed over. `found` tells whether the file exists.
std::vector<double> read_spike_guard_log(const std::string& path, int64_t last_step, bool& found);

}  // namespace sy
