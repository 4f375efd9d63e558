// Permute (gather tokens into expert-grouped rows) and unpermute-combine (gate-weighted gather
// back), with their backward passes. Every output element is written by exactly one thread, as
// a gather, so the results do not depend on scheduling. Gates are in the statistics dtype.
//
// bf16 rows with D % 8 == 0 take the vector kernels: one warp per output row (per token for
// the combines), 16-byte loads and stores, lane owning vectors lane, lane + 32, ... The gathers
// add the K rows in k order as the scalar kernels do (bitwise the same); the dgates dot product
// of the backward adds in another order (last bits may differ; docs/cuda.md).
#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

namespace sy::cuda {
namespace {

template <class T>
__global__ void permute_rows_kernel(T* x_perm, const T* x, const int32_t* row_slot, int64_t R,
                                    int64_t D, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < R * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / D, j = i - r * D;
    x_perm[i] = x[(row_slot[r] / K) * D + j];
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

// x_perm[r] = x[row_slot[r] / K]: a copy of 16-byte vectors.
__global__ void permute_rows_vec(bf16* __restrict__ x_perm, const bf16* __restrict__ x,
                                 const int32_t* __restrict__ row_slot, int64_t R, int64_t D,
                                 int64_t K) {
  const int64_t r = warp_row();
  if (r >= R) return;
  const int lane = threadIdx.x & 31;
  const uint4* src = reinterpret_cast<const uint4*>(x + (row_slot[r] / K) * D);
  uint4* dst = reinterpret_cast<uint4*>(x_perm + r * D);
  const int64_t vecs = D / kVec;
#pragma unroll 4
  for (int64_t c = lane; c < vecs; c += 32) dst[c] = src[c];
}

// out[t] = sum over kept k of w_k * rows[slot_row[t*K+k]], w_k = gates[t*K+k] (or 1 when
// gates is null), added in k order.
template <class G>
__global__ void gather_sum_vec(bf16* __restrict__ out, const bf16* __restrict__ rows,
                               const G* __restrict__ gates, const int32_t* __restrict__ slot_row,
                               int64_t N, int64_t D, int64_t K) {
  const int64_t t = warp_row();
  if (t >= N) return;
  const int lane = threadIdx.x & 31;
  const int64_t vecs = D / kVec;
  bf16* o = out + t * D;
#pragma unroll 2
  for (int64_t c = lane; c < vecs; c += 32) {
    float acc[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[e] = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = slot_row[t * K + k];
      if (r < 0) continue;
      float y[kVec];
      load8(rows + static_cast<int64_t>(r) * D + c * kVec, y);
      if (gates) {
        const float gate = static_cast<float>(gates[t * K + k]);
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += gate * y[e];
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += y[e];
      }
    }
    store8(o + c * kVec, acc);
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

void permute_rows(Context& ctx, const Tensor& x_perm, const Tensor& x, const Tensor& row_slot,
                  int64_t K) {
  const int64_t R = x_perm.dim(0), D = x_perm.dim(1);
  if (R * D == 0) return;
  if (takes_vector_path(x.dtype(), D, {x_perm.data(), x.data()})) {
    permute_rows_vec<<<blocks_for(R, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
        x_perm.ptr<bf16>(), x.ptr<bf16>(), row_slot.ptr<int32_t>(), R, D, K);
    check_launch(ctx, "permute_rows");
    return;
  }
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    permute_rows_kernel<T><<<grid_for(R * D), kThreads, 0, ctx.stream>>>(
        x_perm.ptr<T>(), x.ptr<T>(), row_slot.ptr<int32_t>(), R, D, K);
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
