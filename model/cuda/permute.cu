// Permute (copy tokens into expert-grouped rows) and unpermute-combine (gate-weighted gather
// back), with their backward passes. Every output element is written by exactly one thread (the
// permute's rows are each one kept assignment's), so the results do not depend on scheduling.
// Gates are in the statistics dtype.
//
// bf16 rows with D % 8 == 0 take the vector kernels: one warp per token (per assignment for
// the combine's backward), 16-byte loads and stores, lane owning vectors lane, lane + 32, ...
// The gathers add the K rows in k order as the scalar kernels do (bitwise the same); the
// dgates dot product of the backward adds in another order (last bits may differ; docs/cuda.md).
#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

namespace sy::cuda {
namespace {

template <class T>
__global__ void permute_rows_kernel(T* x_perm, const T* x, const int32_t* slot_row, int64_t N,
                                    int64_t D, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0) x_perm[r * D + j] = x[i];
  }
}

template <class T>
__global__ void permute_rows_backward_kernel(T* dx, const T* dx_perm, const int32_t* slot_row,
                                             int64_t N, int64_t D, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    acc_t<T> acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = slot_row[t * K + k];
      if (r >= 0) acc += load(dx_perm + r * D + j);
    }
    dx[i] = convert<T>(acc);
  }
}

template <class T, class G>
__global__ void unpermute_combine_kernel(T* out, const T* y_perm, const G* gates,
                                         const int32_t* slot_row, int64_t N, int64_t D, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    acc_t<T> acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = slot_row[t * K + k];
      if (r >= 0) acc += static_cast<acc_t<T>>(gates[t * K + k]) * load(y_perm + r * D + j);
    }
    out[i] = convert<T>(acc);
  }
}

// One warp per assignment (t, k): dy_perm[row] = gate * dout[t]; dgates = <dout[t], y_perm[row]>.
template <class T, class G>
__global__ void unpermute_combine_backward_kernel(T* dy_perm, G* dgates, const T* dout,
                                                  const T* y_perm, const G* gates,
                                                  const int32_t* slot_row, int64_t N, int64_t D,
                                                  int64_t K) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t slot = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (slot >= N * K) return;
  const int64_t t = slot / K;
  const int32_t r = slot_row[slot];
  if (r < 0) {
    if (lane == 0) dgates[slot] = G(0);
    return;
  }
  const A gate = static_cast<A>(gates[slot]);
  const T* g = dout + t * D;
  const T* y = y_perm + static_cast<int64_t>(r) * D;
  T* dy = dy_perm + static_cast<int64_t>(r) * D;
  A dot = 0;
  for (int64_t j = lane; j < D; j += 32) {
    const A gj = load(g + j);
    dy[j] = convert<T>(gate * gj);
    dot += gj * load(y + j);
  }
  dot = warp_sum(dot);
  if (lane == 0) dgates[slot] = static_cast<G>(dot);
}

constexpr int kWarpsPerBlock = 8;

__device__ inline int64_t warp_row() {
  return blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
}

constexpr int kPermuteVecs = 8;  // most vectors a lane in permute_rows_vec: 2048 columns a block

// Token-major: x_perm[slot_row[t*K+k]] = x[t] for kept k. A warp reads its token's columns (VPL
// vectors a lane, from column block blockIdx.y) once, then stores them to each of the token's
// rows. (A warp a permuted row, finding its token through row_slot, read each token's row K
// times and waited on an index load before each row's: 16% slower at top-2, 29% at top-8. The
// same kernel with a loop over column blocks inside it, rather than a grid dimension, lost all
// of the gain at top-2; BENCHMARKS.md.)
template <int VPL>
__global__ void permute_rows_vec(bf16* __restrict__ x_perm, const bf16* __restrict__ x,
                                 const int32_t* __restrict__ slot_row, int64_t N, int64_t D,
                                 int64_t K) {
  const int64_t t = warp_row();
  if (t >= N) return;
  const int lane = threadIdx.x & 31;
  const int64_t vecs = D / kVec, c0 = static_cast<int64_t>(blockIdx.y) * 32 * VPL;
  const int32_t my_row = lane < K ? slot_row[t * K + lane] : -1;
  uint4 raw[VPL];
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    const int64_t c = c0 + v * 32 + lane;
    if (c < vecs) raw[v] = load_raw8(x + t * D + c * kVec);
  }
  const auto store = [&](int32_t r) {
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int64_t c = c0 + v * 32 + lane;
      if (c < vecs) *reinterpret_cast<uint4*>(x_perm + int64_t(r) * D + c * kVec) = raw[v];
    }
  };
  if (K <= 32) {  // lane k holds assignment k's row
    for (int k = 0; k < K; ++k)
      if (const int32_t r = __shfl_sync(0xffffffffu, my_row, k); r >= 0) store(r);
  } else {
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0) store(r);
  }
}

