// Embedding lookup and its scatter-add backward (atomics: the order of additions into a row that
// several tokens share is not fixed, so runs can differ in the last bits of fp32 gradients).
#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

template <class O, class T>
__global__ void embedding_forward_kernel(O* out, const int32_t* tokens, const T* table, int64_t N,
                                         int64_t D) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    out[i] = convert<O>(table[static_cast<int64_t>(tokens[t]) * D + j]);
  }
}

template <class G, class T>
__global__ void embedding_backward_kernel(G* dtable, const T* dout, const int32_t* tokens,
                                          int64_t N, int64_t D) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    atomicAdd(dtable + static_cast<int64_t>(tokens[t]) * D + j, convert<G>(dout[i]));
  }
}

}  // namespace

void embedding_forward(Context& ctx, const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const int64_t N = tokens.numel(), D = table.dim(1);
  if (N == 0 || D == 0) return;
  dispatch_float(out.dtype(), [&]<class O>(Tag<O>) {
    dispatch_float(table.dtype(), [&]<class T>(Tag<T>) {
      embedding_forward_kernel<O, T><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
          out.ptr<O>(), tokens.ptr<int32_t>(), table.ptr<T>(), N, D);
    });
  });
  check_launch(ctx, "embedding_forward");
}

void embedding_backward(Context& ctx, const Tensor& dtable, const Tensor& dout,
                        const Tensor& tokens) {
  const int64_t N = tokens.numel(), D = dtable.dim(1);
  if (N == 0 || D == 0) return;
  dispatch_wide(dtable.dtype(), [&]<class G>(Tag<G>) {
    dispatch_float(dout.dtype(), [&]<class T>(Tag<T>) {
      embedding_backward_kernel<G, T><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
          dtable.ptr<G>(), dout.ptr<T>(), tokens.ptr<int32_t>(), N, D);
    });
  });
  check_launch(ctx, "embedding_backward");
}

}  // namespace sy::cuda
