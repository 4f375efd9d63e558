// The router (SPEC.md section 2, docs/load-balancing.md) on the device, in the router's dtype
// (f32; f64 for checks): scores, top-k and gates per token; the capacity plan as per-expert block
// scans, plus a sequential walk for reroutes; the aux, z and entropy losses as deterministic
// reductions in double; the backward per token. The integer results (top-k, the plan) equal the
// CPU reference's (model/cpu/cpu_kernels.h) exactly: the kernels compare the same values in the
// same dtype and break ties the same way.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

template <class T>
const T* bias_ptr(const Tensor& bias) {
  return bias.defined() ? bias.ptr<T>() : nullptr;
}

// The selection score of expert e for a token's logits row: logits + bias, added in T as the
// CPU adds them, so that the top-k and the reroute targets compare identical values.
template <class T>
__device__ inline T selection_score(const T* row, const T* bias, int64_t e) {
  return bias ? row[e] + bias[e] : row[e];
}

// ---- scores, top-k, gates: one thread per token ---------------------------------------------
template <class T>
__global__ void scores_topk_kernel(T* scores, T* lse, int32_t* topk_idx, T* gates,
                                   const T* logits, const T* bias, int64_t N, int64_t E,
                                   int64_t K, bool sigmoid, bool normalize) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* row = logits + t * E;
  T* s = scores + t * E;
  T m = row[0];
  for (int64_t e = 1; e < E; ++e) m = max(m, row[e]);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += exp(static_cast<double>(row[e] - m));
  lse[t] = static_cast<T>(static_cast<double>(m) + log(sum));  // the z-loss's, whatever the score
  for (int64_t e = 0; e < E; ++e)
    s[e] = sigmoid ? static_cast<T>(1.0 / (1.0 + exp(-static_cast<double>(row[e]))))
                   : static_cast<T>(exp(static_cast<double>(row[e] - m)) / sum);
  // Top-K of the selection scores by repeated selection: strictly larger wins, so ties go to
  // the lower index.
  int32_t* idx = topk_idx + t * K;
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    T best_score = T(0);
    for (int64_t e = 0; e < E; ++e) {
      bool chosen = false;
      for (int64_t c = 0; c < k; ++c) chosen |= idx[c] == e;
      const T score = selection_score(row, bias, e);
      if (!chosen && (best < 0 || score > best_score)) best = e, best_score = score;
    }
    idx[k] = static_cast<int32_t>(best);
  }
  // The gates come from the unbiased scores.
  double denom = 1;
  if (normalize) {
    denom = 0;
    for (int64_t k = 0; k < K; ++k) denom += static_cast<double>(s[idx[k]]);
  }
  for (int64_t k = 0; k < K; ++k)
    gates[t * K + k] = static_cast<T>(static_cast<double>(s[idx[k]]) / denom);
}

// ---- the capacity plan ----------------------------------------------------------------------
// 1. plan_keep_kernel, one block per expert: which of its assignments it keeps.
// 2. With overflow reroute: the dropped assignments in ranking order (plan_dropped_kernel, and
//    plan_order_kernel for the probability policy), then plan_reroute_kernel walks them one at a
//    time (sequential by definition: each move changes what the next one may take).
// 3. plan_rows_kernel, one block per expert: the row numbers, grouped by slot_expert.
constexpr int kPlanThreads = 1024;
constexpr int kOrderThreads = 256;

// Exclusive count of `flag` over the block's threads in thread order; *total gets the count of
// the whole block. Every thread of the block must call it.
__device__ int block_exclusive_count(bool flag, int* total) {
  __shared__ int warp_offsets[32];
  __shared__ int block_total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int within = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_offsets[warp] = __popc(ballot);
  __syncthreads();
  if (warp == 0) {
    const int count = lane < warps ? warp_offsets[lane] : 0;
    int inclusive = count;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (lane < warps) warp_offsets[lane] = inclusive - count;
    if (lane == 31) block_total = inclusive;
  }
  __syncthreads();
  const int prefix = warp_offsets[warp] + within;
  *total = block_total;
  __syncthreads();  // the shared values may be overwritten by the next call
  return prefix;
}

