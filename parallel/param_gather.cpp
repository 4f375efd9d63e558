#include "parallel/param_gather.h"

namespace sy {

std::vector<double> gather_to_rank0(const Tensor& local, bool is_expert, ProcessGroups& groups,
                                    Backend& backend) {
  const bool in_first_ep_group = groups.rank() < groups.ep_size();
  if (!is_expert || groups.ep_size() == 1 || !in_first_ep_group)
    return groups.rank() == 0 ? backend.read(local) : std::vector<double>{};
  Communicator& ep = *groups.expert_parallel;
  if (ep.rank() != 0) {
    ep.send(local, 0);
    return {};
  }
  std::vector<double> full = backend.read(local);
  Tensor incoming = backend.alloc(local.shape(), local.dtype());
  for (int q = 1; q < ep.size(); ++q) {
    ep.recv(incoming, q);
    const std::vector<double> slice = backend.read(incoming);
    full.insert(full.end(), slice.begin(), slice.end());
  }
  return full;
}

}  // namespace sy
