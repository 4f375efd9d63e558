// The router (SPEC.md section 2, docs/load-balancing.md) on the device, in the router's dtype
// (f32; f64 for checks): scores, top-k and gates per token; the capacity plan as a counting sort
// (dropless) or per-expert block scans, plus a chunked walk for reroutes (equal to the sequential
// one); the aux, z and entropy losses as deterministic reductions in double; the backward per
// token. The integer results (top-k, the plan) equal the CPU reference's (model/cpu/router.cpp)
// exactly: the kernels compare the same values in the same dtype and break ties the same way.
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "model/cuda/env_choice.h"
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

// ---- the per-token arithmetic, written once for both forms -----------------------------------
// The per-token kernels (scores and top-k, the losses' token statistics, the backward) come in
// two forms: a thread per token (any E), and a group of lanes per token (E <= kMaxGroupExperts).
// Both give the same bits: every sum over experts or choices runs in ascending order, and in
// those chains each product and each sum is rounded on its own (__dmul_rn, __dadd_rn), so that
// no form gets a multiply-add contracted that the other does not (the compiler decides that per
// loop, and the chains' terms are made by other lanes in the group form). The CPU's loops round
// the same way.

template <class T>
__device__ inline double softmax_numerator(T logit, T max_logit) {
  return exp(static_cast<double>(logit - max_logit));
}
template <class T>
__device__ inline T sigmoid_score(T logit) {
  return static_cast<T>(1.0 / __dadd_rn(1.0, exp(-static_cast<double>(logit))));
}
template <class T>
__device__ inline T logsumexp(T max_logit, double numerator_sum) {
  return static_cast<T>(__dadd_rn(static_cast<double>(max_logit), log(numerator_sum)));
}
// -q log q for q = s / Q, 0 where q <= 0: one token's entropy is the sum of these.
template <class T>
__device__ inline double entropy_term(T score, double Q) {
  const double q = static_cast<double>(score) / Q;
  return q > 0 ? -__dmul_rn(q, log(q)) : 0.0;
}
// The backward. ds_e, the gradient with respect to score e: from aux (c_e; through q = s / Q for
// sigmoid scores, with cq = <c, q>), plus, for a chosen expert, its gate's term.
__device__ inline double aux_score_grad(double c_e, double cq, double Q, bool sigmoid) {
  return sigmoid ? (c_e - cq) / Q : c_e;
}
// gate_k = s_k / S (normalised; dot_g = <dgates, s_chosen>) or s_k.
__device__ inline double gate_score_grad(double dgate, double S, double dot_g, bool normalize) {
  return normalize ? dgate / S - dot_g / (S * S) : dgate;
}
// Through the score function, plus z through logsumexp: softmax s (ds - <ds, s>) + s dz, as
// s (ds - dot + dz); sigmoid ds s (1 - s) + softmax(logits) dz.
template <class T>
__device__ inline T softmax_logit_grad(double ds, double s, double dot, double dz) {
  return static_cast<T>(__dmul_rn(s, __dadd_rn(ds - dot, dz)));
}
template <class T>
__device__ inline T sigmoid_logit_grad(double ds, double s, T logit, T lse, double dz) {
  const double softmax = exp(static_cast<double>(logit) - static_cast<double>(lse));
  return static_cast<T>(__dadd_rn(__dmul_rn(__dmul_rn(ds, s), 1.0 - s), __dmul_rn(softmax, dz)));
}

// ---- a thread per token ---------------------------------------------------------------------
// One token: lse, its top-K experts (idx[k]), the scores s and the K gates; row holds its E
// logits.
template <class T>
__device__ void route_token(T* s, T* lse, int32_t* idx, T* gates, const T* row, const T* bias,
                            int64_t E, int64_t K, bool sigmoid, bool normalize) {
  T m = row[0];
  for (int64_t e = 1; e < E; ++e) m = max(m, row[e]);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum = __dadd_rn(sum, softmax_numerator(row[e], m));
  *lse = logsumexp(m, sum);  // the z-loss's, whatever the score
  // Top-K of the selection scores by repeated selection: strictly larger wins, so ties go to
  // the lower index.
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
  for (int64_t e = 0; e < E; ++e)
    s[e] = sigmoid ? sigmoid_score(row[e]) : static_cast<T>(softmax_numerator(row[e], m) / sum);
  // The gates come from the unbiased scores.
  double denom = 1;
  if (normalize) {
    denom = 0;
    for (int64_t k = 0; k < K; ++k) denom = __dadd_rn(denom, static_cast<double>(s[idx[k]]));
  }
  for (int64_t k = 0; k < K; ++k) gates[k] = static_cast<T>(static_cast<double>(s[idx[k]]) / denom);
}

template <class T>
__global__ void scores_topk_kernel(T* scores, T* lse, int32_t* topk_idx, T* gates, const T* logits,
                                   const T* bias, int64_t N, int64_t E, int64_t K, bool sigmoid,
                                   bool normalize) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  route_token(scores + t * E, lse + t, topk_idx + t * K, gates + t * K, logits + t * E, bias, E, K,
              sigmoid, normalize);
}

// ---- a group of lanes per token -------------------------------------------------------------
// A thread per token runs 2E exponentials and K^2 E / 2 comparisons serially on one warp per 32
// tokens (512 warps for 16k tokens: a sixth of what the SMs' schedulers can keep busy), and its
// warp's loads touch 32 rows at once. Here G lanes take a token (G = 8, 16 or 32, the power of
// two at least E up to 32), lane l holding experts l + G i, i < EPL: the loads are coalesced, the
// exponentials spread over the lanes, the max and each top-k choice are butterfly reductions
// (largest, then lower expert: the order the serial loop gives), and the ordered f64 sums are
// E dependent adds of shuffled terms. Measured: BENCHMARKS.md, "the router's per-token kernels".
constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kGroupThreads = 256;
constexpr int64_t kMaxGroupExperts = 256;  // EPL <= 8: the registers of a lane's experts

