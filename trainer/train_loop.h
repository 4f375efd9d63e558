// The training loop: sample the step's routing groups, forward and backward each, synchronise
// gradients, clip, step the optimizer, log, evaluate, checkpoint (docs/checkpoint.md); optionally
// resume from a checkpoint first. Collective over the ranks of `world`.
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
  // "": start fresh; "auto": the newest complete checkpoint in checkpoint.dir (fresh if none);
  // else the path of a checkpoint. A resumed run continues at the checkpoint's step + 1 and
  // appends to metrics.jsonl (dropping any lines after that step).
  std::string resume = "";
};

struct TrainSummary {
  int64_t steps = 0;           // the step reached (train.steps)
  int64_t first_step = 0;      // steps already done before this call (the resumed checkpoint's)
  std::vector<double> losses;  // per step run by this call (first_step+1 ..), reduced over all ranks
  double final_val_loss = 0.0;
  double seconds = 0.0;
  double tokens_per_s = 0.0;   // global
  bool dropped_any = false;    // some step dropped assignments at capacity
  std::string resumed_from;    // the checkpoint loaded ("" when the run started fresh)
  std::vector<std::string> resume_messages;  // on rank 0: what resuming reported (notes, warnings)
  std::string last_checkpoint; // the newest checkpoint this call wrote
  // With collect_parameters, on rank 0: every parameter by path, experts stacked by global index.
  std::vector<std::pair<std::string, std::vector<double>>> parameters;
};

TrainSummary train(const Config& config, const TrainOptions& options = {});

}  // namespace sy
