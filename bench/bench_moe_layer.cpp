// One MoE layer's route + permute + dispatch + experts + combine + unpermute, forward and
// backward, on the CPU under mpirun: all W ranks form one expert-parallel group (P = W), each
// with its own routing group. Prints the time per stage (the slowest rank's mean per iteration)
// and the bytes each rank sends per iteration.
// Usage: mpirun -np W bench_moe_layer [tokens_per_rank D E K F iterations]
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "model/moe/moe_layer.h"
#include "model/moe/stage_timer.h"
#include "model/rng.h"
#include "parallel/process_groups.h"
#include "parallel/token_dispatcher.h"

namespace {

sy::Param random_param(sy::Backend& backend, const sy::Shape& shape, uint64_t seed, double scale) {
  sy::CounterRng rng(seed);
  std::vector<float> values(sy::shape_numel(shape));
  for (float& v : values) v = static_cast<float>(scale * rng.normal());
  sy::Param param;
  param.value = backend.alloc(shape, sy::DType::f32);
  param.grad = backend.zeros(shape, sy::DType::f32);
  backend.write(param.value, std::span<const float>(values));
  return param;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  auto arg = [&](int i, long fallback) { return argc > i ? std::atol(argv[i]) : fallback; };
  const int64_t T = arg(1, 2048), D = arg(2, 128), E = arg(3, 8), K = arg(4, 2), F = arg(5, 256);
  const int iterations = static_cast<int>(arg(6, 20)), warmup = 3;

  auto backend = sy::make_cpu_backend();
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  sy::ProcessGroups groups = sy::make_process_groups(MPI_COMM_WORLD, world, *backend);
  sy::AllToAllDispatcher dispatcher(*backend, *groups.expert_parallel, E);
  const int64_t local = dispatcher.num_local_experts();

  sy::MoELayer layer;
  layer.exchange = &dispatcher;
  layer.router.settings = {{.top_k = K}, E, 0.0};  // normalised iff K > 1
  layer.router.weight = random_param(*backend, {D, E}, 1, 0.02);
  layer.experts.w1 = random_param(*backend, {local, D, F}, 2 + groups.rank(), 0.02);
  layer.experts.w3 = random_param(*backend, {local, D, F}, 100 + groups.rank(), 0.02);
  layer.experts.w2 = random_param(*backend, {local, F, D}, 200 + groups.rank(), 0.02);
  const sy::Param u = random_param(*backend, {T, D}, 300 + groups.rank(), 1.0);
  const sy::Param dout = random_param(*backend, {T, D}, 400 + groups.rank(), 1.0);

  sy::MoEStageTimer timer;
  for (int i = 0; i < warmup + iterations; ++i) {
    if (i == warmup) {
      timer = sy::MoEStageTimer{};
      layer.timer = &timer;
    }
    layer.forward(*backend, u.value);
    layer.backward(*backend, dout.value, u.value, 0.01, 0.001);
  }
  const int64_t bytes_per_iteration = dispatcher.bytes_sent() / (warmup + iterations);

  std::vector<double> times(timer.forward_s.begin(), timer.forward_s.end());
  times.insert(times.end(), timer.backward_s.begin(), timer.backward_s.end());
  MPI_Allreduce(MPI_IN_PLACE, times.data(), static_cast<int>(times.size()), MPI_DOUBLE, MPI_MAX,
                MPI_COMM_WORLD);
  int64_t max_bytes = bytes_per_iteration;
  MPI_Allreduce(MPI_IN_PLACE, &max_bytes, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  if (groups.rank() == 0) {
    std::printf("W=%d P=%d tokens/rank=%lld D=%lld E=%lld K=%lld F=%lld, %d iterations\n", world,
                world, (long long)T, (long long)D, (long long)E, (long long)K, (long long)F,
                iterations);
    std::printf("%-10s %12s %12s\n", "stage", "forward ms", "backward ms");
    double total_forward = 0, total_backward = 0;
    for (int s = 0; s < sy::kNumMoEStages; ++s) {
      const double forward_ms = 1e3 * times[s] / iterations;
      const double backward_ms = 1e3 * times[sy::kNumMoEStages + s] / iterations;
      total_forward += forward_ms;
      total_backward += backward_ms;
      std::printf("%-10s %12.3f %12.3f\n", sy::moe_stage_name(s), forward_ms, backward_ms);
    }
    std::printf("%-10s %12.3f %12.3f\n", "total", total_forward, total_backward);
    std::printf("bytes sent per rank per iteration (max over ranks, to other ranks): %lld\n",
                (long long)max_bytes);
  }
  MPI_Finalize();
  return 0;
}
