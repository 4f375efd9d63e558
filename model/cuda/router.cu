// The router (SPEC.md section 2) on the device, in the router's dtype (f32; f64 for checks):
// softmax, top-k and gates per token; the capacity plan as per-expert block scans; the aux and
// z losses as deterministic reductions in double; the backward per token.
#include <cmath>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

// ---- softmax, top-k, gates: one thread per token --------------------------------------------
template <class T>
__global__ void softmax_topk_kernel(T* probs, T* lse, int32_t* topk_idx, T* gates,
                                    const T* logits, int64_t N, int64_t E, int64_t K,
                                    bool normalize) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* row = logits + t * E;
  T* p = probs + t * E;
  T m = row[0];
  for (int64_t e = 1; e < E; ++e) m = max(m, row[e]);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += exp(static_cast<double>(row[e] - m));
  for (int64_t e = 0; e < E; ++e) p[e] = static_cast<T>(exp(static_cast<double>(row[e] - m)) / sum);
  lse[t] = static_cast<T>(static_cast<double>(m) + log(sum));
  // Top-K by repeated selection: strictly larger wins, so ties go to the lower index.
  int32_t* idx = topk_idx + t * K;
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool chosen = false;
      for (int64_t c = 0; c < k; ++c) chosen |= idx[c] == e;
      if (!chosen && (best < 0 || row[e] > row[best])) best = e;
    }
    idx[k] = static_cast<int32_t>(best);
  }
  double denom = 1;
  if (normalize) {
    denom = 0;
    for (int64_t k = 0; k < K; ++k) denom += static_cast<double>(p[idx[k]]);
  }
  for (int64_t k = 0; k < K; ++k)
    gates[t * K + k] = static_cast<T>(static_cast<double>(p[idx[k]]) / denom);
}

// ---- the capacity plan ----------------------------------------------------------------------
constexpr int kPlanThreads = 1024;

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

// Block e: the assignments to expert e ranked by (choice k, token t); the first `capacity` are
// kept (slot_row 0), the rest dropped (-1). kept[e], assignments[e]: counts after/before drops.
__global__ void plan_keep_kernel(int32_t* slot_row, int32_t* assignments, int32_t* kept,
                                 const int32_t* topk_idx, int64_t N, int64_t K, int64_t capacity) {
  const int32_t e = blockIdx.x;
  const int64_t n = N * K;
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;  // k-major order: j = k*N + t
    int64_t slot = 0;
    bool match = false;
    if (j < n) {
      const int64_t k = j / N, t = j - k * N;
      slot = t * K + k;
      match = topk_idx[slot] == e;
    }
    int total = 0;
    const int prefix = block_exclusive_count(match, &total);
    if (match) {
      const int64_t rank = running + prefix;
      slot_row[slot] = capacity < 0 || rank < capacity ? 0 : -1;
    }
    running += total;
  }
  if (threadIdx.x == 0) {
    assignments[e] = static_cast<int32_t>(running);
    kept[e] = static_cast<int32_t>(capacity < 0 ? running : min(running, capacity));
  }
}

// Block e: the kept assignments of expert e get rows offset_e, offset_e + 1, ... in token order.
__global__ void plan_rows_kernel(int32_t* slot_row, int32_t* row_slot, const int32_t* kept,
                                 const int32_t* topk_idx, int64_t N, int64_t K) {
  const int32_t e = blockIdx.x;
  int64_t offset = 0;
  for (int32_t x = 0; x < e; ++x) offset += kept[x];
  const int64_t n = N * K;
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;  // i = t*K + k: token order
    const bool match = i < n && topk_idx[i] == e && slot_row[i] >= 0;
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
// Block e < E: sums[e] = sum_t probs[t, e]; block E: sums[E] = sum_t lse_t^2 (double).
template <class T>
__global__ void router_sums_kernel(double* sums, const T* probs, const T* lse, int64_t N,
                                   int64_t E) {
  __shared__ double shared[32];
  const int64_t e = blockIdx.x;
  double acc = 0;
  for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
    if (e < E) {
      acc += static_cast<double>(probs[t * E + e]);
    } else {
      const double l = static_cast<double>(lse[t]);
      acc += l * l;
    }
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) sums[e] = acc;
}

__global__ void router_losses_kernel(double* out, const double* sums, const int32_t* assignments,
                                     int64_t N, int64_t E, int64_t K) {
  if (N == 0) {
    out[0] = out[1] = 0;
    return;
  }
  double aux = 0;
  for (int64_t e = 0; e < E; ++e)
    aux += (assignments[e] / static_cast<double>(K * N)) * (sums[e] / static_cast<double>(N));
  out[0] = static_cast<double>(E) * aux;
  out[1] = sums[E] / static_cast<double>(N);
}

