#include "model/moe/router.h"

#include <cmath>

#include "model/buffers.h"

namespace sy {

int64_t expert_capacity(const RouterSettings& settings, int64_t tokens) {
  if (settings.capacity_factor <= 0.0) return -1;
  const double capacity = settings.capacity_factor * static_cast<double>(settings.top_k) *
                          static_cast<double>(tokens) / static_cast<double>(settings.num_experts);
  return static_cast<int64_t>(std::ceil(capacity));
}

void Router::forward(Backend& backend, const Tensor& u) {
  const int64_t T = u.dim(0), E = settings.num_experts, K = settings.top_k;
  const DType dtype = u.dtype();
  ensure(backend, logits, {T, E}, dtype);
  ensure(backend, probs, {T, E}, dtype);
  ensure(backend, lse, {T}, dtype);
  ensure(backend, topk_idx, {T, K}, DType::i32);
  ensure(backend, gates, {T, K}, dtype);
  ensure(backend, slot_row, {T * K}, DType::i32);
  ensure(backend, row_slot, {T * K}, DType::i32);
  ensure(backend, assignments_per_expert, {E}, DType::i32);

  backend.gemm(logits, u, false, weight.compute_value(), false, 1.0, 0.0);
  backend.router_softmax_topk(probs, lse, topk_idx, gates, logits, K, settings.normalize);
  tokens_per_expert = backend.router_plan(slot_row, row_slot, assignments_per_expert, topk_idx, E,
                                          expert_capacity(settings, T));
  backend.router_losses(&aux_loss, &z_loss, probs, lse, assignments_per_expert, K);
  kept = 0;
  for (int64_t rows : tokens_per_expert) kept += rows;
  dropped = T * K - kept;
}

void Router::backward(Backend& backend, const Tensor& du, const Tensor& dgates, const Tensor& u,
                      double d_aux, double d_z, bool accumulate) {
  ensure(backend, dlogits, logits.shape(), logits.dtype());
  backend.router_backward(dlogits, dgates, probs, lse, topk_idx, assignments_per_expert,
                          settings.top_k, settings.normalize, d_aux, d_z);
  backend.gemm(weight.grad, u, true, dlogits, false, 1.0, 1.0);
  backend.gemm(du, dlogits, false, weight.compute_value(), true, 1.0, accumulate ? 1.0 : 0.0);
}

}  // namespace sy
