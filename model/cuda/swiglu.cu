// SwiGLU: out = silu(a) * b, elementwise, computed in fp32 (fp64 for f64 data).
#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

__device__ inline float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }
__device__ inline double sigmoid(double a) { return 1.0 / (1.0 + exp(-a)); }

template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t<T> x = load(a + i);
    out[i] = convert<T>(x * sigmoid(x) * load(b + i));
  }
}

// d silu(a)/da = sig(a) (1 + a (1 - sig(a))).
template <class T>
__global__ void swiglu_backward_kernel(T* da, T* db, const T* dout, const T* a, const T* b,
                                       int64_t n) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const A x = load(a + i), s = sigmoid(x), g = load(dout + i);
    db[i] = convert<T>(g * x * s);
    da[i] = convert<T>(g * load(b + i) * s * (A(1) + x * (A(1) - s)));
  }
}

}  // namespace

void swiglu_forward(Context& ctx, const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  dispatch_float(a.dtype(), [&]<class T>(Tag<T>) {
    swiglu_forward_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(out.ptr<T>(), a.ptr<T>(),
                                                                      b.ptr<T>(), n);
  });
  check_launch(ctx, "swiglu_forward");
}

void swiglu_backward(Context& ctx, const Tensor& da, const Tensor& db, const Tensor& dout,
                     const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  dispatch_float(a.dtype(), [&]<class T>(Tag<T>) {
    swiglu_backward_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(
        da.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), a.ptr<T>(), b.ptr<T>(), n);
  });
  check_launch(ctx, "swiglu_backward");
}

}  // namespace sy::cuda
