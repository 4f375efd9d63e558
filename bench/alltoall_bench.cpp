// The expert-parallel all-to-all of one MoE layer, under mpirun with one rank per GPU: the
// dispatcher's plan (the counts' exchange), dispatch and combine of [T*K, D] rows, next to the
// communicator's own all_to_all_v of the same per-peer counts, in the same call.
//   mpirun -np W alltoall_bench [--tokens 8192] [--d-model 2048] [--experts 8] [--top-k 2]
//                               [--backend cuda|cpu] [--communicator auto|nccl|mpi]
//                               [--iters 20] [--warmup 5]
// Routing is balanced (every rank sends T*K/E rows to each expert), bf16 rows on cuda, f32 on
// cpu. All W ranks form one expert-parallel group; E must divide by W. Each timing is the
// slowest rank's, from a barrier to the end of the op with the device synchronised, and the
// median over --iters after --warmup. GB/s counts the bytes a rank sends to the other ranks
// (what crosses NVLink or the network), per rank. dispatch and combine are the dispatcher's
// block-wise exchanges (one block per peer and local expert, Communicator::all_to_all_blocks);
// "plain" is the bare all_to_all_v, one block per peer.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel/launch.h"
#include "parallel/process_groups.h"
#include "parallel/token_dispatcher.h"
#include "trainer/session.h"

namespace {

using namespace sy;

struct Options {
  int64_t tokens = 8192, d_model = 2048, experts = 8, top_k = 2;
  Device backend = Device::cuda;
  CommunicatorKind communicator = CommunicatorKind::automatic;
  int iters = 20, warmup = 5;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value (or is unknown)");
    const std::string value = argv[++i];
    if (arg == "--tokens") o.tokens = std::atoll(value.c_str());
    else if (arg == "--d-model") o.d_model = std::atoll(value.c_str());
    else if (arg == "--experts") o.experts = std::atoll(value.c_str());
    else if (arg == "--top-k") o.top_k = std::atoll(value.c_str());
    else if (arg == "--iters") o.iters = std::atoi(value.c_str());
    else if (arg == "--warmup") o.warmup = std::atoi(value.c_str());
    else if (arg == "--backend") {
      if (value != "cuda" && value != "cpu") throw std::runtime_error("--backend: cuda or cpu");
      o.backend = value == "cuda" ? Device::cuda : Device::cpu;
    } else if (arg == "--communicator") {
      if (value == "auto") o.communicator = CommunicatorKind::automatic;
      else if (value == "nccl") o.communicator = CommunicatorKind::nccl;
      else if (value == "mpi") o.communicator = CommunicatorKind::mpi;
      else throw std::runtime_error("--communicator: auto, nccl or mpi");
    } else {
      throw std::runtime_error("unknown argument " + arg);
    }
  }
  if (o.tokens < 1 || o.d_model < 1 || o.experts < 1 || o.top_k < 1 || o.top_k > o.experts ||
      o.iters < 1 || o.warmup < 0)
    throw std::runtime_error("sizes and --iters must be positive, --top-k at most --experts");
  return o;
}

