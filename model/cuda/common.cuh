// Shared by the CUDA backend's kernel files: the per-backend context (device, rank, stream,
// cuBLAS handle, scratch), error checks that name the op, the rank and the device, dtype
// dispatch, conversions and reductions.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "model/tensor.h"

namespace sy::cuda {

using bf16 = __nv_bfloat16;

// ---- context --------------------------------------------------------------------------------
struct Context {
  int device = 0;
  int rank = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  // Allocates device memory through the backend's caching allocator.
  std::function<Tensor(const Shape&, DType)> alloc;
  // The largest block `alloc` could give now without taking memory from the driver (0: unknown).
  std::function<size_t()> largest_cached_block;
  // Grow-only scratch buffers, one per slot, reused by every op (stream order keeps reuse safe).
  std::vector<Tensor> scratch_slots;
  // Pinned host memory for small device-to-host results (counts, losses, norms).
  void* pinned = nullptr;
  size_t pinned_bytes = 0;

  void* scratch(int slot, size_t bytes);
  void* pinned_buffer(size_t bytes);
};

// Scratch slots (one op may use several at once; different ops reuse them).
enum Slot : int {
  kScratchA = 0, kScratchB, kScratchC, kScratchD, kScratchE, kScratchF, kScratchG, kNumSlots
};

// "cuda <op> (rank R, device D): <message>"
std::string where(const Context& ctx, const char* op);
[[noreturn]] void fail(const Context& ctx, const char* op, const std::string& message);
void check_cuda(cudaError_t status, const Context& ctx, const char* op, const char* what);
void check_cublas(cublasStatus_t status, const Context& ctx, const char* op, const char* what);
// After a kernel launch: a launch error (bad configuration) names the op.
void check_launch(const Context& ctx, const char* op);
// Copies `bytes` from the device to the host and waits for the stream: a host synchronisation.
void to_host_sync(Context& ctx, const char* op, void* host, const void* device, size_t bytes);
// A device-to-host copy waited for later (to_host_sync in two halves): start enqueues it into
// pinned memory of its own and records an event; finish waits for that event only, not for what
// was enqueued after the copy, and copies the bytes out. One copy in flight at a time.
class HostCopy {
 public:
  HostCopy() = default;
  HostCopy(const HostCopy&) = delete;
  HostCopy& operator=(const HostCopy&) = delete;
  ~HostCopy();
  void start(Context& ctx, const char* op, const void* device, size_t bytes);
  void finish(Context& ctx, const char* op, void* host);

 private:
  void* pinned_ = nullptr;
  size_t capacity_ = 0, bytes_ = 0;
  cudaEvent_t landed_ = nullptr;
  bool pending_ = false;
};
// The multiprocessors of ctx's device (at least 1).
int sm_count(Context& ctx, const char* op);

#define SY_CUDA(ctx, op, call) ::sy::cuda::check_cuda((call), (ctx), (op), #call)
#define SY_CUBLAS(ctx, op, call) ::sy::cuda::check_cublas((call), (ctx), (op), #call)

// ---- launch geometry ------------------------------------------------------------------------
constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 16384 ? 16384 : blocks));
}

// Exactly enough blocks for n threads (kernels without a grid-stride loop).
inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// ---- dtype dispatch -------------------------------------------------------------------------
template <class T>
struct Tag {
  using type = T;
};

template <class F>
decltype(auto) dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(Tag<float>{});
    case DType::f64: return f(Tag<double>{});
    case DType::bf16: return f(Tag<bf16>{});
    default: throw std::runtime_error("cuda backend: expected a float dtype");
  }
}

template <class F>
decltype(auto) dispatch_all(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(Tag<float>{});
    case DType::f64: return f(Tag<double>{});
    case DType::bf16: return f(Tag<bf16>{});
    case DType::i32: return f(Tag<int32_t>{});
    case DType::f32_split:
      break;  // two planes, no element type (split_float.cu)
  }
  throw std::runtime_error(std::string("cuda backend: no element type for ") + dtype_name(dtype));
}

// f32 or f64 only (router, optimizer).
template <class F>
decltype(auto) dispatch_wide(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(Tag<float>{});
    case DType::f64: return f(Tag<double>{});
    default: throw std::runtime_error("cuda backend: expected f32 or f64");
  }
}

// Accumulation type: double for double, float otherwise. Statistics type: float for bf16.
template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class T> using acc_t = typename AccOf<T>::type;
template <class T> struct StatOf { using type = T; };
template <> struct StatOf<bf16> { using type = float; };
template <class T> using stat_t = typename StatOf<T>::type;

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }

// ---- conversions ----------------------------------------------------------------------------
template <class D, class S>
__host__ __device__ inline D convert(S s) {
  if constexpr (std::is_same_v<D, S>) {
    return s;
  } else if constexpr (std::is_same_v<S, bf16>) {
    return static_cast<D>(__bfloat162float(s));
  } else if constexpr (std::is_same_v<D, bf16>) {
    if constexpr (std::is_same_v<S, double>) return __double2bfloat16(s);
    else return __float2bfloat16(static_cast<float>(s));
  } else {
    return static_cast<D>(s);
  }
}

// x as a T holds it, back in f32: unchanged for f32, rounded to nearest even for bf16 (what a
// bf16 store of x keeps).
template <class T>
__host__ __device__ inline float stored_as(float x) {
  return convert<float>(convert<T>(x));
}

template <class T>
__host__ __device__ inline acc_t<T> load(const T* p) {
  return convert<acc_t<T>>(*p);
}

// ---- reductions -----------------------------------------------------------------------------
template <class A>
__device__ inline A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class A>
__device__ inline A warp_max(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 values of A. Deterministic for a fixed block size.
template <class A>
__device__ inline A block_sum(A v, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = lane < warps ? shared[lane] : A(0);
  return warp_sum(total);
}

template <class A>
__device__ inline A block_max(A v, A* shared, A lowest) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = lane < warps ? shared[lane] : lowest;
  return warp_max(total);
}

// sum over c in [0, count), in that order, of values[c * stride]: the second pass of the
// deterministic column sums (per-chunk partials, then the chunks in order). kAhead loads are
// issued before their adds; one at a time, each chunk was a round trip to the L2.
template <int kAhead, class A>
__device__ inline A sum_in_order(const A* values, int64_t count, int64_t stride) {
  A sum = 0;
  int64_t c = 0;
  for (; c + kAhead <= count; c += kAhead) {
    A part[kAhead];
#pragma unroll
    for (int k = 0; k < kAhead; ++k) part[k] = values[(c + k) * stride];
#pragma unroll
    for (int k = 0; k < kAhead; ++k) sum += part[k];
  }
  for (; c < count; ++c) sum += values[c * stride];
  return sum;
}

}  // namespace sy::cuda
