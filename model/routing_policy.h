// The routing policy of an MoE layer (SPEC.md section 2; the balancing options in
// docs/load-balancing.md): how a router scores, selects and caps its assignments. It exists once:
// MoeConfig holds it (trainer/config.cpp parses moe.top_k, moe.router_score, moe.normalize_topk,
// moe.drop_policy and moe.overflow into it), the Router's settings derive from it, and the
// backends read it as a RoutingRule (model/backend.h), the policy applied to one routing group.
#pragma once
#include <cstdint>

namespace sy {

enum class RouterScore { softmax, sigmoid };      // moe.router_score
enum class DropPolicy { position, probability };  // which assignments an over-full expert keeps
enum class Overflow { drop, reroute };            // what happens to the ones it does not
// moe.normalize_topk (YAML true, false or null): whether the gates are renormalised over the K
// selected scores; by_default resolves by top_k and score (RoutingPolicy::normalizes).
enum class TopkNormalize { by_default, off, on };

struct RoutingPolicy {
  int64_t top_k = 2;  // K
  RouterScore score = RouterScore::softmax;
  TopkNormalize normalize_topk = TopkNormalize::by_default;
  DropPolicy drop_policy = DropPolicy::position;
  Overflow overflow = Overflow::drop;

  // The default normalises when K > 1, and always for sigmoid scores: they do not sum to 1.
  bool normalizes() const {
    if (normalize_topk == TopkNormalize::by_default)
      return top_k > 1 || score == RouterScore::sigmoid;
    return normalize_topk == TopkNormalize::on;
  }
};

}  // namespace sy
