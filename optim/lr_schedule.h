// The learning-rate schedule (docs/optim.md): linear warmup, then the peak held until the last
// decay_steps steps, which decay to min_lr along a cosine, a line or 1 - sqrt. decay_steps 0 (the
// default) decays over every step after the warmup; a shorter decay is warmup-stable-decay (WSD).
#pragma once
#include <cstdint>
#include <string>

namespace sy {

// The decay's shape, by the fraction p in [0, 1] of the decay done.
enum class LrDecay {
  cosine,         // min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
  linear,         // lr - (lr - min_lr) * p
  one_minus_sqrt  // lr - (lr - min_lr) * sqrt(p)
};

// The schedule's settings (the trainer fills them from train.*, trainer/config.h).
struct LrSchedule {
  double lr = 3e-3;      // the peak
  double min_lr = 3e-4;  // where the decay ends
  int64_t warmup_steps = 50;
  int64_t steps = 800;   // the run's optimizer steps
  LrDecay decay = LrDecay::cosine;
  int64_t decay_steps = 0;  // the last steps that decay; 0: every step after the warmup
};

// LR at 0-based optimizer step `step`. No warmup when warmup_steps == 0; the peak lr is kept when
// there is nothing left to decay (steps <= warmup_steps); past the last step it stays at min_lr.
// A decay_steps longer than the steps after the warmup decays over those steps.
double lr_at(const LrSchedule& schedule, int64_t step);

// The schedule in words, with its phases' step ranges (0-based, end exclusive), e.g. "warmup
// over steps [0, 50) to 0.003, held over [50, 640), 1-sqrt decay over [640, 800) to 0.0003".
std::string describe(const LrSchedule& schedule);

}  // namespace sy
