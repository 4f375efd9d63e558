// Operations on a shared cluster (README "Running on a cluster"), under mpirun -np 2: a SIGTERM on
// one rank stops every rank after the same step with a checkpoint, and --resume auto continues bit
// for bit; a NaN gradient on one rank is skipped on every rank as if the step had no update;
// train.max_bad_steps stops a diverged run; lr=1e300 never leaves a non-finite checkpoint; a
// locked or already used run.dir is refused, and --overwrite moves the old run aside; --resume auto
// falls back past a damaged newest checkpoint; keep_last removes only the run's own checkpoints.
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>

#include "checkpoint_tamper.h"
#include "tests/dist_harness.h"
#include "trainer/checkpoint.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using test::world_rank;
using test::world_size;

class Preemption : public test::DistTrain {
 public:
  static Config config(const std::string& run, int64_t steps) {
    Config c = base_config();
    c.train.steps = steps;
    c.eval.every = 0;
    c.eval.batches = 1;
    c.checkpoint.every = 5;
    c.checkpoint.keep_last = 100;
    c.run.dir = (dir / run).string();
    return c;
  }
};

// Tensor norms of a checkpoint, in file order (equal norms, bit for bit, stand for equal tensors).
std::vector<double> norms_of(const std::string& path) {
  std::vector<double> norms;
  scan_checkpoint_tensors(path, nullptr, [&](const TensorInfo& info) { norms.push_back(info.norm); });
  return norms;
}

std::string latest_of(const fs::path& checkpoints) {
  std::ifstream in(checkpoints / "latest");
  std::string name;
  std::getline(in, name);
  return name;
}

// Rank `rank`'s first gradient gets a NaN at `step` (and, with `through`, at every later step).
auto poison_gradient(int rank, int64_t step, bool through = false) {
  return [=](int64_t now, const std::vector<Param*>& params, Backend& backend) {
    if (world_rank() != rank || now < step || (!through && now != step)) return;
    std::vector<double> grad = backend.read(params[0]->grad);
    grad[0] = std::numeric_limits<double>::quiet_NaN();
    backend.write(params[0]->grad, std::span<const double>(grad));
  };
}

TEST_F(Preemption, SigtermOnOneRankSavesAndResumesExactly) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  const Config straight_config = config("straight", 12);
  const TrainSummary straight = train_world(straight_config);

  const Config c = config("stopped", 12);
  TrainOptions signalled;
  signalled.after_backward = [](int64_t step, const std::vector<Param*>&, Backend&) {
    if (step == 7 && world_rank() == 1) std::raise(SIGTERM);  // as Slurm or scancel would
  };
  const TrainSummary stopped = train_world(c, signalled);
  EXPECT_EQ(stopped.stop_signal, SIGTERM);  // on every rank: rank 0 saw it through the all-reduce
  EXPECT_EQ(stopped.steps, 7);
  ASSERT_EQ(stopped.losses.size(), 7u);
  const fs::path checkpoints = fs::path(c.run.dir) / "checkpoints";
  EXPECT_EQ(stopped.last_checkpoint, (checkpoints / checkpoint_file_name(7)).string());
  if (world_rank() == 0) {
    EXPECT_EQ(latest_of(checkpoints), checkpoint_file_name(7));
  }

  const TrainSummary resumed = train_world(c, {.resume = "auto"});
  EXPECT_EQ(resumed.stop_signal, 0);
  ASSERT_EQ(resumed.first_step, 7);
  ASSERT_EQ(resumed.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i)
    EXPECT_EQ(resumed.losses[i], straight.losses[7 + i]) << "step " << 8 + i;
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(stopped.losses[i], straight.losses[i]) << "step " << 1 + i;
  if (world_rank() == 0) {
    EXPECT_EQ(norms_of(resumed.last_checkpoint),
              norms_of((fs::path(straight_config.run.dir) / "checkpoints" / checkpoint_file_name(12)).string()));
  }
}

