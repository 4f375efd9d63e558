// Shared by the distributed training suites (CPU and GPU): a token file shared by all ranks,
// training one layout on the first W ranks of the world, and the equivalence check of SPEC.md
// section 3 (same per-step losses and final parameters whatever (W, P, A)).
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/synthetic_corpus.h"
#include "parallel/process_groups.h"
#include "trainer/train_loop.h"

namespace sy::test {


namespace fs = std::filesystem;

inline int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
inline int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// <temp>/<prefix>_<rank 0's pid> on every rank (rank 0 names it, so that all ranks agree).
// Collective; creates nothing.
inline fs::path shared_temp_dir(const std::string& prefix) {
  std::string name;
  if (world_rank() == 0)
    name = (fs::temp_directory_path() / (prefix + "_" + std::to_string(getpid()))).string();
  int length = static_cast<int>(name.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  name.resize(length);
  MPI_Bcast(name.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  return name;
}

// A temporary folder shared by all ranks (rank 0 names it), holding a synthetic token file.
class DistTrain : public ::testing::Test {
 public:
  static inline fs::path dir;
  static void SetUpTestSuite() {
    dir = shared_temp_dir("sy_dist");
    if (world_rank() == 0) {
      fs::remove_all(dir);
      fs::create_directories(dir);
      write_repeated_text((dir / "tokens.h5").string(),
                          "experts in a mixture each see a share of the tokens; the router picks "
                          "them. the quick brown fox jumps over the lazy dog, again and again. ",
                          40, 90);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  static void TearDownTestSuite() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(dir);
  }

  static Config base_config() {
    Config c;
    c.seed = 7;
    c.model = {256, 16, 16, 2, 2, 32, true};
    c.moe.num_experts = 4;
    c.moe.routing.top_k = 2;
    c.moe.expert_hidden = 16;
    c.train.micro_batch_size = 2;
    c.train.steps = 20;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 3;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 10;
    c.eval.batches = 3;
    c.run.log_every = 5;
    return c;
  }

  // Trains `config` on every rank of the world, quietly, collecting rank 0's final parameters.
  static TrainSummary train_world(const Config& config, TrainOptions options = {}) {
    options.print = false;
    options.world = MPI_COMM_WORLD;
    options.collect_parameters = true;
    return train(config, options);
  }

  // Trains `config` on the first W ranks (resuming from `resume` when given); returns rank 0's
  // summary (others: empty). A run that throws (a config the data cannot serve, say) throws on
  // every rank of the world, the ranks outside the run included, so that all leave the test
  // together: one rank leaving alone would leave the others waiting in a collective for good.
  static TrainSummary train_on(int W, const Config& config, const std::string& resume = "") {
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank() < W ? 0 : MPI_UNDEFINED, world_rank(), &sub);
    TrainSummary summary;
    std::exception_ptr error;
    if (sub != MPI_COMM_NULL) {
      try {
        summary = train(config, {.print = false, .world = sub, .collect_parameters = true,
                                 .resume = resume});
      } catch (...) {
        error = std::current_exception();
      }
      MPI_Comm_free(&sub);
    }
    int failed = error ? 1 : 0, any_failed = 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (error) std::rethrow_exception(error);
    if (any_failed) throw std::runtime_error("the run failed on another rank");
    return summary;
  }
};

inline double relative_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

struct Layout {
  int W, P, A;
  std::string name() const {
    return std::to_string(W) + "_" + std::to_string(P) + "_" + std::to_string(A);
  }
};

struct Tolerance {
  double loss = 1e-5;       // per step, relative
  double parameter = 1e-5;  // per tensor, relative L2
};

inline const std::vector<Layout> kAllLayouts = {{1, 1, 4}, {2, 1, 2}, {2, 2, 2}, {4, 2, 1}, {4, 4, 1}};

// Trains `base` under each layout (the first one is the reference) and compares.
inline void check_equivalence(const Config& base, const char* label,
                              const std::vector<Layout>& layouts = kAllLayouts,
                              Tolerance tolerance = {}) {
  int widest = 1;
  for (const Layout& layout : layouts) widest = std::max(widest, layout.W);
  ASSERT_GE(world_size(), widest) << "run under mpirun -np " << widest;
  std::vector<TrainSummary> runs;
  for (const Layout& layout : layouts) {
    Config c = base;
    c.parallel.expert_parallel = layout.P;
    c.train.grad_accum_steps = layout.A;
    c.run.dir = (DistTrain::dir / (std::string(label) + "_" + layout.name())).string();
    runs.push_back(DistTrain::train_on(layout.W, c));
  }
  if (world_rank() != 0) return;
  const TrainSummary& reference = runs[0];
  ASSERT_EQ(reference.losses.size(), 20u);
  std::printf("equivalence (%s) against (W, P, A) = (%d, %d, %d):\n", label, layouts[0].W,
              layouts[0].P, layouts[0].A);
  for (size_t i = 1; i < runs.size(); ++i) {
    const Layout& layout = layouts[i];
    double max_loss = 0, max_param = 0;
    for (size_t s = 0; s < reference.losses.size(); ++s)
      max_loss = std::max(max_loss, std::abs(runs[i].losses[s] - reference.losses[s]) /
                                        std::abs(reference.losses[s]));
    ASSERT_EQ(runs[i].parameters.size(), reference.parameters.size());
    for (size_t p = 0; p < reference.parameters.size(); ++p) {
      ASSERT_EQ(runs[i].parameters[p].first, reference.parameters[p].first);
      const double diff = relative_l2(runs[i].parameters[p].second, reference.parameters[p].second);
      EXPECT_LT(diff, tolerance.parameter) << reference.parameters[p].first << " at W=" << layout.W
                            << " P=" << layout.P << " A=" << layout.A;
      max_param = std::max(max_param, diff);
    }
    EXPECT_LT(max_loss, tolerance.loss) << "losses at W=" << layout.W << " P=" << layout.P;
    EXPECT_NEAR(runs[i].final_val_loss, reference.final_val_loss,
                tolerance.loss * reference.final_val_loss);
    std::printf("  (W, P, A) = (%d, %d, %d): max loss rel diff %.2e, max parameter rel L2 diff %.2e\n",
                layout.W, layout.P, layout.A, max_loss, max_param);
  }
  // Training did something: the loss fell.
  EXPECT_LT(reference.losses.back(), reference.losses.front() - 0.5);
  EXPECT_EQ(reference.dropped_any, base.moe.capacity_factor > 0) << "drops where capacity binds";
}

}  // namespace sy::test
