// The distributed equivalence test on the CUDA backend, several ranks sharing one GPU through
// the MPI communicator (device tensors staged through the host; NCCL refuses two ranks on one
// GPU). Under mpirun -np 4; skipped where no GPU is visible.
#include "tests/dist_harness.h"
#ifdef SY_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

namespace sy {
namespace {

using test::check_equivalence;
using test::DistTrain;
using test::Layout;

bool gpu_visible() {
#ifdef SY_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

const std::vector<Layout> kGpuLayouts = {{1, 1, 4}, {2, 2, 2}, {4, 4, 1}};

Config gpu_config(Precision precision) {
  Config c = DistTrain::base_config();
  c.run.backend = Device::cuda;
  c.run.precision = precision;
  c.parallel.communicator = CommunicatorKind::mpi;
  c.moe.capacity_factor = 1.0;
  return c;
}

TEST_F(DistTrain, GpuEquivalenceFp32) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  check_equivalence(gpu_config(Precision::fp32), "cuda fp32", kGpuLayouts);
}

// bf16: the layouts differ in summation order, and bf16 rounds those differences up to its
// 2^-8 relative precision; routing may flip for near-tied tokens. Bound stated in docs/cuda.md.
TEST_F(DistTrain, GpuEquivalenceBf16) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  check_equivalence(gpu_config(Precision::bf16), "cuda bf16", kGpuLayouts, {.loss = 2e-2, .parameter = 5e-2});
}

}  // namespace
}  // namespace sy
