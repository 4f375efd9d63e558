// The distributed equivalence test with one rank per GPU through NCCL (parallel.communicator:
// nccl): every layout (W, P, A) whose W fits the world against W = 1 with the same global batch
// (W * A * B sequences), fp32 and bf16, and NCCL against the MPI communicator on the widest
// layout. Under mpirun -np N on a machine with N GPUs (launch/gpu_node.sh; bench/scaling/run.sh
// runs it at every N the machine allows); skipped, saying why, where fewer GPUs than ranks are
// visible (NCCL refuses two ranks on one GPU: test_dist_train_gpu covers that case over MPI).
#include "tests/dist_harness.h"
#ifdef SY_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

namespace sy {
namespace {

using test::check_equivalence;
using test::DistTrain;
using test::Layout;
using test::world_size;

// Why the suite cannot run here ("" when it can).
std::string cannot_run() {
#if defined(SY_HAVE_CUDA) && defined(SY_HAVE_NCCL)
  const int gpus = cuda_device_count();
  if (world_size() < 2) return "one rank: run under mpirun -np N with N >= 2 GPUs";
  if (gpus < world_size())
    return std::to_string(world_size()) + " ranks need as many GPUs, " + std::to_string(gpus) +
           " visible";
  return "";
#else
  return "built without CUDA or NCCL";
#endif
}

// (1, 1, 8) first: the reference every other layout is compared with.
std::vector<Layout> layouts_that_fit() {
  const std::vector<Layout> all = {{1, 1, 8}, {2, 2, 4}, {4, 4, 2},
                                   {4, 2, 2}, {8, 8, 1}, {8, 4, 1}};
  std::vector<Layout> fit;
  for (const Layout& layout : all)
    if (layout.W <= world_size()) fit.push_back(layout);
  return fit;
}

Config nccl_config(Precision precision, CommunicatorKind communicator) {
  Config c = DistTrain::base_config();
  c.run.backend = Device::cuda;
  c.run.precision = precision;
  c.parallel.communicator = communicator;
  c.moe.num_experts = 8;  // one expert per GPU at W = P = 8
  c.moe.capacity_factor = 1.0;
  return c;
}

TEST_F(DistTrain, NcclEquivalenceFp32) {
  if (const std::string why = cannot_run(); !why.empty()) GTEST_SKIP() << why;
  check_equivalence(nccl_config(Precision::fp32, CommunicatorKind::nccl), "nccl fp32",
                    layouts_that_fit());
}

// The bound of the one-GPU bf16 test (test_dist_train_gpu.cpp, docs/cuda.md).
TEST_F(DistTrain, NcclEquivalenceBf16) {
  if (const std::string why = cannot_run(); !why.empty()) GTEST_SKIP() << why;
  check_equivalence(nccl_config(Precision::bf16, CommunicatorKind::nccl), "nccl bf16",
                    layouts_that_fit(), {.loss = 2e-2, .parameter = 5e-2});
}

// The same layout through MPI (device tensors staged through the host) and through NCCL:
// the collectives sum in different orders, so fp32 within 1e-5, not bitwise.
TEST_F(DistTrain, NcclAgainstMpi) {
  if (const std::string why = cannot_run(); !why.empty()) GTEST_SKIP() << why;
  const Layout widest = layouts_that_fit().back();
  Config mpi = nccl_config(Precision::fp32, CommunicatorKind::mpi);
  Config nccl = nccl_config(Precision::fp32, CommunicatorKind::nccl);
  for (Config* c : {&mpi, &nccl}) {
    c->parallel.expert_parallel = widest.P;
    c->train.grad_accum_steps = widest.A;
  }
  // check_equivalence's first layout is its reference: run MPI as that, NCCL as the other.
  mpi.run.dir = (DistTrain::dir / ("mpi_" + widest.name())).string();
  nccl.run.dir = (DistTrain::dir / ("nccl_" + widest.name())).string();
  const TrainSummary reference = DistTrain::train_on(widest.W, mpi);
  const TrainSummary other = DistTrain::train_on(widest.W, nccl);
  if (test::world_rank() != 0) return;
  ASSERT_EQ(other.losses.size(), reference.losses.size());
  double max_loss = 0, max_param = 0;
  for (size_t s = 0; s < reference.losses.size(); ++s)
    max_loss = std::max(max_loss, std::abs(other.losses[s] - reference.losses[s]) /
                                      std::abs(reference.losses[s]));
  ASSERT_EQ(other.parameters.size(), reference.parameters.size());
  for (size_t p = 0; p < reference.parameters.size(); ++p)
    max_param = std::max(max_param, test::relative_l2(other.parameters[p].second,
                                                      reference.parameters[p].second));
  std::printf("nccl against mpi at (W, P, A) = (%d, %d, %d): max loss rel diff %.2e, max "
              "parameter rel L2 diff %.2e\n", widest.W, widest.P, widest.A, max_loss, max_param);
  EXPECT_LT(max_loss, 1e-5);
  EXPECT_LT(max_param, 1e-5);
}

// parallel.overlap_grad_reduce: the gradient all-reduces started during the last micro-batch's
// backward give the bits of the same all-reduces after it, on the widest layout and on data
// parallelism alone (expert gradients over the expert-data-parallel group too), bf16.
TEST_F(DistTrain, NcclOverlappedReduceIsBitwiseTheSerialOne) {
  if (const std::string why = cannot_run(); !why.empty()) GTEST_SKIP() << why;
  const Layout widest = layouts_that_fit().back();
  for (const int64_t P : {static_cast<int64_t>(widest.P), int64_t{1}}) {
    TrainSummary runs[2];
    for (const bool overlap : {false, true}) {
      Config c = nccl_config(Precision::bf16, CommunicatorKind::nccl);
      c.parallel.expert_parallel = P;
      c.train.grad_accum_steps = widest.A;
      c.parallel.overlap_grad_reduce = overlap;
      c.run.dir =
          (DistTrain::dir / ("overlap" + std::to_string(overlap) + "_P" + std::to_string(P)))
              .string();
      runs[overlap] = DistTrain::train_on(widest.W, c);
    }
    if (test::world_rank() != 0) continue;
    std::printf("overlapped gradient reduce at (W, P, A) = (%d, %lld, %d): %zu steps compared\n",
                widest.W, static_cast<long long>(P), widest.A, runs[0].losses.size());
    EXPECT_EQ(runs[1].losses, runs[0].losses) << "P " << P;
    ASSERT_EQ(runs[1].parameters.size(), runs[0].parameters.size());
    for (size_t p = 0; p < runs[0].parameters.size(); ++p)
      EXPECT_EQ(runs[1].parameters[p].second, runs[0].parameters[p].second)
          << runs[0].parameters[p].first << ", P " << P;
  }
}

}  // namespace
}  // namespace sy