template <int G, int EPL>
struct TokenLanes {
  static_assert(G == 8 || G == 16 || G == 32, "a token's lanes divide the warp");
  int lane;     // within the token's group
  int64_t t;    // the token
  int64_t row;  // t, or 0 for a missing token, which reads token 0 and writes nothing
  int64_t E;
  bool token;  // t < N: every lane joins each shuffle, with a token or not

  __device__ TokenLanes(int64_t N, int64_t experts) : E(experts) {
    const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    lane = static_cast<int>(threadIdx.x % G);
    t = thread / G;
    token = t < N;
    row = token ? t : 0;
  }
  __device__ int64_t expert(int i) const { return lane + static_cast<int64_t>(G) * i; }
  __device__ bool has(int i) const { return expert(i) < E; }

  template <class V>
  __device__ V across(V v, int lane_mask) const {
    return __shfl_xor_sync(kFullWarp, v, lane_mask, G);
  }
  // v[i] = values[e] of my experts, `fill` past E.
  template <class V>
  __device__ void load(V (&v)[EPL], const V* values, V fill) const {
#pragma unroll
    for (int i = 0; i < EPL; ++i) v[i] = has(i) ? values[expert(i)] : fill;
  }
  template <class V>
  __device__ void store(V* values, const V (&v)[EPL]) const {
#pragma unroll
    for (int i = 0; i < EPL; ++i)
      if (token && has(i)) values[expert(i)] = v[i];
  }
  template <class V>
  __device__ V max_of(const V (&v)[EPL]) const {
    V m = static_cast<V>(-INFINITY);
#pragma unroll
    for (int i = 0; i < EPL; ++i)
      if (has(i)) m = max(m, v[i]);
#pragma unroll
    for (int mask = G / 2; mask > 0; mask >>= 1) m = max(m, across(m, mask));
    return m;
  }
  // v_0 + v_1 + ... + v_{E-1}, added in that order and each add rounded, as the thread form adds
  // them; every lane of the group gets the sum.
  __device__ double ordered_sum(const double (&v)[EPL]) const {
    double sum = 0;
#pragma unroll
    for (int i = 0; i < EPL; ++i)
#pragma unroll
      for (int l = 0; l < G; ++l) {
        const double term = __shfl_sync(kFullWarp, v[i], l, G);
        if (l + G * i < E) sum = __dadd_rn(sum, term);
      }
    return sum;
  }
};

// The next top-K choice of a token's group: the largest selection score among the experts not
// yet chosen, the lower expert on ties (the thread form's "strictly larger wins" over e in
// order); with its unbiased score. (The two orders agree wherever the scores are not NaN.)
template <class T>
struct Choice {
  int32_t expert = -1;
  T selection = T(0), score = T(0);
  __device__ bool beaten_by(int32_t e, T other) const {
    return e >= 0 && (expert < 0 || other > selection || (other == selection && e < expert));
  }
};

template <class T, int G, int EPL>
__device__ Choice<T> next_choice(const TokenLanes<G, EPL>& my, const T (&selection)[EPL],
                                 const T (&score)[EPL], unsigned chosen) {
  Choice<T> best;
#pragma unroll
  for (int i = 0; i < EPL; ++i)
    if (my.has(i) && !(chosen >> i & 1u) && best.beaten_by(my.expert(i), selection[i]))
      best = {static_cast<int32_t>(my.expert(i)), selection[i], score[i]};
#pragma unroll
  for (int mask = G / 2; mask > 0; mask >>= 1) {
    const Choice<T> other{my.across(best.expert, mask), my.across(best.selection, mask),
                          my.across(best.score, mask)};
    if (best.beaten_by(other.expert, other.selection)) best = other;
  }
  return best;
}

template <class T, int G, int EPL>
__global__ void __launch_bounds__(kGroupThreads)
    scores_topk_group_kernel(T* scores, T* lse, int32_t* topk_idx, T* gates, const T* logits,
                             const T* bias, int64_t N, int64_t E, int64_t K, bool sigmoid,
                             bool normalize) {
  const TokenLanes<G, EPL> my(N, E);
  T logit[EPL], score[EPL], selection[EPL];
  my.load(logit, logits + my.row * E, T(0));
  const T m = my.max_of(logit);
  double numerator[EPL];
#pragma unroll
  for (int i = 0; i < EPL; ++i) numerator[i] = softmax_numerator(logit[i], m);
  const double sum = my.ordered_sum(numerator);
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    score[i] = sigmoid ? sigmoid_score(logit[i]) : static_cast<T>(numerator[i] / sum);
    selection[i] = bias && my.has(i) ? logit[i] + bias[my.expert(i)] : logit[i];
  }
  my.store(scores + my.row * E, score);
  if (my.token && my.lane == 0) lse[my.t] = logsumexp(m, sum);
  // Each choice's lane k % G writes it, with its score for now; the gates once the sum is known.
  unsigned chosen = 0;  // bit i: my expert i is taken
  double denom = normalize ? 0.0 : 1.0;
  for (int64_t k = 0; k < K; ++k) {
    const Choice<T> c = next_choice(my, selection, score, chosen);
    if (c.expert >= 0 && c.expert % G == my.lane) chosen |= 1u << (c.expert / G);
    if (normalize) denom = __dadd_rn(denom, static_cast<double>(c.score));
    if (my.token && k % G == my.lane) {
      topk_idx[my.t * K + k] = c.expert;
      gates[my.t * K + k] = c.score;
    }
  }
  if (!my.token) return;
  for (int64_t k = my.lane; k < K; k += G) {
    T& gate = gates[my.t * K + k];
    gate = static_cast<T>(static_cast<double>(gate) / denom);
  }
}

