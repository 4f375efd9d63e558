#include "model/moe/moe_layer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "model/buffers.h"

namespace sy {

// The worst case of a group of T tokens: each of the P ranks of the EP group sends all its T*K
// assignments here, or, under a capacity, at most C per expert of the E_local held here.
int64_t MoELayer::max_rows_received(int64_t tokens) const {
  const int64_t local = exchange->num_local_experts();
  const int64_t peers = exchange->num_experts() / local;
  const int64_t all = peers * tokens * router.settings.top_k;
  const int64_t capacity = expert_capacity(router.settings, tokens);
  return capacity < 0 ? all : std::min(all, peers * local * capacity);
}

const Tensor& MoELayer::forward(Backend& backend, const Tensor& u) {
  const int64_t D = u.dim(1);
  const DType dtype = u.dtype();
  const int64_t K = router.settings.top_k;
  if (timer) timer->start();

  // route (the router reads u in the compute dtype and works in its own, fp32)
  TokenExchange* world_balance = balance_over_world ? exchange : nullptr;
  router.forward_start(backend, u, world_balance);
  // permute: this rank's kept assignments, grouped by expert. When the exchange would only copy
  // them (every expert here), they are the experts' input rows themselves (saved: x_recv), and
  // the experts write the saved y_perm directly. Dropless, every assignment is kept, so the
  // permute needs no count from the host: it runs while the host waits for the router's counts
  // (not under a stage timer, which times each stage alone).
  const bool rows_stay = !exchange->moves_rows();
  const int64_t max_kept = u.dim(0) * K;
  const bool all_kept = expert_capacity(router.settings, u.dim(0)) < 0;
  auto permute = [&](int64_t kept) {
    x_perm_storage =
        rows_stay ? own_.rows(backend, "moe.x_recv", kept, D, dtype, max_rows_received(u.dim(0)))
                  : scratch().rows(backend, "moe.x_perm", kept, D, dtype, max_kept);
    backend.permute_rows(x_perm_storage, u, router.slot_row, K);
  };
  const bool permute_early = all_kept && !timer;
  if (permute_early) permute(max_kept);
  router.forward_finish(backend, world_balance);
  if (permute_early && router.kept != max_kept)
    throw std::logic_error("MoELayer: a dropless router kept " + std::to_string(router.kept) +
                           " of " + std::to_string(max_kept) + " assignments");
  if (timer) timer->lap(kRoute, false);
  if (!permute_early) permute(router.kept);
  const Tensor x_perm = x_perm_storage;
  if (timer) timer->lap(kPermute, false);
  // dispatch
  plan = exchange->plan(router.tokens_per_expert);
  plan.max_rows_received = max_rows_received(u.dim(0));
  const Tensor x_recv = x_recv_storage =
      rows_stay ? x_perm
                : own_.rows(backend, "moe.x_recv", plan.rows_received, D, dtype,
                            plan.max_rows_received);
  if (!rows_stay) exchange->dispatch(plan, x_recv, x_perm);
  if (timer) timer->lap(kDispatch, false);
  // experts
  const Tensor y_perm = y_perm_storage =
      own_.rows(backend, "moe.y_perm", router.kept, D, dtype, max_kept);
  const Tensor y_recv = y_recv_storage =
      experts.forward(backend, x_recv, plan.rows_per_local_expert, plan.max_rows_received,
                      rows_stay ? y_perm : Tensor());
  if (timer) timer->lap(kExperts, false);
  // combine
  if (!rows_stay) exchange->combine(plan, y_perm, y_recv);
  if (timer) timer->lap(kCombine, false);
  // unpermute: gate-weighted sum of each token's kept expert outputs.
  out = scratch().get(backend, "ffn.out", u.shape(), dtype);  // the caller adds it
  backend.unpermute_combine(out, y_perm, router.gates, router.slot_row);
  if (timer) timer->lap(kUnpermute, false);
  return out;
}

// Backward needs the experts' h1 and h3 again; their output rows go to scratch (y_perm, what
// backward reads of them, stayed saved).
void MoELayer::recompute_experts(Backend& backend) {
  y_recv_storage = experts.forward(backend, x_recv_storage, plan.rows_per_local_expert,
                                   plan.max_rows_received);
}

void MoELayer::release_saved() {
  x_perm_storage = x_recv_storage = y_perm_storage = y_recv_storage = Tensor();
  own_ = Workspace();
  experts.release_saved();
}

const Tensor& MoELayer::backward(Backend& backend, const Tensor& dout, const Tensor& u,
                                 double d_aux, double d_z) {
  const int64_t D = u.dim(1);
  const DType dtype = u.dtype();
  const int64_t K = router.settings.top_k;
  const Tensor y_perm = y_perm_storage;  // the forward's views: router.kept, rows_received rows
  const Tensor x_recv = x_recv_storage;
  if (timer) timer->start();

  // unpermute: gate gradients stay on this rank; the rows' gradients follow the tokens.
  const int64_t max_kept = u.dim(0) * K;
  Workspace& ws = scratch();
  const Tensor dy_perm = dy_perm_storage =
      ws.rows(backend, "moe.dy_perm", router.kept, D, dtype, max_kept);
  dgates = ws.get(backend, "moe.dgates", router.gates.shape(), router.gates.dtype());
  backend.unpermute_combine_backward(dy_perm, dgates, dout, y_perm, router.gates,
                                     router.slot_row);
  if (timer) timer->lap(kUnpermute, true);
  // combine, reversed: output gradients travel to the experts' owners.
  const bool rows_stay = !exchange->moves_rows();
  const Tensor dy_recv = dy_recv_storage =
      rows_stay ? dy_perm
                : ws.rows(backend, "moe.dy_recv", plan.rows_received, D, dtype,
                          plan.max_rows_received);
  if (!rows_stay) exchange->dispatch(plan, dy_recv, dy_perm);
  if (timer) timer->lap(kCombine, true);
  // experts
  const Tensor dx_recv = experts.backward(backend, dy_recv, x_recv, plan.rows_per_local_expert,
                                          plan.max_rows_received);
  if (timer) timer->lap(kExperts, true);
  // dispatch, reversed: input gradients travel back the way the tokens came.
  const Tensor dx_perm = dx_perm_storage =
      rows_stay ? dx_recv : ws.rows(backend, "moe.dx_perm", router.kept, D, dtype, max_kept);
  if (!rows_stay) exchange->combine(plan, dx_perm, dx_recv);
  if (timer) timer->lap(kDispatch, true);
  // The router's gradients, then u's gradient from both paths: the permute reversed (each
  // token's rows summed) and the router's projection, in one op.
  router.backward_weights(backend, dgates, u, d_aux, d_z);
  if (timer) timer->lap(kRoute, true);
  du = ws.get(backend, "ffn.du", u.shape(), dtype);
  backend.router_input_grad(du, dx_perm, router.slot_row, K, router.dlogits,
                            router.weight.compute_value());
  if (timer) timer->lap(kPermute, true);
  return du;
}

}  // namespace sy
