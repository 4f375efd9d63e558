// AdamW and SGD on the master weights, operation by operation as the CPU reference (and torch)
// does them. This file is built with --fmad=false: without contracted multiply-adds, and with
// IEEE sqrt and division (nvcc's defaults), an f32 update is bitwise the CPU's.
#include <cmath>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

template <class T>
struct AdamScalars {
  T decay, w1, b2, w2, bc2_sqrt, eps, neg_step_size;
  bool lerp_low;
};

template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, AdamScalars<T> s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    T pi = p[i] * s.decay;
    const T gi = g[i];
    T mi = m[i];
    // torch's lerp: self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
    mi = s.lerp_low ? mi + s.w1 * (gi - mi) : gi - (gi - mi) * (T(1) - s.w1);
    const T vi = v[i] * s.b2 + s.w2 * gi * gi;
    const T denom = sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = pi + s.neg_step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

template <class T>
__global__ void sgd_kernel(T* p, const T* g, int64_t n, T lr) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] -= lr * g[i];
}

}  // namespace

void adamw_update(Context& ctx, const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                  const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                  double weight_decay, int64_t step) {
  const int64_t n = param.numel();
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  dispatch_wide(param.dtype(), [&]<class T>(Tag<T>) {
    AdamScalars<T> s;
    s.decay = static_cast<T>(1.0 - lr * weight_decay);
    s.w1 = static_cast<T>(1.0 - beta1);
    s.b2 = static_cast<T>(beta2);
    s.w2 = static_cast<T>(1.0 - beta2);
    s.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
    s.eps = static_cast<T>(eps);
    s.neg_step_size = static_cast<T>(-(lr / bc1));
    s.lerp_low = std::abs(s.w1) < T(0.5);
    adamw_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(
        param.ptr<T>(), grad.ptr<T>(), exp_avg.ptr<T>(), exp_avg_sq.ptr<T>(), n, s);
  });
  check_launch(ctx, "adamw_update");
}

void sgd_update(Context& ctx, const Tensor& param, const Tensor& grad, double lr) {
  const int64_t n = param.numel();
  if (n == 0) return;
  dispatch_wide(param.dtype(), [&]<class T>(Tag<T>) {
    sgd_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(param.ptr<T>(), grad.ptr<T>(), n,
                                                            static_cast<T>(lr));
  });
  check_launch(ctx, "sgd_update");
}

}  // namespace sy::cuda