// Runs f with Lanes<G, EPL> for E experts and returns true, or returns false where the thread
// form runs: E past kMaxGroupExperts, or SY_ROUTER_TOKEN_KERNEL=thread (docs/cuda.md; the
// tests compare the two forms bit for bit).
template <int G_, int EPL_>
struct Lanes {
  static constexpr int G = G_, EPL = EPL_;
};
template <class F>
bool with_token_lanes(int64_t E, F&& f) {
  const char* form = env_choice("SY_ROUTER_TOKEN_KERNEL", {"group", "thread"});
  if (E > kMaxGroupExperts || (form && form[0] == 't')) return false;  // "thread"
  if (E <= 8) f(Lanes<8, 1>{});
  else if (E <= 16) f(Lanes<16, 1>{});
  else if (E <= 32) f(Lanes<32, 1>{});
  else if (E <= 64) f(Lanes<32, 2>{});
  else if (E <= 128) f(Lanes<32, 4>{});
  else f(Lanes<32, 8>{});
  return true;
}
unsigned group_blocks(int64_t N, int G) { return blocks_for(N * G, kGroupThreads); }

// ---- the capacity plan ----------------------------------------------------------------------
// 1. plan_keep_kernel, one block per expert: which of its assignments it keeps.
// 2. With overflow reroute: the dropped assignments in ranking order (plan_dropped_kernel, and
//    plan_order_kernel for the probability policy), then plan_preferences_kernel and
//    plan_reroute_kernel walk them in chunks, with the result of walking them one at a time.
// 3. plan_rows_kernel, one block per expert: the row numbers, grouped by slot_expert.
constexpr int kPlanThreads = 1024;
constexpr int kOrderThreads = 256;

// Exclusive sum of v over the block's threads in thread order (blockDim.x a multiple of 32);
// *total gets the block's sum. Every thread of the block must call it.
__device__ int block_exclusive_sum(int v, int* total) {
  __shared__ int warp_offsets[32];
  __shared__ int block_total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int inclusive = v;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) warp_offsets[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int count = lane < warps ? warp_offsets[lane] : 0;
    int running = count;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, running, offset);
      if (lane >= offset) running += up;
    }
    if (lane < warps) warp_offsets[lane] = running - count;
    if (lane == 31) block_total = running;
  }
  __syncthreads();
  const int prefix = warp_offsets[warp] + inclusive - v;
  *total = block_total;
  __syncthreads();  // the shared values may be overwritten by the next call
  return prefix;
}

// Exclusive count of `flag` over the block's threads in thread order; *total gets the count of
// the whole block. Every thread of the block must call it.
__device__ int block_exclusive_count(bool flag, int* total) {
  return block_exclusive_sum(flag ? 1 : 0, total);
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
// assignments[e] and counts[E + 2 + e]: before (the second for the plan's one copy to the host);
// block 0 zeroes counts[E], the reroute count.
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
    counts[gridDim.x + 2 + e] = static_cast<int32_t>(count);
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
// Deterministic and exact; O(n^2) (7e9 comparisons for 86k dropped assignments: now the larger
// part of a reroute plan at that size); a sort would scale better.
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

// ---- the reroute walk ------------------------------------------------------------------------
// Semantics (backend.h): the dropped assignments, one at a time in ranking order, each move to
// the best expert by selection score (ties: lower index) that is below capacity and not used by
// the token (none of its K choices, none of the experts its other assignments run on now);
// with none, it stays dropped. Each move changes what later ones may take, so the walk is
// sequential by definition; it was one warp doing one assignment at a time (an argmax over E per
// step, ~1 us of dependent memory latency per dropped assignment: 53-82 ms for 58k-86k drops).
// Here the same walk is taken in chunks of up to 1024 assignments by one block, with a result
// equal to the sequential one:
//
// (a) Preferences, precomputed in parallel (plan_preferences_kernel): for every token with a
//     dropped assignment, its experts other than its K choices, best selection score first (ties:
//     lower index), the order in which the sequential argmax would consider them. cursor[t]
//     marks how far into that list everything is known to be unusable for good.
// (b) Monotonicity: an expert that is full stays full (kept counts only grow), and an expert the
//     token uses stays used (a rerouted assignment never moves again). So the experts the
//     sequential walk would skip only accumulate, and for every token the position in its list
//     of the first usable expert only moves forward: the cursor.
// (c) A chunk is the next 1024 assignments. Against the state at its start (kept counts,
//     cursors), each assignment takes the (m+1)-th expert below capacity from its cursor on,
//     where m is the number of the token's own assignments earlier in the chunk (they take the
//     1st .. m-th: the same list, walked by the same rule). Claim: this is what the sequential
//     walk picks for every assignment before the first one whose pick was already full when its
//     turn came, i.e. whose expert e had kept[e] + (earlier picks of e in the chunk) >= capacity.
//     Proof, by induction over the chunk: for an assignment before that point, every expert
//     ahead of its pick in its list was full at the start of the chunk (so still full), used by
//     the token before the chunk (behind the cursor), or the pick of one of the token's m
//     earlier assignments (used now); its pick is not full at its turn, by the definition of the
//     point; and the sequential walk takes the first usable expert in list order. If there is
//     no (m+1)-th expert below capacity at the start, there is none at its turn either.
// (d) So the chunk commits its prefix up to that point (the first assignment always qualifies:
//     m = 0 and its pick was below capacity), and the next chunk starts at the first assignment
//     not committed. A chunk stops early only where an expert became full within it, which
//     happens at most once per expert: at most ceil(dropped / 1024) + E chunks.
// m and the per-expert counts within a chunk come from two bitonic sorts of 1024 keys in shared
// memory ((token, index) and (expert, index)) and a block-wide scan for the start of each run of
// equal keys: integer work in a fixed order, so the result does not depend on timing either.
// Cost per chunk: ~125 block barriers and a short walk along each list (full experts are skipped
// once per token for good by advancing the cursor), a few microseconds; the lists cost
// E^2 comparisons per token with drops (parallel over tokens) and N*E int16 of scratch.
constexpr int kWalkChunk = 1024;  // assignments per chunk = threads of the walk's block
constexpr int kWalkChunkBits = 10;
constexpr unsigned long long kNoKey = ~0ull;  // sorts after every real key
constexpr int kPrefThreads = 128;

// Block t: if token t has a dropped assignment, its preference list pref[t*E, t*E + E): the
// experts that are none of its K choices, by selection score descending and then index
// ascending (the order of the sequential argmax: strictly larger wins, ties to the lower index),
// padded with -1; cursor[t] = 0. The rank of expert e is the number of experts before it in
// that order. Scores are compared through gate_key, a total order on the bit patterns that
// agrees with the float comparison (and -0 == +0), so the ranks form a permutation even for
// non-finite logits.
template <class T>
__global__ void plan_preferences_kernel(int16_t* pref, int32_t* cursor, const int32_t* slot_row,
                                        const int32_t* topk_idx, const T* logits, const T* bias,
                                        int64_t E, int64_t K) {
  using Key = gate_key_t<T>;
  __shared__ uint32_t chosen[(12288 + 31) / 32];  // a bit per expert (E <= 12288, the caller checks)
  __shared__ int any_dropped;
  const int64_t t = blockIdx.x;
  if (threadIdx.x == 0) any_dropped = 0;
  for (int64_t w = threadIdx.x; w < (E + 31) / 32; w += blockDim.x) chosen[w] = 0;
  __syncthreads();
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const int32_t e = topk_idx[t * K + k];
    atomicOr(&chosen[e >> 5], 1u << (e & 31));  // integer: the result does not depend on order
    if (slot_row[t * K + k] < 0) any_dropped = 1;
  }
  __syncthreads();
  if (!any_dropped) return;  // the whole block: no barrier follows
  const T* row = logits + t * E;
  int16_t* list = pref + t * E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) list[e] = -1;
  if (threadIdx.x == 0) cursor[t] = 0;
  __syncthreads();  // the padding is written before the ranks overwrite part of it
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    if (chosen[e >> 5] >> (e & 31) & 1u) continue;
    const Key mine = gate_key(selection_score(row, bias, e));
    int64_t rank = 0;
    for (int64_t other = 0; other < E; ++other) {  // the same `other` in every lane: broadcast
      if (chosen[other >> 5] >> (other & 31) & 1u) continue;
      const Key key = gate_key(selection_score(row, bias, other));
      rank += key > mine || (key == mine && other < e);
    }
    list[rank] = static_cast<int16_t>(e);
  }
}

