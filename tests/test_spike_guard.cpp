// The loss-spike guard (train.spike_window; trainer/spike_guard.h), under mpirun -np 2. A spike
// injected into one rank's loss is skipped on every rank, and the run goes on exactly as one where
// that step was skipped for a NaN gradient instead: both skip the same step with the same state
// (no update, grads dropped by the next zero_grads, no expert-bias update, the optimizer's step
// count unchanged, the step left out of the window), so every other step's loss and every final
// parameter must be bitwise equal. A run stopped by SIGTERM and resumed judges a later spike
// exactly as the uninterrupted run (the window comes back from <run.dir>/spike_guard.jsonl).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>

#include "tests/dist_harness.h"
#include "trainer/spike_guard.h"

namespace sy {
namespace {

using test::world_rank;
using test::world_size;

TEST(SpikeGuardUnit, JudgesOnlyAFullEnoughWindowAndSkipsNothingElse) {
  SpikeGuard guard(4, 3.0, 3);
  EXPECT_FALSE(guard.is_spike(1e9));  // empty window
  guard.accept(1.0);
  guard.accept(1.1);
  EXPECT_FALSE(guard.is_spike(1e9));  // 2 < spike_min_steps
  guard.accept(0.9);
  EXPECT_TRUE(guard.is_spike(1e9));
  EXPECT_FALSE(guard.is_spike(1.2));
  EXPECT_FALSE(guard.is_spike(std::numeric_limits<double>::quiet_NaN()));  // non-finite: elsewhere
  for (double loss : {1.0, 1.0, 1.0, 1.0}) guard.accept(loss);
  EXPECT_EQ(guard.losses().size(), 4u);
  EXPECT_FALSE(guard.is_spike(2.0));  // std 0: nothing to judge against
  SpikeGuard off(0, 3.0, 3);
  off.accept(1.0);
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.losses().empty());
}

TEST(SpikeGuardUnit, LogRoundTripsEveryBit) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("sy_spike_" + std::to_string(world_rank()))).string();
  const std::vector<double> losses{5.545177444479562, 1.0 / 3.0, 2.718281828459045e-7};
  {
    std::ofstream out(path);
    for (size_t i = 0; i < losses.size(); ++i) out << spike_guard_log_line(i + 1, losses[i]);
    out << "{\"step\": 4, \"loss\": 1.2";  // a torn last line
  }
  bool found = false;
  EXPECT_EQ(read_spike_guard_log(path, 100, found), losses);
  EXPECT_TRUE(found);
  EXPECT_EQ(read_spike_guard_log(path, 2, found).size(), 2u);
  std::filesystem::remove(path);
}

class SpikeGuardRun : public test::DistTrain {
 public:
  static Config config(const std::string& run) {
    Config c = base_config();
    c.train.steps = 14;
    c.train.spike_window = 8;
    c.train.spike_min_steps = 4;
    c.train.spike_z = 6.0;
    c.eval.every = 0;
    c.eval.batches = 1;
    c.checkpoint.every = 0;
    c.checkpoint.keep_last = 100;
    c.run.dir = (dir / run).string();
    return c;
  }
};

// +1000 on `rank`'s loss sum at `step`: a spike of +500 in the step's mean over 2 groups.
auto spike_at(int rank, int64_t step) {
  return [=](int64_t now) { return now == step && world_rank() == rank ? 1000.0 : 0.0; };
}

TEST_F(SpikeGuardRun, SpikeOnOneRankIsSkippedOnEveryRankLikeANanStep) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  const TrainSummary spiked = train_world(config("spiked"), {.loss_offset = spike_at(1, 10)});
  TrainOptions nan_step;
  nan_step.after_backward = [](int64_t now, const std::vector<Param*>& params, Backend& backend) {
    if (now != 10 || world_rank() != 1) return;
    std::vector<double> grad = backend.read(params[0]->grad);
    grad[0] = std::numeric_limits<double>::quiet_NaN();
    backend.write(params[0]->grad, std::span<const double>(grad));
  };
  const TrainSummary skipped = train_world(config("nan"), nan_step);
  // On every rank (each checks its own summary): the spike alone was skipped, by the guard.
  EXPECT_EQ(spiked.skipped_steps, 1);
  EXPECT_EQ(spiked.spike_steps, 1);
  EXPECT_EQ(skipped.skipped_steps, 1);
  EXPECT_EQ(skipped.spike_steps, 0);
  ASSERT_EQ(spiked.losses.size(), 14u);
  ASSERT_EQ(skipped.losses.size(), 14u);
  EXPECT_GT(spiked.losses[9], 100.0);
  for (size_t i = 0; i < 14; ++i) {
    if (i != 9) {
      EXPECT_EQ(spiked.losses[i], skipped.losses[i]) << "step " << i + 1;
    }
  }
  if (world_rank() == 0) {
    ASSERT_EQ(spiked.parameters.size(), skipped.parameters.size());
    for (size_t p = 0; p < spiked.parameters.size(); ++p)
      EXPECT_EQ(spiked.parameters[p].second, skipped.parameters[p].second)
          << spiked.parameters[p].first;
  }
  // Without the guard the same offset is only a number in the log: nothing is skipped.
  Config unguarded = config("unguarded");
  unguarded.train.spike_window = 0;
  EXPECT_EQ(train_world(unguarded, {.loss_offset = spike_at(1, 10)}).skipped_steps, 0);
}

TEST_F(SpikeGuardRun, ResumedRunJudgesASpikeAsTheUninterruptedOne) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  // The spike at step 9 is judged on a window of steps 1-8; a resumed run that started at step 6
  // with an empty window would hold only steps 7-8 (< spike_min_steps) and let it through.
  const TrainSummary straight = train_world(config("straight"), {.loss_offset = spike_at(0, 9)});
  EXPECT_EQ(straight.spike_steps, 1);
  const Config c = config("stopped");
  TrainOptions stop;
  stop.after_backward = [](int64_t step, const std::vector<Param*>&, Backend&) {
    if (step == 6 && world_rank() == 1) std::raise(SIGTERM);
  };
  const TrainSummary stopped = train_world(c, stop);
  ASSERT_EQ(stopped.steps, 6);
  const TrainSummary resumed = train_world(c, {.resume = "auto", .loss_offset = spike_at(0, 9)});
  ASSERT_EQ(resumed.first_step, 6);
  EXPECT_EQ(resumed.spike_steps, 1);
  ASSERT_EQ(resumed.losses.size(), 8u);
  for (size_t i = 0; i < 8; ++i)
    EXPECT_EQ(resumed.losses[i], straight.losses[6 + i]) << "step " << 7 + i;
  if (world_rank() == 0) {
    for (size_t p = 0; p < straight.parameters.size(); ++p)
      EXPECT_EQ(resumed.parameters[p].second, straight.parameters[p].second)
          << straight.parameters[p].first;
  }
}

}  // namespace
}  // namespace sy
