// HDF5 checkpoints under mpirun -np 4 (docs/checkpoint.md): exact resume at (W, P) = (2, 2) and
// (4, 2); a checkpoint written at (W, P, A) = (4, 4, 1) resumed at (2, 1, 2) and (4, 2, 1); the
// experts that world rank 0 gathered one by one land in the file at their global index; and a
// problem that only some ranks see (a damaged expert that only they read) fails every rank.
// Each layout runs on the first W ranks of the world, as in test_dist_train.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "checkpoint_tamper.h"
#include "tests/dist_harness.h"
#include "trainer/checkpoint.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using test::Layout;

// The shared token file and the training of one layout on the first W ranks come from the
// distributed harness.
class DistCheckpoint : public test::DistTrain {
 public:
  static Config config(const Layout& layout, const std::string& run) {
    Config c = base_config();
    c.moe.capacity_factor = 1.0;  // with drops: capacity decisions must continue exactly too
    c.parallel.expert_parallel = layout.P;
    c.train.grad_accum_steps = layout.A;
    c.eval.every = 0;
    c.checkpoint.every = 10;
    c.run.dir = (dir / run).string();
    return c;
  }
};

using test::relative_l2;
using test::world_rank;
using test::world_size;

void check_exact_resume(const Layout& layout) {
  ASSERT_GE(world_size(), layout.W) << "run under mpirun -np 4";
  const Config c = DistCheckpoint::config(layout, "exact_" + layout.name());
  const TrainSummary straight = DistCheckpoint::train_on(layout.W, c);
  Config again = c;
  again.checkpoint.dir = (DistCheckpoint::dir / ("exact_resumed_" + layout.name())).string();
  const std::string file = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(10)).string();
  const TrainSummary resumed = DistCheckpoint::train_on(layout.W, again, file);
  if (world_rank() != 0) return;
  ASSERT_EQ(straight.losses.size(), 20u);
  ASSERT_EQ(resumed.first_step, 10);
  ASSERT_EQ(resumed.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i)
    EXPECT_EQ(resumed.losses[i], straight.losses[10 + i]) << "step " << 11 + i << " at " << layout.name();
  ASSERT_EQ(resumed.parameters.size(), straight.parameters.size());
  for (size_t p = 0; p < straight.parameters.size(); ++p)
    EXPECT_TRUE(resumed.parameters[p].second == straight.parameters[p].second)
        << straight.parameters[p].first << " at " << layout.name();
  EXPECT_TRUE(straight.dropped_any);
}

TEST_F(DistCheckpoint, ExactResumeW2P2) { check_exact_resume({2, 2, 1}); }
TEST_F(DistCheckpoint, ExactResumeW4P2) { check_exact_resume({4, 2, 1}); }

TEST_F(DistCheckpoint, ResumeUnderAnotherLayout) {
  ASSERT_GE(world_size(), 4) << "run under mpirun -np 4";
  const Layout saved{4, 4, 1};
  const Config c = config(saved, "layout_" + saved.name());
  const TrainSummary straight = train_on(saved.W, c);
  const std::string file = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(10)).string();

  // The experts rank 0 received one at a time sit at their global index: the file's step-20
  // tensors are the gathered parameters, bit for bit.
  if (world_rank() == 0) {
    const std::string last = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(20)).string();
    for (const auto& [path, values] : straight.parameters) {
      const std::vector<float> stored = tamper::read_floats(last, "/model/" + path);
      ASSERT_EQ(stored.size(), values.size()) << path;
      for (size_t i = 0; i < values.size(); ++i)
        ASSERT_EQ(stored[i], static_cast<float>(values[i])) << path << "[" << i << "]";
    }
  }

  for (const Layout& layout : {Layout{2, 1, 2}, Layout{4, 2, 1}}) {
    Config moved = config(layout, "layout_resumed_" + layout.name());
    const TrainSummary resumed = train_on(layout.W, moved, file);
    if (world_rank() != 0) continue;
    ASSERT_EQ(resumed.losses.size(), 10u);
    double max_loss = 0, max_param = 0;
    for (size_t i = 0; i < 10; ++i)
      max_loss = std::max(max_loss, std::abs(resumed.losses[i] - straight.losses[10 + i]) /
                                        std::abs(straight.losses[10 + i]));
    for (size_t p = 0; p < straight.parameters.size(); ++p)
      max_param = std::max(max_param, relative_l2(resumed.parameters[p].second,
                                                  straight.parameters[p].second));
    EXPECT_LT(max_loss, 1e-5) << "at " << layout.name();
    EXPECT_LT(max_param, 1e-5) << "at " << layout.name();
    std::printf("resume of a (4, 4, 1) checkpoint at (W, P, A) = (%d, %d, %d): max loss rel diff "
                "%.2e, max parameter rel L2 diff %.2e\n",
                layout.W, layout.P, layout.A, max_loss, max_param);
    bool noted = false;
    for (const std::string& line : resumed.resume_messages)
      noted |= line.find("parallel.expert_parallel (checkpoint 4, config") != std::string::npos;
    EXPECT_TRUE(noted) << "the layout change is reported";
  }
}

// Every rank must throw the same CollectiveError with `expected` in it.
template <class F>
void expect_collective_error(F&& body, const std::string& expected) {
  try {
    body();
    ADD_FAILURE() << "no error; expected " << expected;
  } catch (const CollectiveError& error) {
    EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
  }
}

TEST_F(DistCheckpoint, BadCheckpointFailsEveryRank) {
  ASSERT_GE(world_size(), 4) << "run under mpirun -np 4";
  const Layout layout{4, 2, 1};
  Config c = config(layout, "bad_source");
  c.train.steps = 2;
  c.checkpoint.every = 0;
  train_on(4, c);
  const std::string source = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(2)).string();
  const std::string damaged = (dir / "damaged.h5").string();
  const std::string missing = (dir / "missing.h5").string();
  std::string prepared;  // rank 0 damages the copies; every rank learns whether that worked
  if (world_rank() == 0) {
    try {
      fs::copy_file(source, damaged);
      fs::copy_file(source, missing);
      // Expert 0's slice: only the ranks with EP rank 0 (world ranks 0 and 2) read it.
      tamper::corrupt_tensor(damaged, "/model/layers/1/moe/experts/w3");
      tamper::delete_tensor(missing, "/optimizer/exp_avg_sq/layers/0/moe/experts/w2");
      prepared = "ok";
    } catch (const std::exception& error) {
      prepared = error.what();
    }
  }
  int length = static_cast<int>(prepared.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  prepared.resize(length);
  MPI_Bcast(prepared.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  ASSERT_EQ(prepared, "ok");
  Config again = c;
  again.train.steps = 4;
  again.run.dir = (dir / "bad_resumed").string();
  expect_collective_error([&] { train(again, {.print = false, .resume = damaged}); },
                          "rank 0: " + damaged + ": cannot read /model/layers/1/moe/experts/w3");
  expect_collective_error([&] { train(again, {.print = false, .resume = missing}); },
                          "rank 0: " + missing +
                              ": missing tensor /optimizer/exp_avg_sq/layers/0/moe/experts/w2");
  Config other = again;
  other.moe.num_experts = 8;
  expect_collective_error([&] { train(other, {.print = false, .resume = source}); },
                          "moe.num_experts (checkpoint 4, config 8)");
}

}  // namespace
}  // namespace sy