// Sorts kWalkChunk keys in shared memory ascending, one thread per key (bitonic network: a fixed
// sequence of compare-exchanges). The keys must be visible to the block on entry; on return the
// sorted keys are.
__device__ void block_sort(unsigned long long* keys) {
  const unsigned i = threadIdx.x;
  for (unsigned size = 2; size <= kWalkChunk; size <<= 1)
    for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
      const unsigned j = i ^ stride;
      if (j > i) {
        const unsigned long long a = keys[i], b = keys[j];
        if ((a > b) == ((i & size) == 0)) keys[i] = b, keys[j] = a;
      }
      __syncthreads();
    }
}

// Inclusive max-scan over the block's threads in thread order (values >= 0); every thread must
// call it. `warp_max` holds 32 ints.
__device__ int block_inclusive_max(int v, int* warp_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v = max(v, up);
  }
  if (lane == 31) warp_max[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? warp_max[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w = max(w, up);
    }
    if (lane < warps) warp_max[lane] = w;
  }
  __syncthreads();
  const int result = warp > 0 ? max(v, warp_max[warp - 1]) : v;
  __syncthreads();  // warp_max may be overwritten by the next call
  return result;
}

// The sorted keys sit in keys[0, kWalkChunk); thread i looks at sorted key i and returns how
// many keys before it share its upper bits (key >> kWalkChunkBits): its rank within its run.
__device__ int rank_in_run(const unsigned long long* keys, int* warp_max) {
  const int i = threadIdx.x;
  const unsigned long long key = keys[i];
  const bool head = i == 0 || (keys[i - 1] >> kWalkChunkBits) != (key >> kWalkChunkBits);
  return i - block_inclusive_max(head ? i : 0, warp_max);
}

