// The MoE router's ops on the CPU (SPEC.md section 2, docs/load-balancing.md): scores and top-K
// gates, the capacity plan (keep, drop or reroute each assignment, then rows grouped by expert),
// the auxiliary losses and their backward. Contract: model/backend.h.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

// The router's sigmoid, in double (the router's precision matters more than its speed).
template <class T>
T router_sigmoid(T x) {
  return static_cast<T>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
}

// The K experts with the largest selection scores logits + bias (bias may be null), largest
// first; ties go to the lower index (strictly larger wins).
template <class T>
void select_topk(int32_t* idx, const T* logits, const T* bias, int64_t E, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    T best_score = T(0);
    for (int64_t e = 0; e < E; ++e) {
      bool chosen = false;
      for (int64_t c = 0; c < k; ++c) chosen |= idx[c] == e;
      const T score = bias ? logits[e] + bias[e] : logits[e];
      if (!chosen && (best < 0 || score > best_score)) best = e, best_score = score;
    }
    idx[k] = static_cast<int32_t>(best);
  }
}

template <class T>
void router_scores_topk(T* scores, T* lse, int32_t* topk_idx, T* gates, const T* logits,
                        const T* bias, int64_t N, int64_t E, const RoutingRule& r) {
  for (int64_t t = 0; t < N; ++t) {
    const T* row = logits + t * E;
    T* s = scores + t * E;
    const T m = *std::max_element(row, row + E);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(row[e] - m));
    lse[t] = static_cast<T>(static_cast<double>(m) + std::log(sum));
    for (int64_t e = 0; e < E; ++e)
      s[e] = r.score == RouterScore::sigmoid ? router_sigmoid(row[e])
                       : static_cast<T>(std::exp(static_cast<double>(row[e] - m)) / sum);
    int32_t* idx = topk_idx + t * r.top_k;
    select_topk(idx, row, bias, E, r.top_k);
    double denom = 1;
    if (r.normalize) {
      denom = 0;
      for (int64_t k = 0; k < r.top_k; ++k) denom += s[idx[k]];
    }
    for (int64_t k = 0; k < r.top_k; ++k) gates[t * r.top_k + k] = static_cast<T>(s[idx[k]] / denom);
  }
}

// The assignments t*K+k in the ranking of the drop policy: (k, t), or by gate (highest first)
// and then (k, t).
template <class T>
std::vector<int64_t> ranked_assignments(const T* gates, int64_t N, const RoutingRule& r) {
  std::vector<int64_t> order;
  order.reserve(N * r.top_k);
  for (int64_t k = 0; k < r.top_k; ++k)
    for (int64_t t = 0; t < N; ++t) order.push_back(t * r.top_k + k);
  if (r.drop_policy == DropPolicy::probability)
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return gates[a] > gates[b]; });
  return order;
}

// The reroute target of assignment `slot`: the best selection score among experts below
// capacity that the token does not use yet; -1 when every such expert is full.
template <class T>
int32_t reroute_target(int64_t slot, const int32_t* topk_idx, const int32_t* slot_expert,
                       const std::vector<int64_t>& kept, const T* logits, const T* bias,
                       int64_t E, const RoutingRule& r) {
  const int64_t t = slot / r.top_k;
  int32_t best = -1;
  T best_score = T(0);
  for (int64_t e = 0; e < E; ++e) {
    if (kept[e] >= r.capacity) continue;
    bool used = false;
    for (int64_t k = 0; k < r.top_k; ++k)
      used |= topk_idx[t * r.top_k + k] == e || slot_expert[t * r.top_k + k] == e;
    if (used) continue;
    const T score = bias ? logits[t * E + e] + bias[e] : logits[t * E + e];
    if (best < 0 || score > best_score) best = static_cast<int32_t>(e), best_score = score;
  }
  return best;
}