TEST_F(Preemption, NanGradientOnOneRankIsSkippedOnEveryRank) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  Config clean_config = config("clean", 8);
  clean_config.checkpoint.every = 1;
  const TrainSummary clean = train_world(clean_config);
  Config c = config("poisoned", 8);
  c.checkpoint.every = 1;
  const TrainSummary poisoned = train_world(c, {.after_backward = poison_gradient(1, 4)});
  EXPECT_EQ(poisoned.skipped_steps, 1);
  EXPECT_EQ(poisoned.steps, 8);
  ASSERT_EQ(poisoned.losses.size(), 8u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(poisoned.losses[i], clean.losses[i]) << "step " << 1 + i;
  for (double loss : poisoned.losses) EXPECT_TRUE(std::isfinite(loss));
  if (world_rank() != 0) return;
  // No update at step 4: the weights and moments after it are those after step 3, exactly.
  const fs::path clean_dir = fs::path(clean_config.run.dir) / "checkpoints";
  const fs::path poisoned_dir = fs::path(c.run.dir) / "checkpoints";
  EXPECT_EQ(norms_of((poisoned_dir / checkpoint_file_name(4)).string()),
            norms_of((clean_dir / checkpoint_file_name(3)).string()));
  EXPECT_EQ(read_checkpoint_header((poisoned_dir / checkpoint_file_name(4)).string()).optimizer_step, 3);
  EXPECT_NE(norms_of((poisoned_dir / checkpoint_file_name(5)).string()),
            norms_of((clean_dir / checkpoint_file_name(4)).string()));  // and training goes on
}

TEST_F(Preemption, MaxBadStepsInARowStopsTheRun) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  Config c = config("diverged", 10);
  c.checkpoint.every = 1;
  c.train.max_bad_steps = 3;
  try {
    train_world(c, {.after_backward = poison_gradient(0, 3, true)});
    ADD_FAILURE() << "expected DivergedError";
  } catch (const DivergedError& error) {
    EXPECT_NE(std::string(error.what()).find("step 5"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("train.max_bad_steps 3"), std::string::npos) << error.what();
  }
  if (world_rank() != 0) return;
  const fs::path checkpoints = fs::path(c.run.dir) / "checkpoints";
  EXPECT_EQ(latest_of(checkpoints), checkpoint_file_name(4));  // skipped steps leave finite weights
  EXPECT_FALSE(fs::exists(checkpoints / checkpoint_file_name(5)));
}

TEST_F(Preemption, HugeLearningRateNeverLeavesANonFiniteCheckpoint) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  Config c = config("lr1e300", 6);
  c.train.lr = 1e300;
  c.train.min_lr = 1e300;
  c.train.warmup_steps = 0;
  c.checkpoint.every = 1;
  EXPECT_THROW(train_world(c), DivergedError);
  if (world_rank() != 0) return;
  const fs::path checkpoints = fs::path(c.run.dir) / "checkpoints";
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints, error))
    if (entry.path().extension() == ".h5") {
      for (double norm : norms_of(entry.path().string())) EXPECT_TRUE(std::isfinite(norm)) << entry.path();
    }
}

TEST_F(Preemption, LockedRunDirIsRefused) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  const Config c = config("locked", 3);
  int held = -1;  // another job's lock (flock locks belong to the open file, so this conflicts)
  if (world_rank() == 0) {
    fs::create_directories(c.run.dir);
    held = ::open((fs::path(c.run.dir) / ".lock").c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(held, 0);
    ASSERT_EQ(::flock(held, LOCK_EX | LOCK_NB), 0);
  }
  try {
    train_world(c, {.guard_run_dir = true});
    ADD_FAILURE() << "expected the locked run.dir to be refused";
  } catch (const CollectiveError& error) {
    EXPECT_NE(std::string(error.what()).find("in use by another job"), std::string::npos) << error.what();
  }
  if (world_rank() == 0) {
    EXPECT_FALSE(fs::exists(fs::path(c.run.dir) / "metrics.jsonl"));  // nothing of the first touched
    ::close(held);  // the other job ends: its lock goes with it
  }
  EXPECT_EQ(train_world(c, {.guard_run_dir = true}).steps, 3);
}