// One block of kWalkChunk threads walks the dropped assignments order[0, counts[E+1]) in chunks
// (see above). kept[E] in dynamic shared memory; counts[0..E) in and out, counts[E] = the number
// rerouted.
__global__ void __launch_bounds__(kWalkChunk)
plan_reroute_kernel(int32_t* slot_row, int32_t* slot_expert, int32_t* counts, int32_t* cursor,
                    const int32_t* order, const int16_t* pref, int64_t E, int64_t K,
                    int64_t capacity) {
  extern __shared__ int32_t kept[];  // [E]
  __shared__ unsigned long long keys[kWalkChunk];
  __shared__ int32_t siblings_before[kWalkChunk];  // m of each assignment of the chunk
  __shared__ int32_t warp_scratch[32];
  __shared__ int32_t rerouted;
  const int i = threadIdx.x;
  for (int64_t e = i; e < E; e += blockDim.x) kept[e] = counts[e];
  if (i == 0) rerouted = 0;
  const int64_t n = counts[E + 1];
  __syncthreads();
  for (int64_t start = 0; start < n;) {
    const int64_t len = min(int64_t(kWalkChunk), n - start);
    const bool mine = i < len;
    const int64_t slot = mine ? order[start + i] : 0, t = slot / K;

    // m: the token's assignments earlier in the chunk (sort by (token, index)).
    keys[i] = mine ? (static_cast<unsigned long long>(t) << kWalkChunkBits) | i : kNoKey;
    __syncthreads();
    block_sort(keys);
    {
      const int m = rank_in_run(keys, warp_scratch);
      if (keys[i] != kNoKey) siblings_before[keys[i] & (kWalkChunk - 1)] = m;
    }
    __syncthreads();

    // The pick: the (m+1)-th expert below capacity from the cursor on (-1: none). `skip_to`: the
    // first position not full now, or the end of the walk; everything before it is full for good.
    int32_t pick = -1, pick_pos = -1, from = 0, skip_to = 0;
    if (mine) {
      const int16_t* list = pref + t * E;
      const int m = siblings_before[i];
      from = cursor[t];
      int found = 0, first = -1, pos = from;
      for (; pos < E; ++pos) {
        const int e = list[pos];
        if (e < 0) break;  // the end of the list
        if (kept[e] >= capacity) continue;
        if (first < 0) first = pos;
        if (found++ == m) {
          pick = e;
          pick_pos = pos;
          break;
        }
      }
      skip_to = first >= 0 ? first : pos;
    }

    // The first assignment whose pick is full at its turn (sort by (expert, index)).
    keys[i] = pick >= 0 ? (static_cast<unsigned long long>(pick) << kWalkChunkBits) | i : kNoKey;
    __syncthreads();
    block_sort(keys);
    int stop = kWalkChunk;
    {
      const int before = rank_in_run(keys, warp_scratch);  // earlier picks of the same expert
      const unsigned long long key = keys[i];
      if (key != kNoKey && kept[key >> kWalkChunkBits] + before >= capacity)
        stop = static_cast<int>(key & (kWalkChunk - 1));
    }
    stop = -block_max(-stop, warp_scratch, -kWalkChunk);  // the block's minimum
    const int64_t commit = min(int64_t(stop), len);
    if (commit < 1) __trap();  // impossible (the first assignment always commits): never spin

    // Commit the prefix. Integer atomics: their results do not depend on the order.
    if (mine) {
      if (skip_to > from) atomicMax(cursor + t, skip_to);
      if (i < commit && pick >= 0) {
        slot_expert[slot] = pick;
        slot_row[slot] = 0;
        atomicAdd(&kept[pick], 1);
        atomicAdd(&rerouted, 1);
        atomicMax(cursor + t, pick_pos + 1);
      }
    }
    __syncthreads();
    start += commit;
  }
  for (int64_t e = i; e < E; e += blockDim.x) counts[e] = kept[e];
  if (i == 0) counts[E] = rerouted;
}

// Block e: the kept assignments run by expert e (slot_expert, after reroutes) get rows
// offset_e, offset_e + 1, ... in assignment order t*K + k.
__global__ void plan_rows_kernel(int32_t* slot_row, const int32_t* kept, const int32_t* slot_expert,
                                 int64_t N, int64_t K) {
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
    if (match) slot_row[i] = static_cast<int32_t>(offset + running + prefix);
    running += total;
  }
}

// ---- the dropless plan: a counting sort of the assignments by expert ------------------------
// Dropless (capacity < 0), every assignment is kept, and expert e's rows are offset_e plus the
// ranks of its assignments in token order: what plan_keep_kernel and plan_rows_kernel compute,
// but with a block per expert each walking all N*K assignments, which at 64 experts, top-8 and
// 16k tokens took 0.23 ms (64 blocks on 132 SMs, 64 block-wide scans each). Here the assignments
// are cut into chunks of kRankChunk: rank_count_kernel counts each chunk's per expert,
// rank_offsets_kernel turns the counts into each chunk's first row per expert, and
// rank_rows_kernel ranks each chunk's assignments from there. The same integers, always.
constexpr int kRankThreads = 256;
constexpr int kRankWarps = kRankThreads / 32;
constexpr int64_t kRankChunk = 8 * kRankThreads;
constexpr int64_t kMaxRankExperts = 1024;  // one expert a thread of rank_offsets_kernel

// Block c: chunk_counts[c * E + e] = how many of chunk c's assignments go to expert e.
__global__ void __launch_bounds__(kRankThreads)
    rank_count_kernel(int32_t* chunk_counts, const int32_t* topk_idx, int64_t n, int64_t E) {
  extern __shared__ int32_t histogram[];  // [E]
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) histogram[e] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * kRankChunk;
  const int64_t end = n - begin < kRankChunk ? n : begin + kRankChunk;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
    atomicAdd(&histogram[topk_idx[i]], 1);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    chunk_counts[blockIdx.x * E + e] = histogram[e];
}

// One block of at least E threads (thread e: expert e): chunk_counts[c * E + e] becomes the row
// of chunk c's first assignment to expert e; the counts as plan_keep_kernel writes them when
// every assignment is kept, and no reroutes.
__global__ void rank_offsets_kernel(int32_t* chunk_counts, int32_t* assignments, int32_t* counts,
                                    int64_t chunks, int64_t E) {
  const int64_t e = threadIdx.x;
  int expert_total = 0;
  if (e < E)
    for (int64_t c = 0; c < chunks; ++c) {
      const int count = chunk_counts[c * E + e];
      chunk_counts[c * E + e] = expert_total;
      expert_total += count;
    }
  int all = 0;
  const int offset = block_exclusive_sum(expert_total, &all);
  if (e < E) {
    for (int64_t c = 0; c < chunks; ++c) chunk_counts[c * E + e] += offset;
    assignments[e] = counts[e] = counts[E + 2 + e] = expert_total;
  }
  if (threadIdx.x == 0) counts[E] = counts[E + 1] = 0;
}

