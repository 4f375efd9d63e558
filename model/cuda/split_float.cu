// f32_split tensors (model/split_float.h): filled, converted to and from f32, copied. These run
// when master weights are initialised, loaded, saved, gathered or checked, never in the step:
// the fused AdamW pass (adamw.cu) reads and writes the halves itself.
#include <cstring>

#include "model/cuda/kernels.h"
#include "model/split_float.h"

namespace sy::cuda {
namespace {

__global__ void split_kernel(uint16_t* __restrict__ high, uint16_t* __restrict__ low,
                             const float* __restrict__ src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const SplitHalves halves = split_float_bits(__float_as_uint(src[i]));
    high[i] = halves.high;
    low[i] = halves.low;
  }
}

__global__ void join_kernel(float* __restrict__ dst, const uint16_t* __restrict__ high,
                            const uint16_t* __restrict__ low, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __uint_as_float(join_float_bits(high[i], low[i]));
}

__global__ void fill_halves_kernel(uint16_t* high, uint16_t* low, int64_t n, SplitHalves halves) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    high[i] = halves.high;
    low[i] = halves.low;
  }
}

uint16_t* high_bits(const Tensor& x) { return x.ptr<uint16_t>(); }

void copy_device(Context& ctx, void* dst, const void* src, size_t bytes) {
  SY_CUDA(ctx, "copy", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream));
}

}  // namespace

void fill_split(Context& ctx, const Tensor& x, double value) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const float f = static_cast<float>(value);
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  fill_halves_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(high_bits(x), x.low_half_bits(), n,
                                                               split_float_bits(bits));
  check_launch(ctx, "fill");
}

void convert_split(Context& ctx, const Tensor& dst, const Tensor& src) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const DType to = dst.dtype(), from = src.dtype();
  const size_t plane_bytes = static_cast<size_t>(n) * sizeof(uint16_t);
  if (to == DType::f32_split && from == DType::f32_split) {
    copy_device(ctx, high_bits(dst), high_bits(src), plane_bytes);
    copy_device(ctx, dst.low_half_bits(), src.low_half_bits(), plane_bytes);
  } else if (to == DType::f32_split && from == DType::f32) {
    split_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(high_bits(dst), dst.low_half_bits(),
                                                           src.ptr<float>(), n);
  } else if (to == DType::f32 && from == DType::f32_split) {
    join_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(dst.ptr<float>(), high_bits(src),
                                                          src.low_half_bits(), n);
  } else if (to == DType::bf16 && from == DType::f32_split) {
    copy_device(ctx, dst.data(), high_bits(src), plane_bytes);  // the high halves are the bf16
  } else {
    fail(ctx, "copy",
         std::string("no conversion from ") + dtype_name(from) + " to " + dtype_name(to) +
             " (an f32_split tensor converts to and from f32 only, and to bf16)");
  }
  check_launch(ctx, "copy");
}

}  // namespace sy::cuda
