#include "parallel/process_groups.h"

#include <cstdio>
#include <stdexcept>
#include <vector>

#include "parallel/mpi_communicator.h"
#ifdef SY_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace sy {

namespace {

#ifdef SY_HAVE_NCCL
constexpr bool kHaveNccl = true;
#else
constexpr bool kHaveNccl = false;
#endif

// "host:device" of every rank of `parent`, to tell whether two ranks share a GPU.
std::vector<std::string> gpu_of_every_rank(MPI_Comm parent, const Backend& backend) {
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  MPI_Get_processor_name(host, &length);
  char mine[MPI_MAX_PROCESSOR_NAME + 16] = {};
  std::snprintf(mine, sizeof mine, "%s:%d", host, backend.device_index());
  int size = 1;
  MPI_Comm_size(parent, &size);
  std::vector<char> all(size * sizeof mine);
  MPI_Allgather(mine, sizeof mine, MPI_CHAR, all.data(), sizeof mine, MPI_CHAR, parent);
  std::vector<std::string> gpus(size);
  for (int r = 0; r < size; ++r) gpus[r] = all.data() + r * sizeof mine;
  return gpus;
}

// Resolves automatic and checks that NCCL can run: the same answer on every rank.
bool use_nccl(MPI_Comm parent, const Backend& backend, CommunicatorKind communicator) {
  if (communicator == CommunicatorKind::mpi) return false;
  if (backend.device() != Device::cuda) {
    if (communicator == CommunicatorKind::nccl)
      throw CollectiveError("parallel.communicator: nccl needs run.backend: cuda");
    return false;
  }
  if (!kHaveNccl) {
    if (communicator == CommunicatorKind::nccl)
      throw CollectiveError("parallel.communicator: nccl is not available in this build");
    return false;
  }
  const std::vector<std::string> gpus = gpu_of_every_rank(parent, backend);
  for (size_t a = 0; a < gpus.size(); ++a)
    for (size_t b = a + 1; b < gpus.size(); ++b)
      if (gpus[a] == gpus[b]) {
        if (communicator == CommunicatorKind::nccl)
          throw CollectiveError("parallel.communicator: nccl refuses two ranks on one GPU, and ranks " +
                                std::to_string(a) + " and " + std::to_string(b) + " share " +
                                gpus[a] + "; use parallel.communicator: mpi (or auto)");
        return false;
      }
  return true;
}

std::unique_ptr<Communicator> make_communicator(MPI_Comm comm, Backend& backend, bool nccl,
                                                Watchdog* watchdog, const char* group) {
#ifdef SY_HAVE_NCCL
  if (nccl)
    return std::make_unique<NcclCommunicator>(
        comm, static_cast<cudaStream_t>(backend.native_stream()), watchdog, group);
#endif
  return std::make_unique<MpiCommunicator>(comm, backend, watchdog, group);
}

}  // namespace

ProcessGroups make_process_groups(MPI_Comm parent, int64_t expert_parallel, Backend& backend,
                                  CommunicatorKind communicator, double timeout_s) {
  int rank = 0, size = 1;
  MPI_Comm_rank(parent, &rank);
  MPI_Comm_size(parent, &size);
  if (expert_parallel < 1 || size % expert_parallel != 0)
    throw CollectiveError("parallel.expert_parallel: " + std::to_string(expert_parallel) +
                          " does not divide the number of ranks (" + std::to_string(size) + ")");
  const int P = static_cast<int>(expert_parallel);

  const bool nccl = use_nccl(parent, backend, communicator);
  MPI_Comm world = MPI_COMM_NULL, ep = MPI_COMM_NULL, edp = MPI_COMM_NULL;
  MPI_Comm_dup(parent, &world);
  MPI_Comm_split(parent, rank / P, rank, &ep);
  MPI_Comm_split(parent, rank % P, rank, &edp);

  ProcessGroups groups;
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (timeout_s > 0) groups.watchdog = std::make_unique<Watchdog>(timeout_s, world_rank);
  Watchdog* watchdog = groups.watchdog.get();
  groups.world = make_communicator(world, backend, nccl, watchdog, "world");
  groups.expert_parallel = make_communicator(ep, backend, nccl, watchdog, "expert_parallel");
  groups.expert_data_parallel =
      make_communicator(edp, backend, nccl, watchdog, "expert_data_parallel");
  return groups;
}

void agree_or_throw(Communicator& group, const std::string& problem) {
  const std::vector<std::string> problems = group.all_gather_host(problem);
  for (size_t r = 0; r < problems.size(); ++r)
    if (!problems[r].empty())
      throw CollectiveError(group.size() > 1 ? "rank " + std::to_string(r) + ": " + problems[r]
                                             : problems[r]);
}

}  // namespace sy