// The probability policy ranks assignments by gate. An unsigned key that orders like the value:
// the IEEE bits with the sign bit set for values >= 0 and all bits flipped for negative ones
// (gates are >= 0; the general form costs nothing). -0 is folded onto +0, which the CPU's
// comparison treats as equal. Equal keys are equal gates, so ties fall to the (k, t) order.
template <class T> struct GateKey;
template <> struct GateKey<float> {
  using type = uint32_t;
  static constexpr int bits = 32;
};
template <> struct GateKey<double> {
  using type = unsigned long long;
  static constexpr int bits = 64;
};
template <class T> using gate_key_t = typename GateKey<T>::type;

template <class T>
__device__ inline gate_key_t<T> gate_key(T gate) {
  if constexpr (std::is_same_v<T, float>) {
    const uint32_t u = __float_as_uint(gate == 0.0f ? 0.0f : gate);
    return (u >> 31) ? ~u : (u | 0x80000000u);
  } else {
    const auto u = static_cast<unsigned long long>(__double_as_longlong(gate == 0.0 ? 0.0 : gate));
    return (u >> 63) ? ~u : (u | (1ull << 63));
  }
}

// Block e: the assignments to expert e in the drop policy's ranking; the first `capacity` are
// kept (slot_row 0), the rest dropped (-1); slot_expert = e for all of them. Position: ranked by
// j = k*N + t. Probability: by gate, highest first, then j. For that the block finds the
// capacity-th largest gate key exactly, by a bitwise binary search from the top bit (one
// block-wide count per bit: 32 passes for f32, 64 for f64), and keeps every key above it plus
// the first (capacity - count above) keys equal to it in j order. counts[e]: kept after drops;
// assignments[e]: before; block 0 zeroes counts[E], the reroute count.
template <class T>
__global__ void plan_keep_kernel(int32_t* slot_row, int32_t* slot_expert, int32_t* assignments,
                                 int32_t* counts, const int32_t* topk_idx, const T* gates,
                                 int64_t N, int64_t K, int64_t capacity, bool by_gate) {
  using Key = gate_key_t<T>;
  __shared__ int shared[32];
  const int32_t e = blockIdx.x;
  const int64_t n = N * K;
  int mine = 0;
  for (int64_t slot = threadIdx.x; slot < n; slot += blockDim.x) mine += topk_idx[slot] == e;
  const int64_t count = block_sum(mine, shared);
  const bool keep_all = capacity < 0 || count <= capacity;

  Key threshold = 0;     // probability: the capacity-th largest key of this expert
  int64_t ties_kept = 0;  // how many keys equal to it are kept (the first in j order)
  if (by_gate && !keep_all && capacity > 0) {
    // Invariant: at least `capacity` keys are >= threshold (true for 0); each pass sets the
    // next bit if that still holds. The result is the largest such value: a key of rank capacity.
    for (int bit = GateKey<T>::bits - 1; bit >= 0; --bit) {
      const Key candidate = threshold | (Key(1) << bit);
      int at_least = 0;
      for (int64_t slot = threadIdx.x; slot < n; slot += blockDim.x)
        at_least += topk_idx[slot] == e && gate_key(gates[slot]) >= candidate;
      if (block_sum(at_least, shared) >= capacity) threshold = candidate;
    }
    int above = 0;
    for (int64_t slot = threadIdx.x; slot < n; slot += blockDim.x)
      above += topk_idx[slot] == e && gate_key(gates[slot]) > threshold;
    ties_kept = capacity - block_sum(above, shared);
  }

  int64_t running = 0;  // position: the expert's assignments so far; probability: its ties so far
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;  // k-major order: j = k*N + t
    int64_t slot = 0;
    bool match = false;
    Key key = 0;
    if (j < n) {
      const int64_t k = j / N, t = j - k * N;
      slot = t * K + k;
      match = topk_idx[slot] == e;
      if (match && by_gate) key = gate_key(gates[slot]);
    }
    const bool ranked = by_gate ? match && key == threshold : match;
    int total = 0;
    const int prefix = block_exclusive_count(ranked, &total);
    if (match) {
      bool keep;
      if (keep_all) keep = true;
      else if (by_gate) keep = capacity > 0 && (key > threshold || (key == threshold && running + prefix < ties_kept));
      else keep = running + prefix < capacity;
      slot_row[slot] = keep ? 0 : -1;
      slot_expert[slot] = e;
    }
    running += total;
  }
  if (threadIdx.x == 0) {
    assignments[e] = static_cast<int32_t>(count);
    counts[e] = static_cast<int32_t>(keep_all ? count : capacity);
    if (e == 0) counts[gridDim.x] = 0;
  }
}

