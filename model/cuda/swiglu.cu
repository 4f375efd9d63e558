// SwiGLU: out = silu(a) * b, elementwise, computed in fp32 (fp64 for f64 data).
// bf16 with 16-byte aligned pointers takes the vector kernels: 8 elements per access, the same
// per-element float expressions as the scalar kernels, so the results are bitwise the same.
// Bytes per element: forward 3 x 2 (read a, b; write out), backward 5 x 2 (6 x 2 when it also
// rebuilds the forward's product for the weight gradient).
#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

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

// d silu(a)/da = sig(a) (1 + a (1 - sig(a))). da, db may alias a, b: every input of element i
// is loaded before its outputs are stored. hidden (may be null) gets the forward's product again,
// with the forward's expression, so the bits are the same.
template <class T>
__global__ void swiglu_backward_kernel(T* da, T* db, const T* dout, const T* a, const T* b,
                                       T* hidden, int64_t n) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const A x = load(a + i), y = load(b + i), s = sigmoid(x), g = load(dout + i);
    if (hidden) hidden[i] = convert<T>(x * s * y);
    db[i] = convert<T>(g * x * s);
    da[i] = convert<T>(g * y * s * (A(1) + x * (A(1) - s)));
  }
}

// The bf16 kernels over n8 = n / 8 vectors; the n % 8 tail element-wise by the first threads.
__global__ void swiglu_forward_vec(bf16* __restrict__ out, const bf16* __restrict__ a,
                                   const bf16* __restrict__ b, int64_t n) {
  const int64_t n8 = n / kVec, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < n8; i += stride) {
    float x[kVec], y[kVec], o[kVec];
    load8(a + i * kVec, x);
    load8(b + i * kVec, y);
#pragma unroll
    for (int e = 0; e < kVec; ++e) o[e] = x[e] * sigmoid(x[e]) * y[e];
    store8(out + i * kVec, o);
  }
  const int64_t tail = n8 * kVec + first;
  if (tail < n) {
    const float x = load(a + tail);
    out[tail] = convert<bf16>(x * sigmoid(x) * load(b + tail));
  }
}

// No __restrict__ here: da and db may be a and b.
__global__ void swiglu_backward_vec(bf16* da, bf16* db, const bf16* dout, const bf16* a,
                                    const bf16* b, bf16* hidden, int64_t n) {
  const int64_t n8 = n / kVec, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < n8; i += stride) {
    float x[kVec], y[kVec], g[kVec], dx[kVec], dy[kVec], h[kVec];
    load8(a + i * kVec, x);
    load8(b + i * kVec, y);
    load8(dout + i * kVec, g);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float s = sigmoid(x[e]);
      h[e] = x[e] * s * y[e];
      dy[e] = g[e] * x[e] * s;
      dx[e] = g[e] * y[e] * s * (1.0f + x[e] * (1.0f - s));
    }
    if (hidden) store8(hidden + i * kVec, h);
    store8(db + i * kVec, dy);
    store8(da + i * kVec, dx);
  }
  const int64_t tail = n8 * kVec + first;
  if (tail < n) {
    const float x = load(a + tail), y = load(b + tail), s = sigmoid(x), g = load(dout + tail);
    if (hidden) hidden[tail] = convert<bf16>(x * s * y);
    db[tail] = convert<bf16>(g * x * s);
    da[tail] = convert<bf16>(g * y * s * (1.0f + x * (1.0f - s)));
  }
}

}  // namespace

void swiglu_forward(Context& ctx, const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  if (a.dtype() == DType::bf16 && all_aligned16(out.data(), a.data(), b.data())) {
    swiglu_forward_vec<<<grid_for(n / kVec), kThreads, 0, ctx.stream>>>(
        out.ptr<bf16>(), a.ptr<bf16>(), b.ptr<bf16>(), n);
    check_launch(ctx, "swiglu_forward");
    return;
  }
  dispatch_float(a.dtype(), [&]<class T>(Tag<T>) {
    swiglu_forward_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(out.ptr<T>(), a.ptr<T>(),
                                                                      b.ptr<T>(), n);
  });
  check_launch(ctx, "swiglu_forward");
}

void swiglu_backward(Context& ctx, const Tensor& da, const Tensor& db, const Tensor& dout,
                     const Tensor& a, const Tensor& b, const Tensor& hidden) {
  const int64_t n = a.numel();
  if (n == 0) return;
  const bool with_hidden = hidden.defined();
  if (a.dtype() == DType::bf16 &&
      all_aligned16(da.data(), db.data(), dout.data(), a.data(), b.data()) &&
      (!with_hidden || all_aligned16(hidden.data()))) {
    swiglu_backward_vec<<<grid_for(n / kVec), kThreads, 0, ctx.stream>>>(
        da.ptr<bf16>(), db.ptr<bf16>(), dout.ptr<bf16>(), a.ptr<bf16>(), b.ptr<bf16>(),
        with_hidden ? hidden.ptr<bf16>() : nullptr, n);
    check_launch(ctx, "swiglu_backward");
    return;
  }
  dispatch_float(a.dtype(), [&]<class T>(Tag<T>) {
    swiglu_backward_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(
        da.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), a.ptr<T>(), b.ptr<T>(),
        with_hidden ? hidden.ptr<T>() : nullptr, n);
  });
  check_launch(ctx, "swiglu_backward");
}

}  // namespace sy::cuda
