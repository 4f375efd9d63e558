// The learning-rate schedule of SPEC.md section 4: linear warmup, then cosine decay to min_lr.
#pragma once
#include <cstdint>

#include "trainer/config.h"

namespace sy {

// LR at 0-based optimizer step `step`. No warmup when warmup_steps == 0; the peak lr is kept when
// there is nothing left to decay (steps <= warmup_steps); past the last step it stays at min_lr.
double lr_at(const TrainConfig& train, int64_t step);

}  // namespace sy