// Block c ranks chunk c's assignments i = t*K + k in order, kRankThreads at a time: within a
// warp by matching experts, across the block's warps by their per-expert counts in shared
// memory. slot_row[i] = the row of i, slot_expert[i] = its expert.
__global__ void __launch_bounds__(kRankThreads)
    rank_rows_kernel(int32_t* slot_row, int32_t* slot_expert, const int32_t* chunk_rows,
                     const int32_t* topk_idx, int64_t n, int64_t E) {
  extern __shared__ int32_t shared[];
  int32_t* next_row = shared;         // [E]: the row of the chunk's next assignment to e
  int32_t* warp_counts = shared + E;  // [kRankWarps, E]: this round's assignments per warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    next_row[e] = chunk_rows[blockIdx.x * E + e];
  const int64_t begin = blockIdx.x * kRankChunk;
  const int64_t end = n - begin < kRankChunk ? n : begin + kRankChunk;
  for (int64_t base = begin; base < end; base += kRankThreads) {
    for (int64_t x = threadIdx.x; x < kRankWarps * E; x += blockDim.x) warp_counts[x] = 0;
    __syncthreads();  // also publishes the last round's next_row
    const int64_t i = base + threadIdx.x;
    const bool valid = i < end;
    const int32_t e = valid ? topk_idx[i] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int within = __popc(peers & ((1u << lane) - 1u));
    if (valid && within == 0) warp_counts[warp * E + e] = __popc(peers);
    __syncthreads();
    int32_t row = 0;
    bool last = false;  // the round's last assignment to e moves next_row[e]
    if (valid) {
      int before = 0, total = 0;
      for (int w = 0; w < kRankWarps; ++w) {
        const int count = warp_counts[w * E + e];
        before += w < warp ? count : 0;
        total += count;
      }
      row = next_row[e] + before + within;
      last = before + within == total - 1;
      slot_row[i] = row;
      slot_expert[i] = e;
    }
    __syncthreads();  // every read of next_row done
    if (last) next_row[e] = row + 1;
  }
}

void dropless_plan(Context& ctx, const Tensor& slot_row, const Tensor& slot_expert,
                   const Tensor& assignments_per_expert, const Tensor& topk_idx, int64_t E,
                   int32_t* counts) {
  const int64_t n = topk_idx.numel(), chunks = (n + kRankChunk - 1) / kRankChunk;
  int32_t* chunk_counts =
      static_cast<int32_t*>(ctx.scratch(kScratchC, chunks * E * sizeof(int32_t)));
  const unsigned grid = static_cast<unsigned>(chunks);
  rank_count_kernel<<<grid, kRankThreads, E * sizeof(int32_t), ctx.stream>>>(
      chunk_counts, topk_idx.ptr<int32_t>(), n, E);
  rank_offsets_kernel<<<1, static_cast<unsigned>((E + 31) / 32 * 32), 0, ctx.stream>>>(
      chunk_counts, assignments_per_expert.ptr<int32_t>(), counts, chunks, E);
  rank_rows_kernel<<<grid, kRankThreads, (1 + kRankWarps) * E * sizeof(int32_t), ctx.stream>>>(
      slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(), chunk_counts, topk_idx.ptr<int32_t>(), n,
      E);
  check_launch(ctx, "router_plan (dropless)");
}

// ---- losses ---------------------------------------------------------------------------------
// row_sum[t] = Q_t = sum_e scores[t, e] for sigmoid scores (1 for softmax: q = scores),
// row_entropy[t] = -sum_e q log q with q = scores / Q_t (0 log 0 = 0). A thread per token:
template <class T>
__global__ void router_token_stats_kernel(double* row_sum, double* row_entropy, const T* scores,
                                          int64_t N, int64_t E, bool sigmoid) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* s = scores + t * E;
  double Q = 1;
  if (sigmoid) {
    Q = 0;
    for (int64_t e = 0; e < E; ++e) Q = __dadd_rn(Q, static_cast<double>(s[e]));
  }
  double entropy = 0;
  for (int64_t e = 0; e < E; ++e) entropy = __dadd_rn(entropy, entropy_term(s[e], Q));
  row_sum[t] = Q;
  row_entropy[t] = entropy;
}

// ... and a group of lanes per token.
template <class T, int G, int EPL>
__global__ void __launch_bounds__(kGroupThreads)
    router_token_stats_group_kernel(double* row_sum, double* row_entropy, const T* scores,
                                    int64_t N, int64_t E, bool sigmoid) {
  const TokenLanes<G, EPL> my(N, E);
  T s[EPL];
  my.load(s, scores + my.row * E, T(0));
  double terms[EPL];
  double Q = 1;
  if (sigmoid) {
#pragma unroll
    for (int i = 0; i < EPL; ++i) terms[i] = static_cast<double>(s[i]);
    Q = my.ordered_sum(terms);
  }
#pragma unroll
  for (int i = 0; i < EPL; ++i) terms[i] = entropy_term(s[i], Q);
  const double entropy = my.ordered_sum(terms);
  if (my.token && my.lane == 0) {
    row_sum[my.t] = Q;
    row_entropy[my.t] = entropy;
  }
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

// As cpu::router_backward: ds (the gradient with respect to the scores) from aux (through q = s,
// or q = s / Q for sigmoid: dq/ds_j = (delta - q_j) / Q) and from the gates (through the top-K
// normalisation), then through the score function, plus z through logsumexp. A thread per token:
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
    for (int64_t e = 0; e < E; ++e) Q = __dadd_rn(Q, static_cast<double>(s[e]));
    for (int64_t e = 0; e < E; ++e)
      cq = __dadd_rn(cq, __dmul_rn(c[e], static_cast<double>(s[e]) / Q));
  }
  double S = 0, dot_g = 0;  // normalised gates: gate_k = s_k / S, S = sum of the selected scores
  if (normalize) {
    for (int64_t k = 0; k < K; ++k) {
      const double chosen = static_cast<double>(s[idx[k]]);
      S = __dadd_rn(S, chosen);
      dot_g = __dadd_rn(dot_g, __dmul_rn(static_cast<double>(g[k]), chosen));
    }
  }
  // ds_e, recomputed where needed (E is not known at compile time: no per-thread array).
  auto ds = [&](int64_t e) {
    double d = aux_score_grad(c[e], cq, Q, sigmoid);
    for (int64_t k = 0; k < K; ++k)
      if (idx[k] == e)
        d = __dadd_rn(d, gate_score_grad(static_cast<double>(g[k]), S, dot_g, normalize));
    return d;
  };
  const double dz = d_z * 2.0 * static_cast<double>(lse[t]) / N;
  T* out = dlogits + t * E;
  if (sigmoid) {
    for (int64_t e = 0; e < E; ++e)
      out[e] = sigmoid_logit_grad(ds(e), static_cast<double>(s[e]), logits[t * E + e], lse[t], dz);
  } else {
    double dot = 0;
    for (int64_t e = 0; e < E; ++e)
      dot = __dadd_rn(dot, __dmul_rn(ds(e), static_cast<double>(s[e])));
    for (int64_t e = 0; e < E; ++e)
      out[e] = softmax_logit_grad<T>(ds(e), static_cast<double>(s[e]), dot, dz);
  }
}

