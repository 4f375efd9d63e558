#include "model/moe/router.h"

#include <cmath>
#include <stdexcept>

#include "model/buffers.h"
#include "model/op_checks.h"

namespace sy {

int64_t expert_capacity(const RouterSettings& settings, int64_t tokens) {
  if (settings.capacity_factor <= 0.0) return -1;
  const double capacity = settings.capacity_factor * static_cast<double>(settings.top_k) *
                          static_cast<double>(tokens) / static_cast<double>(settings.num_experts);
  return static_cast<int64_t>(std::ceil(capacity));
}

RoutingRule Router::rule(int64_t tokens) const {
  return {settings, settings.normalizes(), expert_capacity(settings, tokens)};
}

void Router::forward(Backend& backend, const Tensor& u, TokenExchange* world_balance) {
  forward_start(backend, u, world_balance);
  forward_finish(backend, world_balance);
}

void Router::forward_start(Backend& backend, const Tensor& u, TokenExchange* world_balance) {
  if (started_tokens >= 0) throw std::logic_error("Router::forward_start: the last one is open");
  const int64_t T = u.dim(0), E = settings.num_experts, K = settings.top_k;
  const DType dtype = weight.value.dtype();
  ensure(backend, logits, {T, E}, dtype);
  ensure(backend, scores, {T, E}, dtype);
  ensure(backend, lse, {T}, dtype);
  ensure(backend, topk_idx, {T, K}, DType::i32);
  ensure(backend, gates, {T, K}, dtype);
  ensure(backend, slot_expert, {T * K}, DType::i32);
  ensure(backend, slot_row, {T * K}, DType::i32);
  ensure(backend, assignments_per_expert, {E}, DType::i32);

  const RoutingRule routing = rule(T);
  backend.router_logits(logits, u, weight.compute_value());
  backend.router_scores_topk(scores, lse, topk_idx, gates, logits, expert_bias, routing);
  backend.router_plan_start(slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                            expert_bias, routing);
  started_tokens = T;
  // This group's own counts are on the device already: the losses run while the host waits.
  if (!world_balance && losses_out.defined()) {
    balance_counts = assignments_per_expert;
    backend.router_losses_into(losses_out, scores, lse, balance_counts, routing);
  }
}

void Router::forward_finish(Backend& backend, TokenExchange* world_balance) {
  if (started_tokens < 0) throw std::logic_error("Router::forward_finish without forward_start");
  const int64_t T = started_tokens, E = settings.num_experts, K = settings.top_k;
  started_tokens = -1;
  const RoutingRule routing = rule(T);
  RouterPlanCounts counts = backend.router_plan_finish();
  tokens_per_expert = std::move(counts.tokens_per_expert);
  assignments_on_host = std::move(counts.assignments_per_expert);
  rerouted = counts.rerouted;
  if (world_balance) {
    // Global-batch balancing: f_e from the choices of all the groups of this micro-step.
    ensure(backend, world_counts, {E}, DType::i32);
    std::vector<int64_t> summed = assignments_on_host;
    world_balance->sum_over_world(summed);
    const std::vector<int32_t> global(summed.begin(), summed.end());
    backend.write(world_counts, std::span<const int32_t>(global));
    balance_counts = world_counts;
  } else {
    balance_counts = assignments_per_expert;
  }
  if (losses_out.defined()) {
    if (world_balance) backend.router_losses_into(losses_out, scores, lse, balance_counts, routing);
  } else {
    const RouterLossValues losses = backend.router_losses(scores, lse, balance_counts, routing);
    aux_loss = losses.aux;
    z_loss = losses.z;
    entropy = losses.entropy;
  }
  kept = 0;
  for (int64_t rows : tokens_per_expert) kept += rows;
  dropped = T * K - kept;
}

void Router::backward(Backend& backend, const Tensor& du, const Tensor& dgates, const Tensor& u,
                      double d_aux, double d_z) {
  ensure(backend, dlogits, logits.shape(), logits.dtype());
  backend.router_backward(dlogits, dgates, scores, lse, logits, topk_idx, balance_counts,
                          rule(u.dim(0)), d_aux, d_z);
  backend.router_logits_backward(weight.grad, du, dlogits, u, weight.compute_value(),
                                 weight.take_grad_beta());
}

void Router::backward_weights(Backend& backend, const Tensor& dgates, const Tensor& u, double d_aux,
                              double d_z) {
  backward(backend, Tensor(), dgates, u, d_aux, d_z);
}

// The reference projection (contract in model/backend.h): what the MoE layer did before the op
// existed, so a backend keeping these computes the same bits as then. With u in another dtype
// than w, a temporary copy in w's dtype (exact) feeds the GEMMs, and the input gradient is
// written over it once the weight gradient has read it.
void Backend::router_logits(const Tensor& logits, const Tensor& u, const Tensor& w) {
  check_router_logits(*this, logits, u, w);
  if (u.dtype() == w.dtype()) {
    gemm(logits, u, false, w, false, 1.0, 0.0);
    return;
  }
  const Tensor wide = alloc(u.shape(), w.dtype());
  copy(wide, u);
  gemm(logits, wide, false, w, false, 1.0, 0.0);
}

namespace {
// du += dlogits @ w^T, summed in w's dtype (through a temporary when du's dtype differs).
void add_projection_input_grad(Backend& backend, const Tensor& du, const Tensor& dlogits,
                               const Tensor& w) {
  if (du.dtype() == w.dtype()) {
    backend.gemm(du, dlogits, false, w, true, 1.0, 1.0);
    return;
  }
  const Tensor wide = backend.alloc(du.shape(), w.dtype());
  backend.gemm(wide, dlogits, false, w, true, 1.0, 0.0);
  backend.add(du, wide, 1.0);
}
}  // namespace

void Backend::router_logits_backward(const Tensor& dw, const Tensor& du, const Tensor& dlogits,
                                     const Tensor& u, const Tensor& w, double dw_beta) {
  check_router_logits_backward(*this, dw, du, dlogits, u, w);
  if (u.dtype() == w.dtype()) {
    gemm(dw, u, true, dlogits, false, 1.0, dw_beta);
  } else {
    const Tensor wide = alloc(u.shape(), w.dtype());
    copy(wide, u);
    gemm(dw, wide, true, dlogits, false, 1.0, dw_beta);
  }
  if (du.defined()) add_projection_input_grad(*this, du, dlogits, w);
}

void Backend::router_input_grad(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                                int64_t K, const Tensor& dlogits, const Tensor& w) {
  check_router_input_grad(*this, dx, dx_perm, slot_row, K, dlogits, w);
  permute_rows_backward(dx, dx_perm, slot_row, K);
  add_projection_input_grad(*this, dx, dlogits, w);
}

}  // namespace sy
