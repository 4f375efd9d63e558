// Distributed training under mpirun -np 4. The defining property (SPEC.md section 3): at a fixed
// micro_batch_size and seed, the per-step losses and the final parameters do not depend on the
// number of ranks W, the expert-parallel size P, or trading ranks for micro-steps at constant
// W*A. Each layout runs on the first W ranks of the world. Also: the errors every rank must agree
// on, reported the same way on all ranks (no hang).
#include "tests/dist_harness.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using test::check_equivalence;
using test::DistTrain;
using test::world_rank;

TEST_F(DistTrain, EquivalenceWithCapacityDrops) {
  Config c = base_config();
  c.moe.capacity_factor = 1.0;  // C = ceil(1.0 * 2 * 32 / 4) = 16 of 64 assignments per expert
  check_equivalence(c, "drops");
}

TEST_F(DistTrain, EquivalenceDropless) {
  Config c = base_config();
  c.moe.capacity_factor = 0.0;
  check_equivalence(c, "dropless");
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

TEST_F(DistTrain, WorldNotDivisibleByExpertParallel) {
  Config c = base_config();
  c.parallel.expert_parallel = 4;
  c.moe.num_experts = 8;
  // 3 ranks cannot hold P = 4.
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < 3 ? 0 : MPI_UNDEFINED, world_rank(), &sub);
  if (sub != MPI_COMM_NULL) {
    expect_collective_error([&] { train(c, {.print = false, .world = sub}); },
                            "parallel.expert_parallel: 4 does not divide the number of ranks (3)");
    MPI_Comm_free(&sub);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(DistTrain, ConfigThatDiffersBetweenRanks) {
  Config c = base_config();
  if (world_rank() == 1) c.train.lr = 5e-3;
  expect_collective_error([&] { train(c, {.print = false}); },
                          "rank 1: its config differs from rank 0's");
}

TEST_F(DistTrain, RankThatCannotOpenTheDataFile) {
  Config c = base_config();
  c.data.path = "tokens.h5";  // relative: only ranks whose working folder holds it can open it
  c.run.dir = (dir / "missing_data").string();
  const fs::path cwd = fs::current_path();
  fs::current_path(world_rank() == 2 ? fs::temp_directory_path() : dir);
  expect_collective_error([&] { train(c, {.print = false}); }, "rank 2: tokens.h5");
  fs::current_path(cwd);
}

}  // namespace
}  // namespace sy
