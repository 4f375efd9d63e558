// Cross-entropy over one chunk of logits: one block per row (max, sum of exponentials, loss),
// and in training dlogits = (softmax - onehot) * grad_scale written over the logits.
#include <cmath>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

__device__ inline float exp_acc(float x) { return expf(x); }
__device__ inline double exp_acc(double x) { return exp(x); }

template <class T, class L>
__global__ void cross_entropy_kernel(L* losses, T* logits, const int32_t* targets, int64_t V,
                                     bool compute_grad, acc_t<T> grad_scale) {
  using A = acc_t<T>;
  __shared__ A shared[32];
  const int64_t row = blockIdx.x;
  T* r = logits + row * V;
  const int64_t target = targets[row];
  A m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = max(m, load(r + j));
  m = block_max(m, shared, A(-INFINITY));
  const A target_logit = load(r + target);  // read by every thread before any writes
  A s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += exp_acc(load(r + j) - m);
  s = block_sum(s, shared);
  if (threadIdx.x == 0)
    losses[row] = static_cast<L>(static_cast<double>(m) + log(static_cast<double>(s)) -
                                 static_cast<double>(target_logit));
  if (!compute_grad) return;
  const A f = grad_scale / s;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    A v = exp_acc(load(r + j) - m) * f;
    if (j == target) v -= grad_scale;
    r[j] = convert<T>(v);
  }
}

}  // namespace

void cross_entropy(Context& ctx, const Tensor& losses, const Tensor& logits,
                   const Tensor& targets, bool compute_grad, double grad_scale) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  if (N == 0) return;
  dispatch_float(logits.dtype(), [&]<class T>(Tag<T>) {
    using L = stat_t<T>;
    cross_entropy_kernel<T, L><<<static_cast<unsigned>(N), kThreads, 0, ctx.stream>>>(
        losses.ptr<L>(), logits.ptr<T>(), targets.ptr<int32_t>(), V, compute_grad,
        static_cast<acc_t<T>>(grad_scale));
  });
  check_launch(ctx, "cross_entropy");
}

}  // namespace sy::cuda