// ... and a group of lanes per token.
template <class T, int G, int EPL>
__global__ void __launch_bounds__(kGroupThreads)
    router_backward_group_kernel(T* dlogits, const T* dgates, const T* scores, const T* lse,
                                 const T* logits, const int32_t* topk_idx, const double* c,
                                 int64_t N, int64_t E, int64_t K, bool sigmoid, bool normalize,
                                 double d_z) {
  const TokenLanes<G, EPL> my(N, E);
  const T* s_row = scores + my.row * E;
  const int32_t* idx = topk_idx + my.row * K;
  const T* g = dgates + my.row * K;
  T s_t[EPL];
  my.load(s_t, s_row, T(0));
  double s[EPL], c_e[EPL], terms[EPL];
#pragma unroll
  for (int i = 0; i < EPL; ++i) s[i] = static_cast<double>(s_t[i]);
  my.load(c_e, c, 0.0);
  double Q = 1, cq = 0;
  if (sigmoid) {
    Q = my.ordered_sum(s);
#pragma unroll
    for (int i = 0; i < EPL; ++i) terms[i] = __dmul_rn(c_e[i], s[i] / Q);
    cq = my.ordered_sum(terms);
  }
  double S = 0, dot_g = 0;
  if (normalize) {
    for (int64_t k = 0; k < K; ++k) {
      const double chosen = static_cast<double>(s_row[idx[k]]);
      S = __dadd_rn(S, chosen);
      dot_g = __dadd_rn(dot_g, __dmul_rn(static_cast<double>(g[k]), chosen));
    }
  }
  double ds[EPL];
#pragma unroll
  for (int i = 0; i < EPL; ++i) ds[i] = aux_score_grad(c_e[i], cq, Q, sigmoid);
  for (int64_t k = 0; k < K; ++k) {
    const int32_t e = idx[k];
    const double term = gate_score_grad(static_cast<double>(g[k]), S, dot_g, normalize);
#pragma unroll
    for (int i = 0; i < EPL; ++i)
      if (my.expert(i) == e) ds[i] = __dadd_rn(ds[i], term);
  }
  const double dz = d_z * 2.0 * static_cast<double>(lse[my.row]) / N;
  T out[EPL];
  if (sigmoid) {
    T logit[EPL];
    my.load(logit, logits + my.row * E, T(0));
#pragma unroll
    for (int i = 0; i < EPL; ++i)
      out[i] = sigmoid_logit_grad(ds[i], s[i], logit[i], lse[my.row], dz);
  } else {
#pragma unroll
    for (int i = 0; i < EPL; ++i) terms[i] = __dmul_rn(ds[i], s[i]);
    const double dot = my.ordered_sum(terms);
#pragma unroll
    for (int i = 0; i < EPL; ++i) out[i] = softmax_logit_grad<T>(ds[i], s[i], dot, dz);
  }
  my.store(dlogits + my.row * E, out);
}

}  // namespace

void router_scores_topk(Context& ctx, const Tensor& scores, const Tensor& lse,
                        const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                        const Tensor& expert_bias, const RoutingRule& rule) {
  const int64_t N = logits.dim(0), E = logits.dim(1);
  if (N == 0) return;
  dispatch_wide(logits.dtype(), [&]<class T>(Tag<T>) {
    auto launch = [&](auto kernel, unsigned blocks, int threads) {
      kernel<<<blocks, threads, 0, ctx.stream>>>(
          scores.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
          bias_ptr<T>(expert_bias), N, E, rule.top_k, rule.score == RouterScore::sigmoid,
          rule.normalize);
    };
    if (!with_token_lanes(E, [&]<class L>(L) {
          launch(scores_topk_group_kernel<T, L::G, L::EPL>, group_blocks(N, L::G), kGroupThreads);
        }))
      launch(scores_topk_kernel<T>, blocks_for(N, 128), 128);
  });
  check_launch(ctx, "router_scores_topk");
}

