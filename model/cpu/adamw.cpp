// The fused optimizer pass as the per-tensor ops it stands for (backend.h): Backend's default
// grad_norm_squares and fused_adamw_step. The CPU backend runs these, so they are the reference
// that a device's multi-tensor pass is tested against (tests/test_optim.cpp,
// tests/test_cuda_optim.cpp).
#include <stdexcept>
#include <string>

#include "model/backend.h"

namespace sy {

void Backend::grad_norm_squares(std::span<Param* const> params, double& shared, double& expert) {
  std::vector<Tensor> grads;
  grads.reserve(params.size());
  for (const Param* param : params) grads.push_back(param->grad);
  std::vector<double> sums(params.size());
  sum_squares_many(grads, sums);  // one host synchronisation on a device
  shared = 0.0;
  expert = 0.0;
  for (size_t i = 0; i < params.size(); ++i) (params[i]->is_expert ? expert : shared) += sums[i];
}

void Backend::fused_adamw_step(std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                               std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp) {
  if (exp_avgs.size() != params.size() || exp_avg_sqs.size() != params.size())
    throw std::invalid_argument("fused_adamw_step: " + std::to_string(params.size()) +
                                " params but " + std::to_string(exp_avgs.size()) + " exp_avg and " +
                                std::to_string(exp_avg_sqs.size()) + " exp_avg_sq tensors");
  for (size_t i = 0; i < params.size(); ++i) {
    Param& param = *params[i];
    if (hp.grad_scale != 1.0) scale(param.grad, hp.grad_scale);
    adamw_update(param.value, param.grad, exp_avgs[i], exp_avg_sqs[i], hp.lr, hp.beta1, hp.beta2,
                 hp.eps, param.decay ? hp.weight_decay : 0.0, hp.step);
    if (param.compute.defined() && param.compute.data() != param.value.data())
      copy(param.compute, param.value);
    if (hp.zero_grads) fill(param.grad, 0.0);
  }
}

}  // namespace sy
