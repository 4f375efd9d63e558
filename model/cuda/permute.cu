// Permute (gather tokens into expert-grouped rows) and unpermute-combine (gate-weighted gather
// back), with their backward passes. Every output element is written by exactly one thread, as
// a gather, so the results do not depend on scheduling. Gates are in the statistics dtype.
#include "model/cuda/kernels.h"

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

}  // namespace

void permute_rows(Context& ctx, const Tensor& x_perm, const Tensor& x, const Tensor& row_slot,
                  int64_t K) {
  const int64_t R = x_perm.dim(0), D = x_perm.dim(1);
  if (R * D == 0) return;
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
  // Rows that no kept assignment names stay zero, as on the CPU.
  if (dy_perm.nbytes())
    SY_CUDA(ctx, "unpermute_combine_backward",
            cudaMemsetAsync(dy_perm.data(), 0, dy_perm.nbytes(), ctx.stream));
  if (N * K == 0) return;
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
