// The process's side of MPI: starting and ending it, the world's rank and size, the few world-wide
// exchanges that the command line makes before a model exists, and the node-local sum of the
// memory check. The trainer calls no MPI itself (docs/architecture.md): it holds a world handle
// and passes it to make_process_groups, and does everything else through Communicator or here.
#pragma once
#include <mpi.h>

#include <string>

namespace sy {

// An MPI communicator handle, passed through trainer/ unopened: the parent that process groups
// are split from (make_process_groups). Tests hand in a split of the world.
using CommHandle = MPI_Comm;

// Throws std::runtime_error("mpi <op>: <MPI's text for code>") unless code is MPI_SUCCESS.
void check_mpi(int code, const char* op);
CommHandle world_comm();  // every process of the job

// MPI for the life of the object (one per process, in main): MPI_THREAD_FUNNELED, because only
// the main thread calls MPI (an asynchronous checkpoint save writes its file on a thread of its
// own, HDF5 only). Finalises on every path out of its scope.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
};

int world_rank();
int world_size();
int comm_size(CommHandle comm);  // the ranks of `comm`
void world_barrier();
// Ends every process of the job with `status` (mpirun kills the others): for an error that only
// this rank knows while the others may be waiting in a collective.
[[noreturn]] void abort_world(int status);

// World rank 0's `value` on every rank (the others' is replaced). Collective over the world.
void broadcast_from_rank0(std::string& value);
void broadcast_from_rank0(int& value);

// Over the ranks of `comm` that share this host (MPI_COMM_TYPE_SHARED): how many they are and
// the sum of their `value`s. Collective over `comm`.
struct HostShare {
  int ranks = 1;
  double sum = 0;
};
HostShare sum_over_host(CommHandle comm, double value);

// This rank's index among the ranks of `comm` that share its host (MPI_COMM_TYPE_SHARED, in the
// order of their ranks in `comm`): on the world, what launchers call the local rank; it picks
// the rank's GPU (cuda_device_for_local_rank). Collective over `comm`.
int host_local_rank(CommHandle comm);

// The MPI library's name and version up to its first comma ("Open MPI v4.1.4"), "unknown" when
// it cannot say. Needs no MPI_Init (MPI-3), so `switchyard --version` works where MPI cannot start.
std::string mpi_library_name();

}  // namespace sy
