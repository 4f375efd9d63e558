// fill, dtype conversion (those of f32_split in split_float.cu), add (mixed dtypes), scale and
// sums of squares (in double).
#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"
#include "model/split_float.h"

namespace sy::cuda {
namespace {

template <class T>
__global__ void fill_kernel(T* x, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = value;
}

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = convert<D>(src[i]);
}

// y += alpha * x, in double when either side is double, else in float.
template <class Y, class X, class A>
__global__ void add_kernel(Y* y, const X* x, int64_t n, A alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = convert<Y>(convert<A>(y[i]) + alpha * convert<A>(x[i]));
}

// out = a + alpha * b for bf16, 8 per 16-byte access: add's residual updates (out = a = y) and
// add_into's residual sums (alpha 1). The same float expression as add_kernel, so bitwise the
// same, and add_into bitwise copy + add. Reads 2, writes 1 element per element. No __restrict__:
// out is a for add.
__global__ void add_bf16_vec(bf16* out, const bf16* a, const bf16* b, int64_t n, float alpha) {
  const int64_t n8 = n / kVec, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < n8; i += stride) {
    float av[kVec], bv[kVec];
    load8(a + i * kVec, av);
    load8(b + i * kVec, bv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) av[e] = av[e] + alpha * bv[e];
    store8(out + i * kVec, av);
  }
  const int64_t tail = n8 * kVec + first;
  if (tail < n)
    out[tail] = convert<bf16>(convert<float>(a[tail]) + alpha * convert<float>(b[tail]));
}

template <class T, class A>
__global__ void scale_kernel(T* y, int64_t n, A alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = convert<T>(convert<A>(y[i]) * alpha);
}

constexpr int kSumBlocks = 256;

// partials[b] = this block's share of sum x^2, in double. A fixed grid keeps the order fixed.
// An f32_split tensor's element i, read from its two halves.
struct SplitElements {
  const uint16_t* high;
  const uint16_t* low;
  __device__ float operator[](int64_t i) const {
    return __uint_as_float(join_float_bits(high[i], low[i]));
  }
};

// X: a T* or SplitElements.
template <class X>
__global__ void sum_squares_partial(X x, int64_t n, double* partials) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double v = convert<double>(x[i]);
    acc += v * v;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Block i: out[i] = sum of partials[i*kSumBlocks, (i+1)*kSumBlocks).
__global__ void sum_partials(const double* partials, double* out) {
  __shared__ double shared[32];
  double v = partials[blockIdx.x * kSumBlocks + threadIdx.x];
  v = block_sum(v, shared);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

}  // namespace

void fill(Context& ctx, const Tensor& x, double value) {
  if (x.dtype() == DType::f32_split) return fill_split(ctx, x, value);
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_all(x.dtype(), [&]<class T>(Tag<T>) {
    fill_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(x.ptr<T>(), n, convert<T>(value));
  });
  check_launch(ctx, "fill");
}

void convert(Context& ctx, const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == DType::f32_split || src.dtype() == DType::f32_split)
    return convert_split(ctx, dst, src);
  const int64_t n = src.numel();
  if (n == 0) return;
  if (dst.dtype() == src.dtype()) {
    SY_CUDA(ctx, "copy",
            cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice,
                            ctx.stream));
    return;
  }
  dispatch_all(dst.dtype(), [&]<class D>(Tag<D>) {
    dispatch_all(src.dtype(), [&]<class S>(Tag<S>) {
      convert_kernel<D, S><<<grid_for(n), kThreads, 0, ctx.stream>>>(dst.ptr<D>(), src.ptr<S>(), n);
    });
  });
  check_launch(ctx, "copy");
}

void add(Context& ctx, const Tensor& y, const Tensor& x, double alpha) {
  const int64_t n = y.numel();
  if (n == 0) return;
  if (y.dtype() == DType::bf16 && x.dtype() == DType::bf16 && all_aligned16(y.data(), x.data())) {
    add_bf16_vec<<<grid_for(n / kVec), kThreads, 0, ctx.stream>>>(
        y.ptr<bf16>(), y.ptr<bf16>(), x.ptr<bf16>(), n, static_cast<float>(alpha));
    check_launch(ctx, "add");
    return;
  }
  dispatch_float(y.dtype(), [&]<class Y>(Tag<Y>) {
    dispatch_float(x.dtype(), [&]<class X>(Tag<X>) {
      if constexpr (std::is_same_v<Y, double> || std::is_same_v<X, double>)
        add_kernel<Y, X, double><<<grid_for(n), kThreads, 0, ctx.stream>>>(y.ptr<Y>(), x.ptr<X>(), n, alpha);
      else
        add_kernel<Y, X, float><<<grid_for(n), kThreads, 0, ctx.stream>>>(
            y.ptr<Y>(), x.ptr<X>(), n, static_cast<float>(alpha));
    });
  });
  check_launch(ctx, "add");
}

bool add_into(Context& ctx, const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = out.numel();
  if (out.dtype() != DType::bf16 || a.dtype() != DType::bf16 || b.dtype() != DType::bf16 ||
      !all_aligned16(out.data(), a.data(), b.data()))
    return false;
  if (n == 0) return true;
  add_bf16_vec<<<grid_for(n / kVec), kThreads, 0, ctx.stream>>>(
      out.ptr<bf16>(), a.ptr<bf16>(), b.ptr<bf16>(), n, 1.0f);
  check_launch(ctx, "add_into");
  return true;
}

void scale(Context& ctx, const Tensor& y, double alpha) {
  const int64_t n = y.numel();
  if (n == 0) return;
  dispatch_float(y.dtype(), [&]<class T>(Tag<T>) {
    scale_kernel<T, acc_t<T>><<<grid_for(n), kThreads, 0, ctx.stream>>>(
        y.ptr<T>(), n, static_cast<acc_t<T>>(alpha));
  });
  check_launch(ctx, "scale");
}

void sum_squares(Context& ctx, std::span<const Tensor> xs, double* out) {
  if (xs.empty()) return;
  double* partials =
      static_cast<double*>(ctx.scratch(kScratchA, xs.size() * kSumBlocks * sizeof(double)));
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    double* const block_partials = partials + i * kSumBlocks;
    if (x.dtype() == DType::f32_split) {
      const SplitElements elements{x.ptr<uint16_t>(), x.low_half_bits()};
      sum_squares_partial<<<kSumBlocks, kThreads, 0, ctx.stream>>>(elements, x.numel(),
                                                                   block_partials);
      continue;
    }
    dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
      sum_squares_partial<<<kSumBlocks, kThreads, 0, ctx.stream>>>(x.ptr<T>(), x.numel(),
                                                                   block_partials);
    });
  }
  sum_partials<<<static_cast<unsigned>(xs.size()), kSumBlocks, 0, ctx.stream>>>(partials, out);
  check_launch(ctx, "sum_squares");
}

}  // namespace sy::cuda