TEST_F(Preemption, FreshRunIntoUsedRunDirNeedsResumeOrOverwrite) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  const Config c = config("reused", 3);
  train_world(c, {.guard_run_dir = true});
  try {
    train_world(c, {.guard_run_dir = true});
    ADD_FAILURE() << "expected a fresh run into a used run.dir to be refused";
  } catch (const CollectiveError& error) {
    const std::string what = error.what();
    EXPECT_NE(what.find("--resume auto"), std::string::npos) << what;
    EXPECT_NE(what.find("--overwrite"), std::string::npos) << what;
  }
  // Resuming is fine.
  EXPECT_EQ(train_world(c, {.resume = "auto", .guard_run_dir = true}).first_step, 3);
  EXPECT_EQ(train_world(c, {.guard_run_dir = true, .overwrite = true}).first_step, 0);
  if (world_rank() != 0) return;
  int aside = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().starts_with("reused.old-")) {
      ++aside;
      EXPECT_TRUE(fs::exists(entry.path() / "checkpoints" / checkpoint_file_name(3)));
    }
  EXPECT_EQ(aside, 1);
}

TEST_F(Preemption, UnwritableCheckpointDirIsFoundBeforeTheFirstStep) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  Config c = config("unwritable", 3);
  c.checkpoint.dir = (dir / "a_file" / "checkpoints").string();
  if (world_rank() == 0) std::ofstream(dir / "a_file") << "not a folder\n";
  MPI_Barrier(MPI_COMM_WORLD);
  try {
    train_world(c, {.guard_run_dir = true});
    ADD_FAILURE() << "expected the checkpoint.dir to be refused";
  } catch (const CollectiveError& error) {
    EXPECT_NE(std::string(error.what()).find("checkpoint.dir"), std::string::npos) << error.what();
  }
  if (world_rank() == 0) {
    EXPECT_FALSE(fs::exists(fs::path(c.run.dir) / "metrics.jsonl"));
  }
}

TEST_F(Preemption, KeepLastRemovesOnlyThisRunsCheckpoints) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  const fs::path shared = dir / "shared_checkpoints";
  Config first = config("keep_first", 10);
  first.checkpoint.dir = shared.string();
  first.checkpoint.keep_last = 2;
  train_world(first);  // step 5 and step 10
  Config second = config("keep_second", 3);
  second.checkpoint.dir = shared.string();
  second.checkpoint.every = 1;
  second.checkpoint.keep_last = 2;
  train_world(second);  // steps 1, 2, 3, keeping 2 and 3
  if (world_rank() != 0) return;
  for (int64_t step : {2, 3, 5, 10})
    EXPECT_TRUE(fs::exists(shared / checkpoint_file_name(step))) << step;
  EXPECT_FALSE(fs::exists(shared / checkpoint_file_name(1)));
  const std::string first_id = provenance_run_id(
      read_checkpoint_header((shared / checkpoint_file_name(10)).string()).provenance);
  EXPECT_FALSE(first_id.empty());
  EXPECT_NE(first_id, provenance_run_id(read_checkpoint_header(
                          (shared / checkpoint_file_name(3)).string()).provenance));
}

TEST_F(Preemption, ResumeAutoFallsBackPastADamagedNewestCheckpoint) {
  ASSERT_EQ(world_size(), 2) << "run under mpirun -np 2";
  Config c = config("damaged", 10);
  const TrainSummary straight = train_world(c);
  const fs::path checkpoints = fs::path(c.run.dir) / "checkpoints";
  if (world_rank() == 0)  // opens with a valid header and listing; one tensor fails its checksum
    tamper::corrupt_tensor((checkpoints / checkpoint_file_name(10)).string(), "/model/layers/0/attn/wq");
  MPI_Barrier(MPI_COMM_WORLD);
  const TrainSummary resumed = train_world(c, {.resume = "auto"});
  EXPECT_EQ(resumed.first_step, 5);
  ASSERT_EQ(resumed.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(resumed.losses[i], straight.losses[5 + i]) << "step " << 6 + i;
  if (world_rank() != 0) return;
  bool said = false;
  for (const std::string& line : resumed.resume_messages)
    said |= line.find("resume auto: skipped") != std::string::npos &&
            line.find(checkpoint_file_name(10)) != std::string::npos;
  EXPECT_TRUE(said);
}

}  // namespace
}  // namespace sy
