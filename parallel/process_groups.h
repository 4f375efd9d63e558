// The process groups of SPEC.md section 3, split from one parent communicator:
//   world                  all W ranks
//   expert_parallel (EP)   the P consecutive ranks starting at floor(r/P)*P; they share the
//                          experts of a layer between them, E/P each
//   expert_data_parallel   {r' : r' % P == r % P}: the ranks holding the same experts
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "model/backend.h"
#include "parallel/communicator.h"
#include "parallel/parallel_config.h"
#include "parallel/watchdog.h"

namespace sy {

struct ProcessGroups {
  // First, so that it outlives the communicators that arm it (null: parallel.timeout_s 0).
  std::unique_ptr<Watchdog> watchdog;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> expert_parallel;
  std::unique_ptr<Communicator> expert_data_parallel;

  int rank() const { return world->rank(); }
  int size() const { return world->size(); }
  int ep_size() const { return expert_parallel->size(); }
  int ep_rank() const { return expert_parallel->rank(); }
};

// Every rank of `parent` calls this with the same expert_parallel. Throws (on every rank, with
// the same message) when the world size does not divide by it. `communicator`: mpi, nccl
// (CUDA backend, one GPU per rank, NCCL built in) or automatic (nccl where it can run, else mpi).
// `timeout_s` > 0 starts a Watchdog that every communicator of the groups arms: a collective
// that does not complete within it ends the whole job (watchdog.h); 0 leaves it off.
ProcessGroups make_process_groups(MPI_Comm parent, int64_t expert_parallel, Backend& backend,
                                  CommunicatorKind communicator = CommunicatorKind::mpi,
                                  double timeout_s = 0);

// Raised identically on every rank of a group after they agreed that something is wrong, so
// that rank 0 alone reports it and every rank exits cleanly (no hang, no abort).
struct CollectiveError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Every rank calls this with its own problem ("" when fine). If any rank has one, every rank
// throws CollectiveError naming the first such rank: "rank R: <problem>".
void agree_or_throw(Communicator& group, const std::string& problem);

}  // namespace sy