// The slowest rank's seconds for `op`, started together after a barrier, the device synchronised
// before the clock stops.
template <class F>
double timed(Backend& backend, Communicator& world, F&& op) {
  backend.synchronize();
  world.barrier();
  const auto start = std::chrono::steady_clock::now();
  op();
  backend.synchronize();
  std::vector<double> seconds = {
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
  world.all_reduce_host(seconds, ReduceOp::max);
  return seconds[0];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run(int argc, char** argv) {
  const Options o = parse(argc, argv);
  int world_size = 1, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (o.experts % world_size != 0)
    throw std::runtime_error("--experts " + std::to_string(o.experts) +
                             " does not divide by the " + std::to_string(world_size) + " ranks");
  RunConfig run;
  run.backend = o.backend;
  run.precision = o.backend == Device::cuda ? Precision::bf16 : Precision::fp32;
  std::unique_ptr<Backend> backend =
      make_backend(run, world_rank, host_local_rank(MPI_COMM_WORLD));
  ProcessGroups groups =
      make_process_groups(MPI_COMM_WORLD, world_size, *backend, o.communicator);
  Communicator& group = *groups.expert_parallel;
  AllToAllDispatcher dispatcher(*backend, group, o.experts);

  // Balanced routing: T*K assignments spread evenly over the E experts.
  const int64_t assignments = o.tokens * o.top_k, E = o.experts, D = o.d_model;
  std::vector<int64_t> rows_per_expert(static_cast<size_t>(E), assignments / E);
  for (int64_t e = 0; e < assignments % E; ++e) ++rows_per_expert[static_cast<size_t>(e)];
  ExchangePlan plan = dispatcher.plan(rows_per_expert);
  plan.max_rows_received = plan.rows_received;

  const DType dtype = o.backend == Device::cuda ? DType::bf16 : DType::f32;
  const Tensor sent = backend->alloc({plan.rows_sent, D}, dtype);
  const Tensor returned = backend->alloc({plan.rows_sent, D}, dtype);
  const Tensor received = backend->alloc({plan.rows_received, D}, dtype);
  const Tensor arrived = backend->alloc({plan.rows_received, D}, dtype);
  backend->fill(sent, 1.0);
  backend->fill(received, 2.0);

  // Per-peer element counts of the same exchange, for the plain all-to-all.
  const int P = group.size();
  const int64_t local = E / P;
  std::vector<int64_t> send_counts(static_cast<size_t>(P)), recv_counts(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p)
    for (int64_t j = 0; j < local; ++j) {
      const auto slot = static_cast<size_t>(p * local + j);
      send_counts[static_cast<size_t>(p)] += rows_per_expert[slot] * D;
      recv_counts[static_cast<size_t>(p)] += plan.recv_rows[slot] * D;
    }
  const double element_bytes = dtype == DType::bf16 ? 2.0 : 4.0;
  const double bytes_to_others =
      element_bytes * static_cast<double>(plan.rows_sent * D - send_counts[group.rank()]);

  Communicator& world = *groups.world;
  std::vector<double> plan_s, dispatch_s, combine_s, plain_s;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const double p = timed(*backend, world, [&] { dispatcher.plan(rows_per_expert); });
    const double d = timed(*backend, world, [&] { dispatcher.dispatch(plan, received, sent); });
    const double c = timed(*backend, world, [&] { dispatcher.combine(plan, returned, received); });
    const double a = timed(*backend, world, [&] {
      group.all_to_all_v(sent, send_counts, arrived, recv_counts);
    });
    if (i < o.warmup) continue;
    plan_s.push_back(p), dispatch_s.push_back(d), combine_s.push_back(c), plain_s.push_back(a);
  }
  if (world_rank == 0) {
    const double plain = median(plain_s);
    std::printf("alltoall_bench: W=%d (one expert-parallel group), %s, %s, %s rows; "
                "tokens/rank %lld, D %lld, E %lld, top-%lld, balanced; median of %d\n",
                world_size, backend->name().c_str(), group.name().c_str(),
                dtype == DType::bf16 ? "bf16" : "f32", static_cast<long long>(o.tokens),
                static_cast<long long>(D), static_cast<long long>(E),
                static_cast<long long>(o.top_k), o.iters);
    std::printf("bytes a rank sends to the other ranks per call: %.1f MB\n",
                bytes_to_others / 1e6);
    std::printf("| op | ms | GB/s per rank | x plain all_to_all_v |\n|---|---|---|---|\n");
    const auto row = [&](const char* op, double seconds, bool moves) {
      if (!moves || bytes_to_others == 0) {  // W = 1: nothing leaves the rank
        std::printf("| %s | %.3f | - | - |\n", op, 1e3 * seconds);
        return;
      }
      std::printf("| %s | %.3f | %.1f | %.2f |\n", op, 1e3 * seconds,
                  bytes_to_others / seconds / 1e9, plain / seconds);
    };
    row("plan (counts)", median(plan_s), false);
    row("dispatch", median(dispatch_s), true);
    row("combine", median(combine_s), true);
    row("plain all_to_all_v", plain, true);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int status = 0;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "alltoall_bench: rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);  // the other ranks may wait in a collective
  }
  MPI_Finalize();
  return status;
}
