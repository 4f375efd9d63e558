// The router of one MoE layer (SPEC.md section 2; the balancing options in
// docs/load-balancing.md): fp32 logits, softmax or sigmoid scores, top-k (optionally steered by
// a per-expert bias), gates, capacity with drops or reroutes, the Switch load-balancing loss and
// the z-loss. Its outputs are what the dispatcher needs: the gates and the permutation of kept
// assignments, grouped by expert.
#pragma once
#include <vector>

#include "model/backend.h"
#include "model/moe/token_exchange.h"
#include "model/param.h"

namespace sy {

// The routing policy (MoeConfig::routing) with what the router needs besides it.
struct RouterSettings : RoutingPolicy {
  int64_t num_experts = 0;       // E
  double capacity_factor = 0.0;  // <= 0: dropless
};

// C = ceil(capacity_factor * K * T / E) in float64, left to right; -1 when dropless.
int64_t expert_capacity(const RouterSettings& settings, int64_t tokens);

struct Router {
  Param weight;  // [D, E]
  RouterSettings settings;
  // [E] in the router's dtype, added to the logits for the top-k selection only (aux-loss-free
  // balancing, moe.bias_update_rate > 0); undefined when that is off. Not a parameter: the
  // trainer updates it from the step's loads (Transformer::update_expert_bias).
  Tensor expert_bias;

  // Forward results, kept for backward and metrics. T tokens, E experts, K choices.
  Tensor logits, scores;          // [T, E]
  Tensor lse;                     // [T]
  Tensor topk_idx, gates;         // [T, K]
  Tensor slot_expert;             // i32 [T*K]: the expert that runs assignment t*K+k
  Tensor slot_row;                // i32 [T*K]: permuted row of assignment t*K+k, -1 if dropped
  Tensor assignments_per_expert;  // i32 [E], the choices before drops and reroutes
  Tensor world_counts;            // i32 [E]: assignments_per_expert summed over the world
  Tensor balance_counts;          // the counts behind f_e: assignments_per_expert or world_counts
  std::vector<int64_t> tokens_per_expert;    // [E] kept, on the host
  std::vector<int64_t> assignments_on_host;  // [E] assignments_per_expert, on the host
  // f64 [3] on the device: aux, z and the entropy, written by forward. A caller that defines it
  // (the Transformer: one row of a buffer for all its layers) reads the values itself, all
  // layers in one copy once the step's work is enqueued; left undefined, forward reads them
  // into aux_loss, z_loss and entropy at once (a host synchronisation).
  Tensor losses_out;
  double aux_loss = 0.0, z_loss = 0.0, entropy = 0.0;
  int64_t kept = 0, dropped = 0, rerouted = 0;
  // Backward scratch.
  Tensor dlogits;
  int64_t started_tokens = -1;  // T of a forward_start not yet finished, else -1

  RoutingRule rule(int64_t tokens) const;
  // u: the normalised input [T, D], in the compute dtype (bf16 or the router's) as the MoE layer
  // holds it: the projection widens it as it reads (Backend::router_logits). The router's own
  // tensors are in its dtype, that of weight.value (fp32 in training, also in bf16 models). With
  // `world_balance` (aux_loss_scope global, in training), f_e counts the choices of every rank's
  // routing group at this micro-step.
  void forward(Backend& backend, const Tensor& u, TokenExchange* world_balance = nullptr);
  // forward in two halves (forward = start, then finish): start enqueues the routing, and the
  // losses where they need nothing from the host (losses_out defined, no world_balance); finish
  // waits for the counts (one host synchronisation) and does the rest. Between them the caller
  // may enqueue work that needs only the device's results (MoELayer: a dropless permute).
  void forward_start(Backend& backend, const Tensor& u, TokenExchange* world_balance = nullptr);
  void forward_finish(Backend& backend, TokenExchange* world_balance = nullptr);
  // dgates [T, K]; d_aux, d_z: the loss's derivative with respect to this layer's aux and z.
  // u's gradient through the router is added into du [T, D] (u's dtype, not u itself);
  // weight.grad accumulates (written on its first use after zeroing).
  void backward(Backend& backend, const Tensor& du, const Tensor& dgates, const Tensor& u,
                double d_aux, double d_z);
  // backward without u's gradient: dlogits and weight.grad. The MoE layer adds dlogits @ w^T
  // into u's gradient together with its experts' path (Backend::router_input_grad).
  void backward_weights(Backend& backend, const Tensor& dgates, const Tensor& u, double d_aux,
                        double d_z);
};

}  // namespace sy