// One block: the dropped assignments in j = k*N + t order (the position ranking), with their
// gate keys for the probability ranking; *n_dropped gets their number.
template <class T>
__global__ void plan_dropped_kernel(int32_t* dropped, gate_key_t<T>* dropped_key,
                                    int32_t* n_dropped, const int32_t* slot_row, const T* gates,
                                    int64_t N, int64_t K, bool by_gate) {
  const int64_t n = N * K;
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    int64_t slot = 0;
    bool is_dropped = false;
    if (j < n) {
      const int64_t k = j / N, t = j - k * N;
      slot = t * K + k;
      is_dropped = slot_row[slot] < 0;
    }
    int total = 0;
    const int prefix = block_exclusive_count(is_dropped, &total);
    if (is_dropped) {
      const int64_t at = running + prefix;
      dropped[at] = static_cast<int32_t>(slot);
      if (by_gate) dropped_key[at] = gate_key(gates[slot]);
    }
    running += total;
  }
  if (threadIdx.x == 0) *n_dropped = static_cast<int32_t>(running);
}

// The probability ranking of the dropped list (gate highest first, then j): entry i's rank is
// the number of entries with a larger key, plus those with an equal key earlier in the list
// (the list is in j order). One thread per entry, O(n^2) comparisons over shared-memory tiles;
// the grid covers the worst case (every assignment dropped) and blocks past the list return.
// Deterministic and exact; a sort would scale better, but the walk that follows is sequential
// anyway.
template <class Key>
__global__ void plan_order_kernel(int32_t* order, const int32_t* dropped, const Key* keys,
                                  const int32_t* n_dropped) {
  __shared__ Key tile[kOrderThreads];
  const int64_t n = *n_dropped;
  if (int64_t(blockIdx.x) * blockDim.x >= n) return;  // the whole block: no barrier is skipped
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const Key mine = i < n ? keys[i] : Key(0);
  int64_t rank = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    if (base + threadIdx.x < n) tile[threadIdx.x] = keys[base + threadIdx.x];
    __syncthreads();
    const int64_t len = min(int64_t(blockDim.x), n - base);
    if (i < n)
      for (int64_t m = 0; m < len; ++m) {
        const Key other = tile[m];
        rank += other > mine || (other == mine && base + m < i);
      }
    __syncthreads();
  }
  if (i < n) order[rank] = dropped[i];
}

// One warp walks the dropped assignments in ranking order, one at a time: each moves to the
// expert with the largest selection score (ties: lower index) that is below capacity, none of
// the token's K choices and none of the experts its other assignments run on now; if there is
// none it stays dropped. The 32 lanes scan the experts in parallel and agree on the best by a
// butterfly argmax; lane 0 applies the move. The kept counts live in shared memory (E ints).
// Cost: sequential, about (dropped assignments) x (E/32 + K) dependent steps on one SM: 0.5 to
// 1.2 us per dropped assignment on an H200 (docs/cuda.md). Latency-bound; prefetching the next
// entry's logits and loading the scores before the eligibility checks did not help.
template <class T>
__global__ void plan_reroute_kernel(int32_t* slot_row, int32_t* slot_expert, int32_t* counts,
                                    const int32_t* order, const int32_t* topk_idx,
                                    const T* logits, const T* bias, int64_t E, int64_t K,
                                    int64_t capacity) {
  extern __shared__ int32_t kept[];  // [E]
  const unsigned all = 0xffffffffu;
  const int lane = threadIdx.x;
  for (int64_t e = lane; e < E; e += 32) kept[e] = counts[e];
  __syncwarp();
  const int64_t n = counts[E + 1];
  int32_t rerouted = 0;
  for (int64_t base = 0; base < n; base += 32) {
    const int32_t my_slot = base + lane < n ? order[base + lane] : 0;  // 32 entries at a time
    const int64_t len = min(int64_t(32), n - base);
    for (int64_t q = 0; q < len; ++q) {
      const int64_t slot = __shfl_sync(all, my_slot, static_cast<int>(q)), t = slot / K;
      const int32_t* choices = topk_idx + t * K;
      const int32_t* running = slot_expert + t * K;  // lane 0 may have moved one of them
      const T* row = logits + t * E;
      int32_t best = -1;
      T best_score = T(0);
      for (int64_t e = lane; e < E; e += 32) {
        if (kept[e] >= capacity) continue;
        bool used = false;
        for (int64_t k = 0; k < K; ++k) used |= choices[k] == e || running[k] == e;
        if (used) continue;
        const T score = selection_score(row, bias, e);
        if (best < 0 || score > best_score) best = static_cast<int32_t>(e), best_score = score;
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        const int32_t other = __shfl_xor_sync(all, best, offset);
        const T other_score = __shfl_xor_sync(all, best_score, offset);
        if (other >= 0 && (best < 0 || other_score > best_score ||
                           (other_score == best_score && other < best)))
          best = other, best_score = other_score;
      }
      if (lane == 0 && best >= 0) {
        slot_expert[slot] = best;
        slot_row[slot] = 0;
        ++kept[best];
        ++rerouted;
      }
      __syncwarp();  // the move is visible to every lane before the next entry
    }
  }
  for (int64_t e = lane; e < E; e += 32) counts[e] = kept[e];
  if (lane == 0) counts[E] = rerouted;
}

