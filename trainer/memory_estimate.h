// The memory a training run needs per rank, estimated from the config before the first step, and
// what the host offers; train() compares the two and refuses a run that cannot fit
// (run.memory_check, docs/config.md), check-config prints the estimate. The formula and its
// measured accuracy: docs/config.md, "Memory estimate".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/backend.h"
#include "parallel/launch.h"
#include "trainer/config.h"

namespace sy {

struct MemoryItem {
  std::string name;  // "parameters (fp32)", "saved activations", ...
  double bytes = 0;
};

struct MemoryEstimate {
  std::vector<MemoryItem> items;  // in a fixed order; zero-byte items are left out
  double total_bytes() const;
  // "12.3 GiB (optimizer state 6.7 GiB, parameters (fp32) 3.4 GiB, ...)": the `biggest` largest.
  std::string describe(size_t biggest = 3) const;
};

// One rank's peak for config.run.backend: fp32 master weights, gradients, optimizer state, the
// bf16 compute copies (precision bf16), the activations backward keeps under train.recompute,
// one layer's workspace, the LM head's logits and dlogits, and on the CPU the validation set, the
// process's own footprint and, with checkpoint.async, world rank 0's snapshot of a whole
// checkpoint (check_memory counts it once; on CUDA it is host memory, outside this estimate).
// Experts are this rank's E / expert_parallel; routing is assumed balanced (each rank receives
// micro_batch * seq_len * top_k expert rows). `world_size` ranks run the job (it decides
// which gradients are held in bf16: bf16_grad_storage).
MemoryEstimate estimate_memory_per_rank(const Config& config, int64_t world_size);

// Host memory this process may still use: /proc/meminfo MemAvailable, lowered to the cgroup's
// limit minus its usage where one is set (cgroup v2 memory.max, or v1 memory.limit_in_bytes).
// `source` says which one bound it. bytes is 0 where neither can be read.
struct HostMemory {
  double bytes = 0;
  std::string source;
};
HostMemory host_available_memory();

// This process's resident set now (VmRSS) and its peak (VmHWM), in bytes; 0 where unreadable.
double resident_bytes();
double peak_resident_bytes();

// "" when `needed` fits in `available` (or available is 0: unknown); else the one-line refusal
// naming both numbers, the biggest items, and run.memory_check=false.
std::string memory_check_problem(const MemoryEstimate& estimate, double needed, double available,
                                 const std::string& where);

// checkpoint.async's host copy of a whole checkpoint (bytes; 0 when the option is off), which
// world rank 0 holds from the start of the run (trainer/checkpoint_snapshot.h).
double checkpoint_snapshot_bytes(const Config& config);

// "" when a host copy of `snapshot_bytes` fits in `host` (or host.bytes is 0: unknown); else the
// one-line refusal naming both numbers, checkpoint.async and run.memory_check=false.
std::string snapshot_host_problem(double snapshot_bytes, const HostMemory& host);

// Collective over `world`: the estimate against what this rank's device offers
// (Backend::available_memory_bytes), or on the CPU against this node's host memory shared by
// its ranks (MemAvailable or the cgroup's room, plus what those ranks already hold resident,
// against the estimate times their number, checkpoint.async's snapshot counted once, on the
// host of the `writer`: world rank 0). Two ranks sharing one GPU are not counted together. On a
// device, the writer's host is checked for the snapshot too (snapshot_host_problem).
struct MemoryCheck {
  std::string summary;  // "memory estimate: ... per rank; ... available on ..." (startup line)
  std::string problem;  // memory_check_problem's line, "" when it fits or run.memory_check is off
};
MemoryCheck check_memory(const Config& config, Backend& backend, CommHandle world, bool writer);

// "1.5 GiB", "320 MiB".
std::string format_memory(double bytes);

}  // namespace sy
