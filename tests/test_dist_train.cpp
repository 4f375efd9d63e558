// Distributed training under mpirun -np 4. The defining property (SPEC.md section 3): at a fixed
// micro_batch_size and seed, the per-step losses and the final parameters do not depend on the
// number of ranks W, the expert-parallel size P, or trading ranks for micro-steps at constant
// W*A. Each layout runs on the first W ranks of the world. Also: the errors every rank must agree
// on, reported the same way on all ranks (no hang).
#include "tests/dist_harness.h"
#include "trainer/session.h"

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

// Dropless, with a shared expert beside the routed ones: every rank holds it whole and its
// gradient is summed over all ranks, whatever P.
TEST_F(DistTrain, EquivalenceDroplessWithASharedExpert) {
  Config c = base_config();
  c.moe.capacity_factor = 0.0;
  c.moe.shared_expert_hidden = 24;
  check_equivalence(c, "dropless");
}

// Document masking on the same data, each example a document: attention, rotary positions and
// the ignored boundary targets follow each window's documents, not the rank.
TEST_F(DistTrain, EquivalenceWithDocumentMasks) {
  const std::string sft = (dir / "sft_documents.h5").string();
  if (world_rank() == 0) test::write_masked_examples(sft, 60, 90, /*documents=*/true);
  MPI_Barrier(MPI_COMM_WORLD);
  Config c = base_config();
  c.data.path = sft;
  c.data.document_mask = true;
  check_equivalence(c, "documents");
}

// Epoch sampling: the run's q-th sequence is q = step * global batch + its index in the step,
// which no layout changes. A short split (46 windows) so that the 160 sequences of the
// run cross several epoch boundaries, inside steps.
TEST_F(DistTrain, EquivalenceWithEpochSampling) {
  const std::string small = (dir / "small.h5").string();
  if (world_rank() == 0)
    test::write_repeated_text(small, "the router picks two experts for every token. ", 20, 80);
  MPI_Barrier(MPI_COMM_WORLD);
  Config c = base_config();
  c.data.path = small;
  c.data.sampling = Sampling::epoch;
  check_equivalence(c, "epochs");
}

// Epoch sampling over a mixture: sequence q's file and its ordinal there come from q alone
// (data/mixture_interleave.h). Two short files, so that each crosses epoch boundaries.
TEST_F(DistTrain, EquivalenceOnAMixtureWithEpochSampling) {
  const std::string small = (dir / "small_a.h5").string(), code = (dir / "small_b.h5").string();
  if (world_rank() == 0) {
    test::write_repeated_text(small, "the router picks two experts for every token. ", 20, 80);
    test::write_repeated_text(code, "for (int e = 0; e < experts; ++e) load[e] += 1; ", 12, 80);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  Config c = base_config();
  c.data.path = small;
  c.data.train_paths = {small, code};
  c.data.train_weights = {2.0, 1.0};
  c.data.sampling = Sampling::epoch;
  check_equivalence(c, "mixture epochs");
}

// A mixture of two token files (data.train_paths) under a warmup-stable-decay schedule: each
// sequence's file is drawn per (step, sequence), so the layout does not matter either.
TEST_F(DistTrain, EquivalenceOnAMixtureWithAStableThenDecayingLr) {
  const std::string code = (dir / "code.h5").string();
  if (world_rank() == 0)
    test::write_repeated_text(code, "for (int e = 0; e < experts; ++e) load[e] += rows[e]; ", 40,
                              90);
  MPI_Barrier(MPI_COMM_WORLD);
  Config c = base_config();
  c.data.train_paths = {c.data.path, code};
  c.data.train_weights = {1.0, 2.0};
  c.train.lr_decay = LrDecay::one_minus_sqrt;
  c.train.decay_steps = 8;
  check_equivalence(c, "mixture");
}

// Supervised fine-tuning data (a loss mask on the answers): the LM loss of a step is the sum
// over its counted targets over their count in the whole step, the same count whatever the
// layout (docs/data.md, "Loss masks").
TEST_F(DistTrain, EquivalenceWithALossMask) {
  const std::string sft = (dir / "sft.h5").string();
  if (world_rank() == 0) test::write_masked_examples(sft, 60, 90);
  MPI_Barrier(MPI_COMM_WORLD);
  Config c = base_config();
  c.data.path = sft;
  check_equivalence(c, "loss_mask");
}

// Every balancing option at once: the routing and its reroutes are decided per group, the bias
// is updated from the step's loads summed over all groups, so the layout still does not matter.
TEST_F(DistTrain, EquivalenceWithEveryBalancingOption) {
  Config c = base_config();
  c.moe.routing.score = RouterScore::sigmoid;
  c.moe.bias_update_rate = 0.01;
  c.moe.routing.drop_policy = DropPolicy::probability;
  c.moe.routing.overflow = Overflow::reroute;
  c.moe.capacity_factor = 0.75;  // E * C = 48 slots for 64 assignments: some are always dropped
  check_equivalence(c, "balancing");
}

// Global-batch balancing sums the choices over the W groups of a micro-step, so it depends on W
// (by design), but not on P.
TEST_F(DistTrain, GlobalAuxScopeDoesNotDependOnExpertParallel) {
  Config c = base_config();
  c.moe.aux_loss_scope = AuxLossScope::global;
  c.moe.aux_loss_coef = 0.1;
  check_equivalence(c, "global_w2", {{2, 1, 2}, {2, 2, 2}});
  check_equivalence(c, "global_w4", {{4, 1, 1}, {4, 2, 1}, {4, 4, 1}});
}

TEST_F(DistTrain, GlobalAuxScopeCountsEveryRanksGroup) {
  Config c = base_config();
  c.moe.aux_loss_scope = AuxLossScope::global;
  c.parallel.expert_parallel = 2;
  ModelSession session = make_model_session(c, MPI_COMM_WORLD);
  const int64_t B = c.train.micro_batch_size, S = c.model.seq_len, T = B * S;
  std::vector<int32_t> inputs(T), targets(T);
  for (int64_t t = 0; t < T; ++t) {  // a different group on every rank
    inputs[t] = static_cast<int32_t>((t * 31 + world_rank() * 97 + 5) % 256);
    targets[t] = static_cast<int32_t>((t * 17 + world_rank() * 13) % 256);
  }
  Backend& backend = *session.backend;
  for (bool training : {true, false}) {
    session.model->forward_backward(inputs, targets, B, training, 0.25);
    for (const Router* router : session.model->routers()) {
      const std::vector<int32_t> own = backend.read_i32(router->assignments_per_expert);
      std::vector<int64_t> summed(own.begin(), own.end());
      session.groups.world->all_reduce_host(summed, ReduceOp::sum);
      const std::vector<int32_t> used = backend.read_i32(router->balance_counts);
      // Training balances over the world; evaluation needs no collective and uses its own.
      const std::vector<int64_t> expected = training ? summed : std::vector<int64_t>(own.begin(), own.end());
      EXPECT_EQ(std::vector<int64_t>(used.begin(), used.end()), expected);
      // aux = E * sum_e f_e * P_e with f from the world's counts and P from this group.
      const std::vector<double> scores = backend.read(router->scores);
      const int64_t E = c.moe.num_experts;
      double total = 0, aux = 0;
      for (int64_t count : expected) total += static_cast<double>(count);
      for (int64_t e = 0; e < E; ++e) {
        double P = 0;
        for (int64_t t = 0; t < T; ++t) P += scores[t * E + e] / T;
        aux += expected[e] / total * P;
      }
      EXPECT_NEAR(router->aux_loss, E * aux, 1e-6);
    }
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