// Block e: the kept assignments run by expert e (slot_expert, after reroutes) get rows
// offset_e, offset_e + 1, ... in assignment order t*K + k.
__global__ void plan_rows_kernel(int32_t* slot_row, int32_t* row_slot, const int32_t* kept,
                                 const int32_t* slot_expert, int64_t N, int64_t K) {
  const int32_t e = blockIdx.x;
  int64_t offset = 0;
  for (int32_t x = 0; x < e; ++x) offset += kept[x];
  const int64_t n = N * K;
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;  // i = t*K + k: token order
    // slot_row[i] is read only where this block owns i (slot_expert[i] == e).
    const bool match = i < n && slot_expert[i] == e && slot_row[i] >= 0;
    int total = 0;
    const int prefix = block_exclusive_count(match, &total);
    if (match) {
      const int64_t row = offset + running + prefix;
      slot_row[i] = static_cast<int32_t>(row);
      row_slot[row] = static_cast<int32_t>(i);
    }
    running += total;
  }
}

// ---- losses ---------------------------------------------------------------------------------
// One thread per token: row_sum[t] = Q_t = sum_e scores[t, e] for sigmoid scores (1 for
// softmax: q = scores), row_entropy[t] = -sum_e q log q with q = scores / Q_t (0 log 0 = 0).
template <class T>
__global__ void router_token_stats_kernel(double* row_sum, double* row_entropy, const T* scores,
                                          int64_t N, int64_t E, bool sigmoid) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* s = scores + t * E;
  double sum = 1;
  if (sigmoid) {
    sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += static_cast<double>(s[e]);
  }
  double entropy = 0;
  for (int64_t e = 0; e < E; ++e) {
    const double q = static_cast<double>(s[e]) / sum;
    if (q > 0) entropy -= q * log(q);
  }
  row_sum[t] = sum;
  row_entropy[t] = entropy;
}

// Block e < E: sums[e] = sum_t q[t, e]; block E: sum_t lse_t^2; block E+1: sum_t entropy_t.
template <class T>
__global__ void router_sums_kernel(double* sums, const T* scores, const T* lse,
                                   const double* row_sum, const double* row_entropy, int64_t N,
                                   int64_t E) {
  __shared__ double shared[32];
  const int64_t e = blockIdx.x;
  double acc = 0;
  for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
    if (e < E) {
      acc += static_cast<double>(scores[t * E + e]) / row_sum[t];
    } else if (e == E) {
      const double l = static_cast<double>(lse[t]);
      acc += l * l;
    } else {
      acc += row_entropy[t];
    }
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) sums[e] = acc;
}

// f_e = counts[e] / sum counts, 0 when there are none (the CPU's balance_fractions).
__device__ inline double balance_total(const int32_t* counts, int64_t E) {
  double total = 0;
  for (int64_t e = 0; e < E; ++e) total += counts[e];
  return total;
}

__global__ void router_losses_kernel(double* out, const double* sums,
                                     const int32_t* balance_counts, int64_t N, int64_t E) {
  if (N == 0) {
    out[0] = out[1] = out[2] = 0;
    return;
  }
  const double total = balance_total(balance_counts, E);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) {
    const double f = total > 0 ? balance_counts[e] / total : 0.0;
    aux += f * (sums[e] / static_cast<double>(N));
  }
  out[0] = static_cast<double>(E) * aux;
  out[1] = sums[E] / static_cast<double>(N);
  out[2] = sums[E + 1] / static_cast<double>(N);
}