// Keep, drop or reroute each assignment (slot_row 0 kept / -1 dropped; row numbers follow in
// router_plan_rows). Returns the kept count per expert; *rerouted counts the moves.
template <class T>
std::vector<int64_t> router_plan_counts(int32_t* slot_row, int32_t* slot_expert,
                                        int32_t* assignments, const int32_t* topk_idx,
                                        const T* gates, const T* logits, const T* bias, int64_t N,
                                        int64_t E, const RoutingRule& r, int64_t* rerouted) {
  std::vector<int64_t> kept(E, 0), assigned(E, 0);
  std::vector<int64_t> overflow;  // in ranking order
  for (int64_t slot : ranked_assignments(gates, N, r)) {
    const int32_t e = topk_idx[slot];
    ++assigned[e];
    slot_expert[slot] = e;
    const bool keep = r.capacity < 0 || kept[e] < r.capacity;
    kept[e] += keep;
    slot_row[slot] = keep ? 0 : -1;
    if (!keep) overflow.push_back(slot);
  }
  *rerouted = 0;
  if (r.overflow == Overflow::reroute)
    for (int64_t slot : overflow) {
      const int32_t e = reroute_target(slot, topk_idx, slot_expert, kept, logits, bias, E, r);
      if (e < 0) continue;
      slot_expert[slot] = e;
      slot_row[slot] = 0;
      ++kept[e];
      ++*rerouted;
    }
  for (int64_t e = 0; e < E; ++e) assignments[e] = static_cast<int32_t>(assigned[e]);
  return kept;
}

inline void router_plan_rows(int32_t* slot_row, const int32_t* slot_expert,
                             const std::vector<int64_t>& kept, int64_t N, int64_t K) {
  std::vector<int64_t> next(kept.size(), 0);  // next free row of each expert
  for (size_t e = 1; e < kept.size(); ++e) next[e] = next[e - 1] + kept[e - 1];
  for (int64_t slot = 0; slot < N * K; ++slot) {
    if (slot_row[slot] < 0) continue;
    const int64_t row = next[slot_expert[slot]]++;
    slot_row[slot] = static_cast<int32_t>(row);
  }
}

// f_e = counts[e] / sum counts (0 when there are none).
inline std::vector<double> balance_fractions(const int32_t* counts, int64_t E) {
  double total = 0;
  for (int64_t e = 0; e < E; ++e) total += counts[e];
  std::vector<double> f(E, 0.0);
  if (total > 0)
    for (int64_t e = 0; e < E; ++e) f[e] = counts[e] / total;
  return f;
}

// The distribution the aux loss and the entropy see: the softmax itself, or the sigmoid scores
// normalised over the experts. Returns sum_e scores[e] (1 for softmax).
template <class T>
double balance_distribution(double* q, const T* scores, int64_t E, bool sigmoid) {
  double sum = 1;
  if (sigmoid) {
    sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += scores[e];
  }
  for (int64_t e = 0; e < E; ++e) q[e] = scores[e] / sum;
  return sum;
}

struct RouterLosses {
  double aux, z, entropy;
};

template <class T>
RouterLosses router_losses(const T* scores, const T* lse, const int32_t* counts, int64_t N,
                           int64_t E, const RoutingRule& r) {
  if (N == 0) return {0, 0, 0};
  std::vector<double> P(E, 0), q(E);
  double z = 0, entropy = 0;
  for (int64_t t = 0; t < N; ++t) {
    balance_distribution(q.data(), scores + t * E, E, r.score == RouterScore::sigmoid);
    for (int64_t e = 0; e < E; ++e) {
      P[e] += q[e];
      if (q[e] > 0) entropy -= q[e] * std::log(q[e]);
    }
    z += static_cast<double>(lse[t]) * lse[t];
  }
  const std::vector<double> f = balance_fractions(counts, E);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) aux += f[e] * (P[e] / static_cast<double>(N));
  return {static_cast<double>(E) * aux, z / static_cast<double>(N), entropy / N};
}

// dlogits (=): the gates (and their top-K normalisation) and aux (through P_e) give ds, the
// gradient with respect to the scores; then through the score function (softmax: s * (ds -
// <ds, s>); sigmoid: ds * s * (1 - s)), plus z through logsumexp (softmax(logits) * dz).
template <class T>
void router_backward(T* dlogits, const T* dgates, const T* scores, const T* lse, const T* logits,
                     const int32_t* topk_idx, const int32_t* counts, int64_t N, int64_t E,
                     const RoutingRule& r, double d_aux, double d_z) {
  const std::vector<double> f = balance_fractions(counts, E);
  std::vector<double> c(E), ds(E), q(E);
  for (int64_t e = 0; e < E; ++e) c[e] = d_aux * static_cast<double>(E) * f[e] / N;  // d/dq[t,e]
  const int64_t K = r.top_k;
  const bool sigmoid = r.score == RouterScore::sigmoid;
  for (int64_t t = 0; t < N; ++t) {
    const T* s = scores + t * E;
    const int32_t* idx = topk_idx + t * K;
    const T* g = dgates + t * K;
    // aux: through q = s (softmax) or q = s / Q (sigmoid): dq/ds_j = (delta - q_j) / Q.
    if (sigmoid) {
      const double Q = balance_distribution(q.data(), s, E, true);
      double cq = 0;
      for (int64_t e = 0; e < E; ++e) cq += c[e] * q[e];
      for (int64_t e = 0; e < E; ++e) ds[e] = (c[e] - cq) / Q;
    } else {
      ds = c;
    }
    if (r.normalize) {  // gate_k = s_k / S, S = sum_selected s
      double S = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) {
        S += s[idx[k]];
        dot += static_cast<double>(g[k]) * s[idx[k]];
      }
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += g[k] / S - dot / (S * S);
    } else {
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += g[k];
    }
    const double dz = d_z * 2.0 * lse[t] / N;
    if (sigmoid) {
      for (int64_t e = 0; e < E; ++e) {
        const double softmax = std::exp(static_cast<double>(logits[t * E + e]) - lse[t]);
        dlogits[t * E + e] = static_cast<T>(ds[e] * s[e] * (1.0 - s[e]) + softmax * dz);
      }
    } else {
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] = static_cast<T>(s[e] * (ds[e] - dot + dz));
    }
  }
}

