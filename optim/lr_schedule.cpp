#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace sy {

double lr_at(const LrSchedule& schedule, int64_t step) {
  const int64_t warmup = schedule.warmup_steps;
  if (warmup > 0 && step < warmup)
    return schedule.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);

  const int64_t after_warmup = schedule.steps - std::max<int64_t>(warmup, 0);
  const int64_t decay_steps =
      schedule.decay_steps > 0 ? std::min(schedule.decay_steps, after_warmup) : after_warmup;
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

}  // namespace sy
