#include "parallel/grad_sync.h"

#include <algorithm>
#include <cmath>

#include "model/backend.h"

namespace sy {

namespace {
Communicator& group_of(const Param& param, ProcessGroups& groups) {
  return param.is_expert ? *groups.expert_data_parallel : *groups.world;
}
}  // namespace

void synchronize_gradients(Backend& backend, const std::vector<Param*>& params,
                           ProcessGroups& groups) {
  const auto region = backend.profile_region("all_reduce gradients");
  for (Param* param : params) {
    Communicator& group = group_of(*param, groups);
    if (group.size() > 1) {
      group.all_reduce(param->grad, ReduceOp::sum);
      param->grad_squares_valid = false;  // the squares were of this rank's share only
    }
  }
}

bool GradientReducer::overlaps() const {
  return groups_.world->reduces_in_background() &&
         groups_.expert_data_parallel->reduces_in_background();
}

void GradientReducer::reduce(std::span<Param* const> params) {
  // One start per group, the world's first: every rank issues the same calls in the same order.
  std::vector<Tensor> shared, expert;
  for (Param* param : params) {
    if (group_of(*param, groups_).size() == 1) continue;
    (param->is_expert ? expert : shared).push_back(param->grad);
    param->grad_squares_valid = false;  // the squares were of this rank's share only
    started_.push_back(param);
  }
  if (!shared.empty()) groups_.world->start_all_reduce(shared, ReduceOp::sum);
  if (!expert.empty()) groups_.expert_data_parallel->start_all_reduce(expert, ReduceOp::sum);
}

void GradientReducer::finish(const std::vector<Param*>& params) {
  std::vector<Param*> rest;
  for (Param* param : params)
    if (std::find(started_.begin(), started_.end(), param) == started_.end()) rest.push_back(param);
  if (started_.empty() || !overlaps()) {  // no overlap this step: the sums after backward
    synchronize_gradients(backend_, rest, groups_);
  } else {
    const auto region = backend_.profile_region("all_reduce gradients");
    reduce(rest);
    groups_.world->wait_started();
    groups_.expert_data_parallel->wait_started();
  }
  started_.clear();
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