constexpr int kGatherVecs = 4;  // vectors a lane per pass of gather_sum_vec
constexpr int kGatherRows = 2;  // rows loaded together there

// out[t] = sum over kept k of w_k * rows[slot_row[t*K+k]], w_k = gates[t*K+k] (or 1 when
// gates is null), added in k order. Lane k holds assignment k's row and gate (loaded at once);
// each pass loads kGatherRows rows x kGatherVecs vectors a lane before adding them. (One row's
// vector at a time, each after its index load, was 11% slower at top-2, 18% at top-8;
// BENCHMARKS.md.)
template <class G>
__global__ void gather_sum_vec(bf16* __restrict__ out, const bf16* __restrict__ rows,
                               const G* __restrict__ gates, const int32_t* __restrict__ slot_row,
                               int64_t N, int64_t D, int64_t K) {
  constexpr int U = kGatherVecs, KB = kGatherRows;
  const int64_t t = warp_row();
  if (t >= N) return;
  const int lane = threadIdx.x & 31;
  const int64_t vecs = D / kVec;
  const int32_t* token_rows = slot_row + t * K;
  const int32_t my_row = lane < K ? token_rows[lane] : -1;
  const float my_gate = lane < K && gates ? static_cast<float>(gates[t * K + lane]) : 1.0f;
  // Assignment k's row and weight (k is the same across the warp; past 32, from memory).
  const auto row_of = [&](int64_t k) {
    const int32_t held = __shfl_sync(0xffffffffu, my_row, static_cast<int>(k & 31));
    return k >= K ? -1 : k < 32 ? held : token_rows[k];
  };
  const auto gate_of = [&](int64_t k) {
    const float held = __shfl_sync(0xffffffffu, my_gate, static_cast<int>(k & 31));
    return k < 32 || !gates ? held : static_cast<float>(gates[t * K + k]);
  };
  bf16* o = out + t * D;
  for (int64_t c0 = 0; c0 < vecs; c0 += 32 * U) {
    float acc[U][kVec];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[u][e] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      uint4 raw[KB][U];
      int32_t r[KB];
#pragma unroll
      for (int i = 0; i < KB; ++i) {
        r[i] = row_of(k0 + i);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t c = c0 + u * 32 + lane;
          if (r[i] >= 0 && c < vecs) raw[i][u] = load_raw8(rows + int64_t(r[i]) * D + c * kVec);
        }
      }
#pragma unroll
      for (int i = 0; i < KB; ++i) {
        const float gate = gate_of(k0 + i);
        if (r[i] < 0) continue;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (c0 + u * 32 + lane >= vecs) continue;
          float y[kVec];
          unpack8(raw[i][u], y);
          if (gates) {
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc[u][e] += gate * y[e];
          } else {
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc[u][e] += y[e];
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + u * 32 + lane;
      if (c < vecs) store8(o + c * kVec, acc[u]);
    }
  }
}

// unpermute_combine_backward_kernel with 16-byte accesses (one warp per assignment).
__global__ void unpermute_combine_backward_vec(bf16* __restrict__ dy_perm,
                                               float* __restrict__ dgates,
                                               const bf16* __restrict__ dout,
                                               const bf16* __restrict__ y_perm,
                                               const float* __restrict__ gates,
                                               const int32_t* __restrict__ slot_row, int64_t N,
                                               int64_t D, int64_t K) {
  const int64_t slot = warp_row();
  if (slot >= N * K) return;
  const int lane = threadIdx.x & 31;
  const int64_t t = slot / K;
  const int32_t r = slot_row[slot];
  if (r < 0) {
    if (lane == 0) dgates[slot] = 0.0f;
    return;
  }
  const float gate = gates[slot];
  const bf16* g = dout + t * D;
  const bf16* y = y_perm + static_cast<int64_t>(r) * D;
  bf16* dy = dy_perm + static_cast<int64_t>(r) * D;
  const int64_t vecs = D / kVec;
  float dot = 0;
#pragma unroll 2
  for (int64_t c = lane; c < vecs; c += 32) {
    float gv[kVec], yv[kVec], dv[kVec];
    load8(g + c * kVec, gv);
    load8(y + c * kVec, yv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      dv[e] = gate * gv[e];
      dot += gv[e] * yv[e];
    }
    store8(dy + c * kVec, dv);
  }
  dot = warp_sum(dot);
  if (lane == 0) dgates[slot] = dot;
}

bool takes_vector_path(DType dtype, int64_t D, std::initializer_list<const void*> pointers) {
  if (dtype != DType::bf16 || D % kVec != 0) return false;
  for (const void* p : pointers)
    if (!aligned16(p)) return false;
  return true;
}

}  // namespace

