#include "parallel/grad_sync.h"

#include <cmath>

#include "model/backend.h"

namespace sy {

void synchronize_gradients(Backend& backend, const std::vector<Param*>& params,
                           ProcessGroups& groups) {
  const auto region = backend.profile_region("all_reduce gradients");
  for (Param* param : params) {
    Communicator& group = param->is_expert ? *groups.expert_data_parallel : *groups.world;
    if (group.size() > 1) {
      group.all_reduce(param->grad, ReduceOp::sum);
      param->grad_squares_valid = false;  // the squares were of this rank's share only
    }
  }
}

double distributed_grad_norm(Backend& backend, const std::vector<Param*>& params,
                             ProcessGroups& groups) {
  // optim/clip.h's global norm with the expert share summed over the expert-parallel group:
  // non-expert gradients are equal on every rank after their all-reduce and count once.
  double shared = 0.0, expert = 0.0;
  backend.grad_norm_squares(params, shared, expert);
  std::vector<double> expert_sum{expert};
  {
    const auto region = backend.profile_region("all_reduce grad norm");
    groups.expert_parallel->all_reduce_host(expert_sum, ReduceOp::sum);
  }
  return std::sqrt(shared + expert_sum[0]);
}

}  // namespace sy