void router_plan(Context& ctx, const Tensor& slot_row, const Tensor& slot_expert,
                 const Tensor& assignments_per_expert, const Tensor& topk_idx, const Tensor& gates,
                 const Tensor& logits, const Tensor& expert_bias, const RoutingRule& rule,
                 int32_t* counts) {
  const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1), n = N * K;
  const unsigned experts = static_cast<unsigned>(E);
  const bool by_gate = rule.drop_policy == DropPolicy::probability;
  // capacity 0 keeps nothing, so nothing can take a reroute; dropless drops nothing.
  const bool reroute = rule.overflow == Overflow::reroute && rule.capacity > 0 && n > 0;
  if (rule.capacity < 0 && n > 0 && E <= kMaxRankExperts) {
    dropless_plan(ctx, slot_row, slot_expert, assignments_per_expert, topk_idx, E, counts);
    return;
  }
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
    int16_t* pref = static_cast<int16_t*>(ctx.scratch(kScratchF, N * E * sizeof(int16_t)));
    int32_t* cursor = static_cast<int32_t*>(ctx.scratch(kScratchG, N * sizeof(int32_t)));
    plan_preferences_kernel<T><<<static_cast<unsigned>(N), kPrefThreads, 0, ctx.stream>>>(
        pref, cursor, slot_row.ptr<int32_t>(), topk_idx.ptr<int32_t>(), logits.ptr<T>(),
        bias_ptr<T>(expert_bias), E, K);
    check_launch(ctx, "router_plan (reroute preferences)");
    // kept[E] is dynamic shared memory; past 48 KiB in all (E > ~9000) the kernel must opt in.
    const size_t kept_bytes = E * sizeof(int32_t);
    if (kept_bytes > (32u << 10))
      SY_CUDA(ctx, "router_plan", cudaFuncSetAttribute(plan_reroute_kernel,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(kept_bytes)));
    plan_reroute_kernel<<<1, kWalkChunk, kept_bytes, ctx.stream>>>(
        slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(), counts, cursor, order, pref, E, K,
        rule.capacity);
    check_launch(ctx, "router_plan (reroute walk)");
  });
  plan_rows_kernel<<<experts, kPlanThreads, 0, ctx.stream>>>(slot_row.ptr<int32_t>(), counts,
                                                             slot_expert.ptr<int32_t>(), N, K);
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
    auto launch = [&](auto kernel, unsigned blocks, int threads) {
      kernel<<<blocks, threads, 0, ctx.stream>>>(row_sum, row_entropy, scores.ptr<T>(), N, E,
                                                 rule.score == RouterScore::sigmoid);
    };
    if (N > 0 && !with_token_lanes(E, [&]<class L>(L) {
          launch(router_token_stats_group_kernel<T, L::G, L::EPL>, group_blocks(N, L::G),
                 kGroupThreads);
        }))
      launch(router_token_stats_kernel<T>, blocks_for(N, 128), 128);
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
    auto launch = [&](auto kernel, unsigned blocks, int threads) {
      kernel<<<blocks, threads, 0, ctx.stream>>>(
          dlogits.ptr<T>(), dgates.ptr<T>(), scores.ptr<T>(), lse.ptr<T>(), logits.ptr<T>(),
          topk_idx.ptr<int32_t>(), c, N, E, rule.top_k, rule.score == RouterScore::sigmoid,
          rule.normalize, d_z);
    };
    if (!with_token_lanes(E, [&]<class L>(L) {
          launch(router_backward_group_kernel<T, L::G, L::EPL>, group_blocks(N, L::G),
                 kGroupThreads);
        }))
      launch(router_backward_kernel<T>, blocks_for(N, 128), 128);
  });
  check_launch(ctx, "router_backward");
}

// ---- the backend's entry points: the launches, then one host synchronisation each ----------
// The plan's launches and the copy of its counts: the kept counts and the reroute count, in one
// copy, landing in `copy` (router_plan_finish reads it).
void router_plan_start(Context& ctx, const OpCheck& check, HostCopy& copy, const Tensor& slot_row,
                       const Tensor& slot_expert, const Tensor& assignments_per_expert,
                       const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                       const Tensor& expert_bias, const RoutingRule& rule) {
  const int64_t E = logits.dim(1);
  check.fits_int(E, "E");
  // The reroute walk keeps the kept counts in shared memory (48 KiB without opt-in).
  constexpr int64_t kMaxRerouteExperts = (48 << 10) / sizeof(int32_t);
  if (rule.overflow == Overflow::reroute && E > kMaxRerouteExperts)
    check.fail("overflow reroute supports at most " + std::to_string(kMaxRerouteExperts) +
               " experts on cuda, got E = " + std::to_string(E));
  // [kept per expert (E), rerouted, the reroute walk's dropped count, assignments per expert (E)]
  int32_t* counts = static_cast<int32_t*>(ctx.scratch(kScratchB, (2 * E + 2) * sizeof(int32_t)));
  router_plan(ctx, slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
              expert_bias, rule, counts);
  copy.start(ctx, "router_plan", counts, (2 * E + 2) * sizeof(int32_t));
}

// One host synchronisation: the wait for router_plan_start's copy.
RouterPlanCounts router_plan_finish(Context& ctx, HostCopy& copy, int64_t E) {
  std::vector<int32_t> host(2 * E + 2);
  copy.finish(ctx, "router_plan", host.data());
  RouterPlanCounts result;
  result.tokens_per_expert.assign(host.begin(), host.begin() + E);
  result.rerouted = host[E];
  result.assignments_per_expert.assign(host.begin() + E + 2, host.end());
  return result;
}

void router_losses_into(Context& ctx, const Tensor& out, const Tensor& scores, const Tensor& lse,
                        const Tensor& balance_counts, const RoutingRule& rule) {
  router_losses(ctx, scores, lse, balance_counts, rule, out.ptr<double>());
}

// One host synchronisation: aux, z and the entropy, in one copy.
RouterLossValues router_losses(Context& ctx, const Tensor& scores, const Tensor& lse,
                               const Tensor& balance_counts, const RoutingRule& rule) {
  double* out = static_cast<double*>(ctx.scratch(kScratchB, 3 * sizeof(double)));
  router_losses(ctx, scores, lse, balance_counts, rule, out);
  double host[3] = {0, 0, 0};
  to_host_sync(ctx, "router_losses", host, out, sizeof(host));
  return {host[0], host[1], host[2]};
}

}  // namespace sy::cuda
