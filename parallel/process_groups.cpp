#include "parallel/process_groups.h"

#include <stdexcept>

#include "parallel/mpi_communicator.h"

namespace sy {

ProcessGroups make_process_groups(MPI_Comm parent, int64_t expert_parallel, Backend& backend) {
  int rank = 0, size = 1;
  MPI_Comm_rank(parent, &rank);
  MPI_Comm_size(parent, &size);
  if (expert_parallel < 1 || size % expert_parallel != 0)
    throw CollectiveError("parallel.expert_parallel: " + std::to_string(expert_parallel) +
                          " does not divide the number of ranks (" + std::to_string(size) + ")");
  const int P = static_cast<int>(expert_parallel);

  MPI_Comm world = MPI_COMM_NULL, ep = MPI_COMM_NULL, edp = MPI_COMM_NULL;
  MPI_Comm_dup(parent, &world);
  MPI_Comm_split(parent, rank / P, rank, &ep);
  MPI_Comm_split(parent, rank % P, rank, &edp);

  ProcessGroups groups;
  groups.world = std::make_unique<MpiCommunicator>(world, backend);
  groups.expert_parallel = std::make_unique<MpiCommunicator>(ep, backend);
  groups.expert_data_parallel = std::make_unique<MpiCommunicator>(edp, backend);
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
