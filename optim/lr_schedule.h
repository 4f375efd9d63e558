// The learning-rate schedule of SPEC.md section 4: linear warmup, then cosine decay to min_lr.
#pragma once
#include <cstdint>

namespace sy {

// The schedule's settings (the trainer fills them from train.*, trainer/config.h).
struct LrSchedule {
  double lr = 3e-3;      // the peak
  double min_lr = 3e-4;  // where the cosine ends
  int64_t warmup_steps = 50;
  int64_t steps = 800;   // the run's optimizer steps
};

// LR at 0-based optimizer step `step`. No warmup when warmup_steps == 0; the peak lr is kept when
// there is nothing left to decay (steps <= warmup_steps); past the last step it stays at min_lr.
double lr_at(const LrSchedule& schedule, int64_t step);

}  // namespace sy
