// The training loop: sample the step's routing groups, forward and backward each, clip, step the
// optimizer, log, evaluate.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

struct TrainSummary {
  int64_t steps = 0;
  std::vector<double> losses;  // per step
  double final_val_loss = 0.0;
  double seconds = 0.0;
  double tokens_per_s = 0.0;
};

struct TrainOptions {
  bool print = true;  // model card and progress lines on stdout
};

TrainSummary train(const Config& config, const TrainOptions& options = {});

}  // namespace sy
