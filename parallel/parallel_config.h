// parallel.* (docs/config.md, docs/parallel.md): how the ranks share the model and talk.
// trainer/config.cpp parses and validates it.
#pragma once
#include <cstdint>
#include <string>

namespace sy {

struct ParallelConfig {
  int64_t expert_parallel = 1;
  std::string communicator = "auto";  // auto | nccl | mpi (see docs/parallel.md)
  // A collective that does not complete within it ends the whole job (parallel/watchdog.h,
  // exit 4); 0 turns the watchdog off.
  double timeout_s = 600;
};

}  // namespace sy
