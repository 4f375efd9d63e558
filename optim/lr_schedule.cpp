#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>

namespace sy {

namespace {
// How many of the steps after a warmup of `warmup` steps decay: decay_steps, at most all of them
// (0: all of them). Negative when the warmup outlasts the run.
int64_t decay_length(const LrSchedule& schedule, int64_t warmup) {
  const int64_t after_warmup = schedule.steps - warmup;
  return schedule.decay_steps > 0 ? std::min(schedule.decay_steps, after_warmup) : after_warmup;
}
}  // namespace

double lr_at(const LrSchedule& schedule, int64_t step) {
  const int64_t warmup = schedule.warmup_steps;
  if (warmup > 0 && step < warmup)
    return schedule.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);

  const int64_t decay_steps = decay_length(schedule, std::max<int64_t>(warmup, 0));
  if (decay_steps <= 0) return schedule.lr;
  const int64_t decay_start = schedule.steps - decay_steps;  // the stable phase ends here
  if (step < decay_start) return schedule.lr;
  // Clamped so that a step past the end does not climb back up the cosine.
  const double progress = std::min(1.0, static_cast<double>(step - decay_start) / decay_steps);
  switch (schedule.decay) {
    case LrDecay::linear:
      return schedule.lr - (schedule.lr - schedule.min_lr) * progress;
    case LrDecay::one_minus_sqrt:
      return schedule.lr - (schedule.lr - schedule.min_lr) * std::sqrt(progress);
    case LrDecay::cosine:
      break;
  }
  return schedule.min_lr +
         0.5 * (schedule.lr - schedule.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

std::string describe(const LrSchedule& schedule) {
  const auto number = [](double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.6g", value);
    return std::string(text);
  };
  const auto range = [](int64_t begin, int64_t end) {
    return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
  };
  const int64_t warmup = std::min(std::max<int64_t>(schedule.warmup_steps, 0), schedule.steps);
  const int64_t decay_steps = decay_length(schedule, warmup);
  std::string text;
  if (warmup > 0) text = "warmup over steps " + range(0, warmup) + " to " + number(schedule.lr);
  if (schedule.warmup_steps > schedule.steps)  // a shortened run keeps its warmup
    text += " (reached at step " + std::to_string(schedule.warmup_steps) + ")";
  if (decay_steps <= 0) return text.empty() ? "no steps" : text;
  const int64_t decay_start = schedule.steps - decay_steps;
  if (decay_start > warmup)
    text += (text.empty() ? "held at " + number(schedule.lr) + " over steps " : ", held over ") +
            range(warmup, decay_start);
  const char* shape = schedule.decay == LrDecay::linear           ? "linear"
                      : schedule.decay == LrDecay::one_minus_sqrt ? "1-sqrt"
                                                                  : "cosine";
  text += (text.empty() ? std::string("") : std::string(", ")) + shape + " decay" +
          (text.empty() ? " from " + number(schedule.lr) : std::string("")) + " over " +
          (text.empty() ? "steps " : "") + range(decay_start, schedule.steps) + " to " +
          number(schedule.min_lr);
  return text;
}

}  // namespace sy
