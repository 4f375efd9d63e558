#include "parallel/grad_sync.h"

#include "optim/clip.h"

namespace sy {

void synchronize_gradients(const std::vector<Param*>& params, ProcessGroups& groups) {
  for (Param* param : params) {
    Communicator& group = param->is_expert ? *groups.expert_data_parallel : *groups.world;
    if (group.size() > 1) group.all_reduce(param->grad, ReduceOp::sum);
  }
}

double distributed_grad_norm(Backend& backend, const std::vector<Param*>& params,
                             ProcessGroups& groups) {
  return global_grad_norm(backend, params, [&](const GradSquares& squares) {
    std::vector<double> expert{squares.expert};
    groups.expert_parallel->all_reduce_host(expert, ReduceOp::sum);
    return squares.shared + expert[0];
  });
}

}  // namespace sy