// ---- backward: one thread per token ---------------------------------------------------------
template <class T>
__global__ void router_backward_kernel(T* dlogits, const T* dgates, const T* probs, const T* lse,
                                       const int32_t* topk_idx, const int32_t* assignments,
                                       int64_t N, int64_t E, int64_t K, bool normalize,
                                       double d_aux, double d_z) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N) return;
  const T* p = probs + t * E;
  const int32_t* idx = topk_idx + t * K;
  const T* g = dgates + t * K;
  // d(d_aux * aux)/dp[t,e] = d_aux * E * f_e / N
  const double aux_scale = d_aux * static_cast<double>(E) / static_cast<double>(K * N) / N;
  double S = 0, dot_g = 0;
  if (normalize) {
    for (int64_t k = 0; k < K; ++k) {
      S += static_cast<double>(p[idx[k]]);
      dot_g += static_cast<double>(g[k]) * static_cast<double>(p[idx[k]]);
    }
  }
  // dp_e = aux part + gate part (gate_k = p_k / S when normalised)
  double dot = 0;
  for (int64_t e = 0; e < E; ++e) dot += aux_scale * assignments[e] * static_cast<double>(p[e]);
  for (int64_t k = 0; k < K; ++k) {
    const double gate_part = normalize ? g[k] / S - dot_g / (S * S) : static_cast<double>(g[k]);
    dot += gate_part * static_cast<double>(p[idx[k]]);
  }
  const double dz = d_z * 2.0 * static_cast<double>(lse[t]) / static_cast<double>(N);
  for (int64_t e = 0; e < E; ++e) {
    double dp = aux_scale * assignments[e];
    for (int64_t k = 0; k < K; ++k)
      if (idx[k] == e) dp += normalize ? g[k] / S - dot_g / (S * S) : static_cast<double>(g[k]);
    dlogits[t * E + e] = static_cast<T>(static_cast<double>(p[e]) * (dp - dot + dz));
  }
}

}  // namespace

void router_softmax_topk(Context& ctx, const Tensor& probs, const Tensor& lse,
                         const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                         int64_t K, bool normalize) {
  const int64_t N = logits.dim(0), E = logits.dim(1);
  if (N == 0) return;
  dispatch_wide(logits.dtype(), [&]<class T>(Tag<T>) {
    softmax_topk_kernel<T><<<blocks_for(N, 128), 128, 0, ctx.stream>>>(
        probs.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
        N, E, K, normalize);
  });
  check_launch(ctx, "router_softmax_topk");
}

void router_plan(Context& ctx, const Tensor& slot_row, const Tensor& row_slot,
                 const Tensor& assignments_per_expert, const Tensor& topk_idx, int64_t E,
                 int64_t capacity, int32_t* kept) {
  const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1);
  const unsigned experts = static_cast<unsigned>(E);
  plan_keep_kernel<<<experts, kPlanThreads, 0, ctx.stream>>>(
      slot_row.ptr<int32_t>(), assignments_per_expert.ptr<int32_t>(), kept,
      topk_idx.ptr<int32_t>(), N, K, capacity);
  plan_rows_kernel<<<experts, kPlanThreads, 0, ctx.stream>>>(
      slot_row.ptr<int32_t>(), row_slot.ptr<int32_t>(), kept, topk_idx.ptr<int32_t>(), N, K);
  check_launch(ctx, "router_plan");
}

void router_losses(Context& ctx, const Tensor& probs, const Tensor& lse,
                   const Tensor& assignments_per_expert, int64_t K, double* out) {
  const int64_t N = probs.dim(0), E = probs.dim(1);
  double* sums = static_cast<double*>(ctx.scratch(kScratchA, (E + 1) * sizeof(double)));
  dispatch_wide(probs.dtype(), [&]<class T>(Tag<T>) {
    router_sums_kernel<T><<<static_cast<unsigned>(E + 1), kThreads, 0, ctx.stream>>>(
        sums, probs.ptr<T>(), lse.ptr<T>(), N, E);
  });
  router_losses_kernel<<<1, 1, 0, ctx.stream>>>(out, sums, assignments_per_expert.ptr<int32_t>(),
                                                N, E, K);
  check_launch(ctx, "router_losses");
}

void router_backward(Context& ctx, const Tensor& dlogits, const Tensor& dgates,
                     const Tensor& probs, const Tensor& lse, const Tensor& topk_idx,
                     const Tensor& assignments_per_expert, int64_t K, bool normalize,
                     double d_aux, double d_z) {
  const int64_t N = probs.dim(0), E = probs.dim(1);
  if (N == 0) return;
  dispatch_wide(probs.dtype(), [&]<class T>(Tag<T>) {
    router_backward_kernel<T><<<blocks_for(N, 128), 128, 0, ctx.stream>>>(
        dlogits.ptr<T>(), dgates.ptr<T>(), probs.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(),
        assignments_per_expert.ptr<int32_t>(), N, E, K, normalize, d_aux, d_z);
  });
  check_launch(ctx, "router_backward");
}

}  // namespace sy::cuda
