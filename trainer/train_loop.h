// The training loop: sample the step's routing groups, forward and backward each, synchronise
// gradients, clip, step the optimizer, log, evaluate. Collective over the ranks of `world`.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainer/config.h"

namespace sy {

struct TrainOptions {
  bool print = true;               // model card and progress lines on rank 0's stdout
  MPI_Comm world = MPI_COMM_WORLD;
  bool collect_parameters = false; // fill TrainSummary::parameters on rank 0 (tests)
};

struct TrainSummary {
  int64_t steps = 0;
  std::vector<double> losses;  // per step, reduced over all ranks
  double final_val_loss = 0.0;
  double seconds = 0.0;
  double tokens_per_s = 0.0;   // global
  bool dropped_any = false;    // some step dropped assignments at capacity
  // With collect_parameters, on rank 0: every parameter by path, experts stacked by global index.
  std::vector<std::pair<std::string, std::vector<double>>> parameters;
};

TrainSummary train(const Config& config, const TrainOptions& options = {});

}  // namespace sy
