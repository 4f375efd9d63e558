// parallel.* (docs/config.md, docs/parallel.md): how the ranks share the model and talk.
// trainer/config.cpp parses and validates it.
#pragma once
#include <cstdint>

namespace sy {

// parallel.communicator (docs/parallel.md): nccl (CUDA backend, one GPU per rank, NCCL built in),
// mpi, or automatic (YAML `auto`): nccl where it can run, else mpi.
enum class CommunicatorKind { automatic, nccl, mpi };

struct ParallelConfig {
  int64_t expert_parallel = 1;
  CommunicatorKind communicator = CommunicatorKind::automatic;
  // A collective that does not complete within it ends the whole job (parallel/watchdog.h,
  // exit 4); 0 turns the watchdog off.
  double timeout_s = 600;
  // Gradient all-reduces start during backward, each layer's as soon as its gradients are final,
  // on NCCL's side streams (parallel/grad_sync.h); false: all of them after backward. Same bits
  // either way; no effect on MPI. Off by default until it has run on several GPUs.
  bool overlap_grad_reduce = false;
};

}  // namespace sy
