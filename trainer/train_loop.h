// The training loop: sample the step's routing groups, forward and backward each, synchronise
// gradients, clip, step the optimizer, log, evaluate, checkpoint (docs/checkpoint.md); optionally
// resume from a checkpoint first. Collective over the ranks of `world`.
#pragma once
#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#include "parallel/launch.h"
#include "parallel/process_groups.h"
#include "trainer/config.h"

namespace sy {

struct TrainOptions {
  bool print = true;               // model card and progress lines on rank 0's stdout
  CommHandle world = world_comm();  // the ranks that train (tests: a split of the world)
  bool collect_parameters = false; // fill TrainSummary::parameters on rank 0 (tests)
  // "": start fresh; "auto": the newest complete checkpoint in checkpoint.dir (fresh if none);
  // else the path of a checkpoint. A resumed run continues at the checkpoint's step + 1 and
  // appends to metrics.jsonl (dropping any lines after that step).
  std::string resume = "";
  // The command line's guard of run.dir (README "Running on a cluster"): hold <run.dir>/.lock for
  // the run's life (a second job is refused), check run.dir and the checkpoint folder writable,
  // and refuse a fresh run into a run.dir that holds a run unless `overwrite` moves it aside to
  // <run.dir>.old-<UTC time>. Off for library callers (tests reuse folders freely).
  bool guard_run_dir = false;
  bool overwrite = false;
  // Tests only: called on every rank after the step's backward passes, before the gradients are
  // synchronised, with the step number (1-based). Injects faults (a NaN gradient, a signal).
  std::function<void(int64_t step, const std::vector<Param*>& params, Backend& backend)>
      after_backward = nullptr;
  // Tests only: added to this rank's loss sum of the step (before the loss is reduced over the
  // ranks and judged), with the step number (1-based). Injects a loss spike.
  std::function<double(int64_t step)> loss_offset = nullptr;
};

// Exit statuses of `switchyard train` beyond 0 (done), 1 (error) and 2 (usage).
inline constexpr int kExitPreempted = 75;  // stopped by a signal after a checkpoint: resume it
inline constexpr int kExitDiverged = 3;    // train.max_bad_steps non-finite steps in a row

// Raised on every rank when training diverged: train.max_bad_steps non-finite steps in a row, or
// non-finite weights where a checkpoint was due (no checkpoint is written from them).
struct DivergedError : CollectiveError {
  using CollectiveError::CollectiveError;
};

struct TrainSummary {
  int64_t steps = 0;           // the step reached (train.steps, or where a signal stopped it)
  int64_t first_step = 0;      // steps already done before this call (the resumed checkpoint's)
  std::vector<double> losses;  // per step run by this call (first_step+1 ..), reduced over all ranks
  double final_val_loss = 0.0;
  double seconds = 0.0;
  double tokens_per_s = 0.0;   // global
  bool dropped_any = false;    // some step dropped assignments at capacity
  std::string resumed_from;    // the checkpoint loaded ("" when the run started fresh)
  std::string initialised_from;  // checkpoint.init_from's file, when a fresh run took its weights
  std::vector<std::string> resume_messages;  // on rank 0: what resuming reported (notes, warnings)
  std::string last_checkpoint; // the newest checkpoint this call wrote
  int stop_signal = 0;         // SIGTERM, SIGINT or SIGUSR1 when a signal stopped the run, else 0
  int64_t skipped_steps = 0;   // steps skipped as non-finite (loss or gradient norm), no update
  int64_t spike_steps = 0;     // of those, skipped by the loss-spike guard (train.spike_window)
  // With collect_parameters, on rank 0: every parameter by path, experts stacked by global index.
  std::vector<std::pair<std::string, std::vector<double>>> parameters;
};

TrainSummary train(const Config& config, const TrainOptions& options = {});

}  // namespace sy