template <class T>
const T* bias_ptr(const Tensor& bias) {
  return bias.defined() ? bias.ptr<T>() : nullptr;
}

}  // namespace
}  // namespace cpu

void CpuBackend::router_scores_topk_impl(const Tensor& scores, const Tensor& lse,
                                         const Tensor& topk_idx, const Tensor& gates,
                                         const Tensor& logits, const Tensor& expert_bias,
                                         const RoutingRule& rule) {
  const DType dt = logits.dtype();
  const int64_t N = logits.dim(0), E = logits.dim(1);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::router_scores_topk(scores.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(),
                            gates.ptr<T>(), logits.ptr<T>(), cpu::bias_ptr<T>(expert_bias), N, E,
                            rule);
  });
}

RouterPlanCounts CpuBackend::router_plan_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                              const Tensor& assignments_per_expert,
                                              const Tensor& topk_idx, const Tensor& gates,
                                              const Tensor& logits, const Tensor& expert_bias,
                                              const RoutingRule& rule) {
  const OpCheck c(*this, "router_plan");
  const DType dt = logits.dtype();
  const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1);
  cpu::index_range(c, topk_idx, N * K, 0, E, "topk_idx");
  RouterPlanCounts counts;
  counts.tokens_per_expert = cpu::dispatch_float(dt, [&]<class T>(T) {
    return cpu::router_plan_counts(slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(),
                                   assignments_per_expert.ptr<int32_t>(),
                                   topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
                                   cpu::bias_ptr<T>(expert_bias), N, E, rule,
                                   &counts.rerouted);
  });
  cpu::router_plan_rows(slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(),
                        counts.tokens_per_expert, N, K);
  const int32_t* assignments = assignments_per_expert.ptr<int32_t>();
  counts.assignments_per_expert.assign(assignments, assignments + E);
  return counts;
}

RouterLossValues CpuBackend::router_losses_impl(const Tensor& scores, const Tensor& lse,
                                                const Tensor& balance_counts,
                                                const RoutingRule& rule) {
  const int64_t N = scores.dim(0), E = scores.dim(1);
  const cpu::RouterLosses l = cpu::dispatch_float(scores.dtype(), [&]<class T>(T) {
    return cpu::router_losses(scores.ptr<T>(), lse.ptr<T>(), balance_counts.ptr<int32_t>(), N,
                              E, rule);
  });
  return {l.aux, l.z, l.entropy};
}

void CpuBackend::router_backward_impl(const Tensor& dlogits, const Tensor& dgates,
                                      const Tensor& scores, const Tensor& lse, const Tensor& logits,
                                      const Tensor& topk_idx, const Tensor& balance_counts,
                                      const RoutingRule& rule, double d_aux, double d_z) {
  const int64_t N = scores.dim(0), E = scores.dim(1), K = rule.top_k;
  cpu::index_range(OpCheck(*this, "router_backward"), topk_idx, N * K, 0, E, "topk_idx");
  cpu::dispatch_float(scores.dtype(), [&]<class T>(T) {
    cpu::router_backward(dlogits.ptr<T>(), dgates.ptr<T>(), scores.ptr<T>(), lse.ptr<T>(),
                         logits.ptr<T>(), topk_idx.ptr<int32_t>(),
                         balance_counts.ptr<int32_t>(), N, E, rule, d_aux, d_z);
  });
}

}  // namespace sy