// ---- backward -------------------------------------------------------------------------------
// c[e] = d(d_aux * aux)/dq[t, e] = d_aux * E * f_e / N, the same for every token.
__global__ void router_balance_grad_kernel(double* c, const int32_t* balance_counts, int64_t N,
                                           int64_t E, double d_aux) {
  const double total = balance_total(balance_counts, E);
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const double f = total > 0 ? balance_counts[e] / total : 0.0;
    c[e] = d_aux * static_cast<double>(E) * f / N;
  }
}

// One thread per token, as cpu::router_backward: ds (the gradient with respect to the scores)
// from aux (through q = s, or q = s / Q for sigmoid: dq/ds_j = (delta - q_j) / Q) and from the
// gates (through the top-K normalisation), then through the score function (softmax:
// s * (ds - <ds, s>); sigmoid: ds * s * (1 - s)), plus z through logsumexp (softmax(logits) * dz).
template <class T>
__global__ void router_backward_kernel(T* dlogits, const T* dgates, const T* scores, const T* lse,
                                       const T* logits, const int32_t* topk_idx, const double* c,
                                       int64_t N, int64_t E, int64_t K, bool sigmoid,
                                       bool normalize, double d_z) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* s = scores + t * E;
  const int32_t* idx = topk_idx + t * K;
  const T* g = dgates + t * K;
  double Q = 1, cq = 0;  // sigmoid: Q = sum_e s_e, cq = <c, q>
  if (sigmoid) {
    Q = 0;
    for (int64_t e = 0; e < E; ++e) Q += static_cast<double>(s[e]);
    for (int64_t e = 0; e < E; ++e) cq += c[e] * (static_cast<double>(s[e]) / Q);
  }
  double S = 0, dot_g = 0;  // normalised gates: gate_k = s_k / S, S = sum of the selected scores
  if (normalize) {
    for (int64_t k = 0; k < K; ++k) {
      S += static_cast<double>(s[idx[k]]);
      dot_g += static_cast<double>(g[k]) * static_cast<double>(s[idx[k]]);
    }
  }
  // ds_e, recomputed where needed (E is not known at compile time: no per-thread array).
  auto ds = [&](int64_t e) {
    double d = sigmoid ? (c[e] - cq) / Q : c[e];
    for (int64_t k = 0; k < K; ++k)
      if (idx[k] == e)
        d += normalize ? static_cast<double>(g[k]) / S - dot_g / (S * S)
                       : static_cast<double>(g[k]);
    return d;
  };
  const double dz = d_z * 2.0 * static_cast<double>(lse[t]) / N;
  T* out = dlogits + t * E;
  if (sigmoid) {
    for (int64_t e = 0; e < E; ++e) {
      const double se = static_cast<double>(s[e]);
      const double softmax =
          exp(static_cast<double>(logits[t * E + e]) - static_cast<double>(lse[t]));
      out[e] = static_cast<T>(ds(e) * se * (1.0 - se) + softmax * dz);
    }
  } else {
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += ds(e) * static_cast<double>(s[e]);
    for (int64_t e = 0; e < E; ++e)
      out[e] = static_cast<T>(static_cast<double>(s[e]) * (ds(e) - dot + dz));
  }
}

}  // namespace

void router_scores_topk(Context& ctx, const Tensor& scores, const Tensor& lse,
                        const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                        const Tensor& expert_bias, const RoutingRule& rule) {
  const int64_t N = logits.dim(0), E = logits.dim(1);
  if (N == 0) return;
  dispatch_wide(logits.dtype(), [&]<class T>(Tag<T>) {
    scores_topk_kernel<T><<<blocks_for(N, 128), 128, 0, ctx.stream>>>(
        scores.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
        bias_ptr<T>(expert_bias), N, E, rule.top_k, rule.score == RouterScore::sigmoid,
        rule.normalize);
  });
  check_launch(ctx, "router_scores_topk");
}