void permute_rows(Context& ctx, const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                  int64_t K) {
  const int64_t N = x.dim(0), D = x.dim(1);
  if (x_perm.dim(0) * D == 0) return;
  if (takes_vector_path(x.dtype(), D, {x_perm.data(), x.data()})) {
    // The fewest vectors a lane (a power of two up to kPermuteVecs) that cover the row's, and
    // column blocks of that many past it.
    const int64_t lane_vecs = (D / kVec + 31) / 32;
    int vpl = 1;
    while (vpl < kPermuteVecs && vpl < lane_vecs) vpl *= 2;
    const dim3 grid(blocks_for(N, kWarpsPerBlock),
                    static_cast<unsigned>((lane_vecs + vpl - 1) / vpl));
    const auto launch = [&](auto kernel) {
      kernel<<<grid, 32 * kWarpsPerBlock, 0, ctx.stream>>>(x_perm.ptr<bf16>(), x.ptr<bf16>(),
                                                           slot_row.ptr<int32_t>(), N, D, K);
    };
    if (vpl == 1) launch(permute_rows_vec<1>);
    else if (vpl == 2) launch(permute_rows_vec<2>);
    else if (vpl == 4) launch(permute_rows_vec<4>);
    else launch(permute_rows_vec<kPermuteVecs>);
    check_launch(ctx, "permute_rows");
    return;
  }
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    permute_rows_kernel<T><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
        x_perm.ptr<T>(), x.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
  });
  check_launch(ctx, "permute_rows");
}

void permute_rows_backward(Context& ctx, const Tensor& dx, const Tensor& dx_perm,
                           const Tensor& slot_row, int64_t K) {
  const int64_t N = dx.dim(0), D = dx.dim(1);
  if (N * D == 0) return;
  if (takes_vector_path(dx.dtype(), D, {dx.data(), dx_perm.data()})) {
    gather_sum_vec<float><<<blocks_for(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
        dx.ptr<bf16>(), dx_perm.ptr<bf16>(), nullptr, slot_row.ptr<int32_t>(), N, D, K);
    check_launch(ctx, "permute_rows_backward");
    return;
  }
  dispatch_float(dx.dtype(), [&]<class T>(Tag<T>) {
    permute_rows_backward_kernel<T><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
        dx.ptr<T>(), dx_perm.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
  });
  check_launch(ctx, "permute_rows_backward");
}

void unpermute_combine(Context& ctx, const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                       const Tensor& slot_row) {
  const int64_t N = out.dim(0), D = out.dim(1), K = gates.dim(1);
  if (N * D == 0) return;
  if (takes_vector_path(out.dtype(), D, {out.data(), y_perm.data()})) {
    gather_sum_vec<float><<<blocks_for(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
        out.ptr<bf16>(), y_perm.ptr<bf16>(), gates.ptr<float>(), slot_row.ptr<int32_t>(), N, D,
        K);
    check_launch(ctx, "unpermute_combine");
    return;
  }
  dispatch_float(out.dtype(), [&]<class T>(Tag<T>) {
    using G = stat_t<T>;
    unpermute_combine_kernel<T, G><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
        out.ptr<T>(), y_perm.ptr<T>(), gates.ptr<G>(), slot_row.ptr<int32_t>(), N, D, K);
  });
  check_launch(ctx, "unpermute_combine");
}

void unpermute_combine_backward(Context& ctx, const Tensor& dy_perm, const Tensor& dgates,
                                const Tensor& dout, const Tensor& y_perm, const Tensor& gates,
                                const Tensor& slot_row) {
  const int64_t N = dout.dim(0), D = dout.dim(1), K = gates.dim(1);
  // Every row of dy_perm is a kept assignment's (backend.h), so the kernels write all of it.
  if (N * K == 0) return;
  if (takes_vector_path(dout.dtype(), D, {dy_perm.data(), dout.data(), y_perm.data()})) {
    unpermute_combine_backward_vec<<<blocks_for(N * K, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                                     ctx.stream>>>(dy_perm.ptr<bf16>(), dgates.ptr<float>(),
                                                   dout.ptr<bf16>(), y_perm.ptr<bf16>(),
                                                   gates.ptr<float>(), slot_row.ptr<int32_t>(), N,
                                                   D, K);
    check_launch(ctx, "unpermute_combine_backward");
    return;
  }
  constexpr int kWarps = 8;
  dispatch_float(dout.dtype(), [&]<class T>(Tag<T>) {
    using G = stat_t<T>;
    unpermute_combine_backward_kernel<T, G>
        <<<blocks_for(N * K, kWarps), 32 * kWarps, 0, ctx.stream>>>(
            dy_perm.ptr<T>(), dgates.ptr<G>(), dout.ptr<T>(), y_perm.ptr<T>(), gates.ptr<G>(),
            slot_row.ptr<int32_t>(), N, D, K);
  });
  check_launch(ctx, "unpermute_combine_backward");
}

}  // namespace sy::cuda