void router_plan(Context& ctx, const Tensor& slot_row, const Tensor& row_slot,
                 const Tensor& slot_expert, const Tensor& assignments_per_expert,
                 const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                 const Tensor& expert_bias, const RoutingRule& rule, int32_t* counts) {
  const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1), n = N * K;
  const unsigned experts = static_cast<unsigned>(E);
  const bool by_gate = rule.drop_policy == DropPolicy::probability;
  // capacity 0 keeps nothing, so nothing can take a reroute; dropless drops nothing.
  const bool reroute = rule.overflow == Overflow::reroute && rule.capacity > 0 && n > 0;
  dispatch_wide(gates.dtype(), [&]<class T>(Tag<T>) {
    using Key = gate_key_t<T>;
    plan_keep_kernel<T><<<experts, kPlanThreads, 0, ctx.stream>>>(
        slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(),
        assignments_per_expert.ptr<int32_t>(), counts, topk_idx.ptr<int32_t>(), gates.ptr<T>(),
        N, K, rule.capacity, by_gate);
    if (!reroute) return;
    int32_t* n_dropped = counts + E + 1;
    int32_t* dropped = static_cast<int32_t*>(ctx.scratch(kScratchC, n * sizeof(int32_t)));
    Key* keys = by_gate ? static_cast<Key*>(ctx.scratch(kScratchD, n * sizeof(Key))) : nullptr;
    plan_dropped_kernel<T><<<1, kPlanThreads, 0, ctx.stream>>>(
        dropped, keys, n_dropped, slot_row.ptr<int32_t>(), gates.ptr<T>(), N, K, by_gate);
    int32_t* order = dropped;  // position: the j order is the ranking
    if (by_gate) {
      order = static_cast<int32_t*>(ctx.scratch(kScratchE, n * sizeof(int32_t)));
      plan_order_kernel<Key><<<blocks_for(n, kOrderThreads), kOrderThreads, 0, ctx.stream>>>(
          order, dropped, keys, n_dropped);
    }
    plan_reroute_kernel<T><<<1, 32, E * sizeof(int32_t), ctx.stream>>>(
        slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(), counts, order,
        topk_idx.ptr<int32_t>(), logits.ptr<T>(), bias_ptr<T>(expert_bias), E, K, rule.capacity);
  });
  plan_rows_kernel<<<experts, kPlanThreads, 0, ctx.stream>>>(
      slot_row.ptr<int32_t>(), row_slot.ptr<int32_t>(), counts, slot_expert.ptr<int32_t>(), N, K);
  check_launch(ctx, "router_plan");
}

void router_losses(Context& ctx, const Tensor& scores, const Tensor& lse,
                   const Tensor& balance_counts, const RoutingRule& rule, double* out) {
  const int64_t N = scores.dim(0), E = scores.dim(1);
  double* sums = static_cast<double*>(ctx.scratch(kScratchA, (E + 2) * sizeof(double)));
  double* row_stats = static_cast<double*>(ctx.scratch(kScratchC, 2 * (N + 1) * sizeof(double)));
  double* row_sum = row_stats;
  double* row_entropy = row_stats + N;
  dispatch_wide(scores.dtype(), [&]<class T>(Tag<T>) {
    if (N > 0)
      router_token_stats_kernel<T><<<blocks_for(N, 128), 128, 0, ctx.stream>>>(
          row_sum, row_entropy, scores.ptr<T>(), N, E, rule.score == RouterScore::sigmoid);
    router_sums_kernel<T><<<static_cast<unsigned>(E + 2), kThreads, 0, ctx.stream>>>(
        sums, scores.ptr<T>(), lse.ptr<T>(), row_sum, row_entropy, N, E);
  });
  router_losses_kernel<<<1, 1, 0, ctx.stream>>>(out, sums, balance_counts.ptr<int32_t>(), N, E);
  check_launch(ctx, "router_losses");
}

void router_backward(Context& ctx, const Tensor& dlogits, const Tensor& dgates,
                     const Tensor& scores, const Tensor& lse, const Tensor& logits,
                     const Tensor& topk_idx, const Tensor& balance_counts, const RoutingRule& rule,
                     double d_aux, double d_z) {
  const int64_t N = scores.dim(0), E = scores.dim(1);
  if (N == 0) return;
  double* c = static_cast<double*>(ctx.scratch(kScratchA, E * sizeof(double)));
  router_balance_grad_kernel<<<1, kThreads, 0, ctx.stream>>>(c, balance_counts.ptr<int32_t>(), N,
                                                             E, d_aux);
  dispatch_wide(scores.dtype(), [&]<class T>(Tag<T>) {
    router_backward_kernel<T><<<blocks_for(N, 128), 128, 0, ctx.stream>>>(
        dlogits.ptr<T>(), dgates.ptr<T>(), scores.ptr<T>(), lse.ptr<T>(), logits.ptr<T>(),
        topk_idx.ptr<int32_t>(), c, N, E, rule.top_k, rule.score == RouterScore::sigmoid,
        rule.normalize, d_z);
  });
  check_launch(ctx, "router_backward");
}

}  // namespace sy::cuda
