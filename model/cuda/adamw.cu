// AdamW and SGD on the master weights, operation by operation as the CPU reference (and torch)
// does them, per tensor and as one multi-tensor pass. This file is built with --fmad=false:
// without contracted multiply-adds, and with IEEE sqrt and division (nvcc's defaults), an f32
// update is bitwise the CPU's.
//
// The multi-tensor pass (Backend::grad_norm_squares, Backend::fused_adamw_step): every tensor is
// cut into chunks of kChunk elements and each chunk is one block of one launch, so that ~200
// tensors cost one launch instead of ~1000. A chunk reads its arrays in 16-byte vectors when all
// of the tensor's pointers allow it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

#include "model/cuda/env_choice.h"
#include "model/cuda/kernels.h"
#include "model/split_float.h"

namespace sy::cuda {
namespace {

template <class T>
struct AdamScalars {
  T decay, w1, b2, w2, bc2_sqrt, eps, neg_step_size;
  bool lerp_low;
};

// The per-step constants, rounded to T once on the host as the CPU reference rounds them.
template <class T>
AdamScalars<T> adam_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                            int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamScalars<T> s;
  s.decay = static_cast<T>(1.0 - lr * weight_decay);
  s.w1 = static_cast<T>(1.0 - beta1);
  s.b2 = static_cast<T>(beta2);
  s.w2 = static_cast<T>(1.0 - beta2);
  s.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  s.eps = static_cast<T>(eps);
  s.neg_step_size = static_cast<T>(-(lr / bc1));
  s.lerp_low = std::abs(s.w1) < T(0.5);
  return s;
}

// One element of AdamW; the single definition that the per-tensor and the fused kernels share.
template <class T>
__device__ inline void adamw_element(T& p, T g, T& m, T& v, const AdamScalars<T>& s) {
  const T decayed = p * s.decay;
  // torch's lerp: self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
  m = s.lerp_low ? m + s.w1 * (g - m) : g - (g - m) * (T(1) - s.w1);
  v = v * s.b2 + s.w2 * g * g;
  const T denom = sqrt(v) / s.bc2_sqrt + s.eps;
  p = decayed + s.neg_step_size * m / denom;
}

template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, AdamScalars<T> s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    T pi = p[i], mi = m[i], vi = v[i];
    adamw_element(pi, g[i], mi, vi, s);
    p[i] = pi;
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

// ---- the multi-tensor pass -----------------------------------------------------------------
constexpr int64_t kChunk = int64_t{1} << 16;  // elements per block; a multiple of 4 (vectors)
constexpr int kPassThreads = 256;             // the norm's blocks
// The update's blocks: 1024 threads, one vector each in flight, ran the pass 1.7-2% faster than
// 256 on one H100 in two calls (2026-12-06, bench_optimizer --layout training); two or four
// vectors a thread (256 threads, or 512 x 2) ran 7-13% slower. BENCHMARKS.md.
constexpr int kUpdateThreads = 1024;
// The update's blocks a chunk (SY_ADAMW_PARTS), each taking kChunk / parts elements: 4 ran the
// pass 1% faster than 1 on one H100, 16 (one vector a thread) 6% slower (2026-12-06,
// bench_optimizer --layout training; BENCHMARKS.md, "AdamW's access shape and blocks").
constexpr int kMaxParts = int(kChunk / (4 * kUpdateThreads));
constexpr int kDefaultParts = 4;
constexpr int kReduceThreads = 1024;

enum TensorFlags : uint32_t {
  kDecay = 1,
  kExpert = 2,
  kVector = 4,
  kPartials = 8,
  kSplit = 16,
  kGradBf16 = 32,
  kRoundGrad = 64
};

// One tensor as the kernels see it (device memory).
struct TensorSlot {
  float* value;  // null for an f32_split value: compute and value_low hold it
  void* grad;    // f32, or bf16 (kGradBf16)
  const double* partials;  // kPartials: the grad's squares, precomputed (MultiTensor::partials)
  float* exp_avg;
  float* exp_avg_sq;
  bf16* compute;  // null: no separate compute copy
  uint16_t* value_low;  // f32_split: the low halves (compute holds the high ones)
  int64_t numel;
  uint32_t flags;
};

// Block b of a pass works on chunk `chunk` of tensor `tensor`: elements [chunk * kChunk, +kChunk).
struct ChunkSlot {
  int32_t tensor;
  int32_t chunk;
};

// The gradient as f32, one element or four (i a multiple of 4, kVector), whatever its dtype (an
// f32 one rounded to bf16 first where kRoundGrad: Param::bf16_grad); stored back in its dtype
// (bf16 rounded to nearest even).
__device__ inline float load_grad(const TensorSlot& t, int64_t i) {
  if (t.flags & kGradBf16) return __bfloat162float(static_cast<const bf16*>(t.grad)[i]);
  const float g = static_cast<const float*>(t.grad)[i];
  return (t.flags & kRoundGrad) ? stored_as<bf16>(g) : g;
}
__device__ inline float4 load_grad_vector(const TensorSlot& t, int64_t i) {
  if (!(t.flags & kGradBf16)) {
    const float4 g = __ldcs(reinterpret_cast<const float4*>(t.grad) + i / 4);
    if (!(t.flags & kRoundGrad)) return g;
    return make_float4(stored_as<bf16>(g.x), stored_as<bf16>(g.y), stored_as<bf16>(g.z),
                       stored_as<bf16>(g.w));
  }
  const uint2 packed = __ldcs(reinterpret_cast<const uint2*>(static_cast<const bf16*>(t.grad) + i));
  __nv_bfloat162 lo, hi;
  std::memcpy(&lo, &packed.x, sizeof lo);
  std::memcpy(&hi, &packed.y, sizeof hi);
  const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ inline void store_grad(const TensorSlot& t, int64_t i, float g) {
  if (t.flags & kGradBf16) static_cast<bf16*>(t.grad)[i] = __float2bfloat16(g);
  else static_cast<float*>(t.grad)[i] = g;
}
__device__ inline uint2 pack_bf16_vector(float4 x) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y);
  const __nv_bfloat162 hi = __floats2bfloat162_rn(x.z, x.w);
  uint2 packed;
  std::memcpy(&packed.x, &lo, sizeof lo);
  std::memcpy(&packed.y, &hi, sizeof hi);
  return packed;
}
__device__ inline void store_grad_vector(const TensorSlot& t, int64_t i, float4 g) {
  if (t.flags & kGradBf16)
    __stcs(reinterpret_cast<uint2*>(static_cast<bf16*>(t.grad) + i), pack_bf16_vector(g));
  else __stcs(reinterpret_cast<float4*>(t.grad) + i / 4, g);
}

// partials[b] = sum of g^2 over block b's chunk, in double. The order within a chunk is fixed by
// the block size and the chunk layout, so the result repeats bit for bit.
__global__ void chunk_squares_kernel(const TensorSlot* __restrict__ tensors,
                                     const ChunkSlot* __restrict__ chunks, double* partials) {
  __shared__ double shared[32];
  const ChunkSlot c = chunks[blockIdx.x];
  const TensorSlot& t = tensors[c.tensor];
  const int64_t begin = int64_t(c.chunk) * kChunk, end = min(t.numel, begin + kChunk);
  int64_t scalar_begin = begin;
  double acc = 0;
  if (t.flags & kPartials) {
    for (int64_t i = begin + threadIdx.x; i < end; i += kPassThreads) acc += t.partials[i];
    scalar_begin = end;
  } else if (t.flags & kVector) {
    scalar_begin = begin + (end - begin) / 4 * 4;
    for (int64_t i = begin + 4 * int64_t(threadIdx.x); i < scalar_begin; i += 4 * kPassThreads) {
      const float4 g = load_grad_vector(t, i);
      acc += double(g.x) * double(g.x);
      acc += double(g.y) * double(g.y);
      acc += double(g.z) * double(g.z);
      acc += double(g.w) * double(g.w);
    }
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += kPassThreads) {
    const double g = load_grad(t, i);
    acc += g * g;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// out[0] = sum of the partials of non-expert chunks, out[1] = of expert chunks; one block, each
// thread summing a fixed stride of chunks in order, then a fixed block sum.
__global__ void sum_chunk_squares_kernel(const TensorSlot* __restrict__ tensors,
                                         const ChunkSlot* __restrict__ chunks,
                                         const double* partials, int64_t num_chunks, double* out) {
  __shared__ double shared[32];
  double shared_sum = 0, expert_sum = 0;
  for (int64_t i = threadIdx.x; i < num_chunks; i += kReduceThreads) {
    if (tensors[chunks[i].tensor].flags & kExpert) expert_sum += partials[i];
    else shared_sum += partials[i];
  }
  shared_sum = block_sum(shared_sum, shared);
  expert_sum = block_sum(expert_sum, shared);
  if (threadIdx.x == 0) {
    out[0] = shared_sum;
    out[1] = expert_sum;
  }
}

struct AdamPass {
  AdamScalars<float> decayed, undecayed;  // for Param::decay true / false
  float grad_scale;
  bool scale_grads;  // grad_scale != 1
  bool zero_grads;
  bool write_grads;  // zeroed, or scaled and kept (not when the caller discards them)
};

// The value as f32: a separate f32 array, or (kSplit) an f32_split one's two halves.
__device__ inline float load_value(const TensorSlot& t, int64_t i) {
  if (!(t.flags & kSplit)) return t.value[i];
  return __uint_as_float(
      join_float_bits(reinterpret_cast<const uint16_t*>(t.compute)[i], t.value_low[i]));
}
__device__ inline void store_value(const TensorSlot& t, int64_t i, float p) {
  if (t.flags & kSplit) {
    const SplitHalves halves = split_float_bits(__float_as_uint(p));
    reinterpret_cast<uint16_t*>(t.compute)[i] = halves.high;
    t.value_low[i] = halves.low;
    return;
  }
  t.value[i] = p;
  if (t.compute) t.compute[i] = __float2bfloat16(p);
}

// Four 16-bit halves in one 8-byte access, and back.
__device__ inline uint2 pack_halves(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return make_uint2(a | (b << 16), c | (d << 16));
}
__device__ inline float4 join_vector(uint2 high, uint2 low) {
  return make_float4(__uint_as_float(join_float_bits(high.x & 0xFFFFu, low.x & 0xFFFFu)),
                     __uint_as_float(join_float_bits(high.x >> 16, low.x >> 16)),
                     __uint_as_float(join_float_bits(high.y & 0xFFFFu, low.y & 0xFFFFu)),
                     __uint_as_float(join_float_bits(high.y >> 16, low.y >> 16)));
}

// One float4 of the vector path: loaded, updated, stored (a separate compute copy rounded to
// nearest even, as convert<bf16> does; an f32_split value's halves as split_float_bits makes
// them).
struct AdamVector {
  float4 p, g, m, v;
};
__device__ inline AdamVector load_vector(const TensorSlot& t, int64_t i) {
  // Streaming loads and stores (.cs): every byte is touched once, keep it out of the way.
  const float4 p = (t.flags & kSplit)
                       ? join_vector(__ldcs(reinterpret_cast<const uint2*>(t.compute + i)),
                                     __ldcs(reinterpret_cast<const uint2*>(t.value_low + i)))
                       : __ldcs(reinterpret_cast<const float4*>(t.value + i));
  return {p, load_grad_vector(t, i), __ldcs(reinterpret_cast<const float4*>(t.exp_avg + i)),
          __ldcs(reinterpret_cast<const float4*>(t.exp_avg_sq + i))};
}
__device__ inline void store_split_vector(const TensorSlot& t, int64_t i, float4 p) {
  const SplitHalves a = split_float_bits(__float_as_uint(p.x));
  const SplitHalves b = split_float_bits(__float_as_uint(p.y));
  const SplitHalves c = split_float_bits(__float_as_uint(p.z));
  const SplitHalves d = split_float_bits(__float_as_uint(p.w));
  __stcs(reinterpret_cast<uint2*>(t.compute + i), pack_halves(a.high, b.high, c.high, d.high));
  __stcs(reinterpret_cast<uint2*>(t.value_low + i), pack_halves(a.low, b.low, c.low, d.low));
}
// store_value for four values: an f32_split value's halves, or the f32 value and its separate
// compute copy (if any).
__device__ inline void store_value_vector(const TensorSlot& t, int64_t i, float4 p) {
  if (t.flags & kSplit) return store_split_vector(t, i, p);
  __stcs(reinterpret_cast<float4*>(t.value + i), p);
  if (t.compute) __stcs(reinterpret_cast<uint2*>(t.compute + i), pack_bf16_vector(p));
}
__device__ inline void update_vector(const TensorSlot& t, int64_t i, AdamVector x,
                                     const AdamScalars<float>& s, const AdamPass& a) {
  if (a.scale_grads) {
    x.g.x = x.g.x * a.grad_scale;
    x.g.y = x.g.y * a.grad_scale;
    x.g.z = x.g.z * a.grad_scale;
    x.g.w = x.g.w * a.grad_scale;
  }
  adamw_element(x.p.x, x.g.x, x.m.x, x.v.x, s);
  adamw_element(x.p.y, x.g.y, x.m.y, x.v.y, s);
  adamw_element(x.p.z, x.g.z, x.m.z, x.v.z, s);
  adamw_element(x.p.w, x.g.w, x.m.w, x.v.w, s);
  __stcs(reinterpret_cast<float4*>(t.exp_avg + i), x.m);
  __stcs(reinterpret_cast<float4*>(t.exp_avg_sq + i), x.v);
  store_value_vector(t, i, x.p);
  if (a.write_grads) store_grad_vector(t, i, a.zero_grads ? make_float4(0.f, 0.f, 0.f, 0.f) : x.g);
}

// grad *= scale (as Backend::scale does it in f32), then AdamW, then the bf16 copy; the grad is
// written back only when asked (zeroed) or scaled and kept (a pass that keeps grads keeps them
// clipped; one that discards them writes nothing). Elements [offset, offset + size) of chunk c (cut
// at the tensor's end; offset a multiple of 4), by kThreads threads of one block, kUnroll vectors a
// thread in flight at once (loads issued before any update).
template <int kThreads, int kUnroll>
__device__ void fused_adamw_chunk(const TensorSlot* __restrict__ tensors, const ChunkSlot c,
                                  int64_t offset, int64_t size, const AdamPass& a) {
  const TensorSlot t = tensors[c.tensor];
  const AdamScalars<float> s = (t.flags & kDecay) ? a.decayed : a.undecayed;
  const int64_t begin = int64_t(c.chunk) * kChunk + offset, end = min(t.numel, begin + size);
  if (begin >= end) return;

  int64_t scalar_begin = begin;
  if (t.flags & kVector) {
    scalar_begin = begin + (end - begin) / 4 * 4;
    constexpr int64_t kStride = 4 * int64_t{kThreads};
    for (int64_t i = begin + 4 * int64_t(threadIdx.x); i < scalar_begin; i += kUnroll * kStride) {
      AdamVector x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (i + u * kStride < scalar_begin) x[u] = load_vector(t, i + u * kStride);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (i + u * kStride < scalar_begin) update_vector(t, i + u * kStride, x[u], s, a);
    }
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += kThreads) {
    float p = load_value(t, i), g = load_grad(t, i), m = t.exp_avg[i], v = t.exp_avg_sq[i];
    if (a.scale_grads) g = g * a.grad_scale;
    adamw_element(p, g, m, v, s);
    store_value(t, i, p);
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    if (a.write_grads) store_grad(t, i, a.zero_grads ? 0.0f : g);
  }
}

// `parts` blocks a chunk, kThreads threads each with kUnroll vectors in flight, block b taking
// part b % parts of chunk b / parts. Every element is computed as with one block a chunk, so the
// bits are the same. kMinBlocks > 0 caps the registers so that that many blocks fit on an SM
// (0: no cap; the default shape's 51 registers hold one 1024-thread block an SM).
template <int kThreads, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    fused_adamw_kernel(const TensorSlot* __restrict__ tensors, const ChunkSlot* __restrict__ chunks,
                       int parts, AdamPass a) {
  const int64_t size = kChunk / parts;
  fused_adamw_chunk<kThreads, kUnroll>(tensors, chunks[blockIdx.x / parts],
                                       (blockIdx.x % parts) * size, size, a);
}
template <int kThreads, int kUnroll, int kMinBlocks>
void launch_fused_adamw(Context& ctx, unsigned blocks, const TensorSlot* tensors,
                        const ChunkSlot* chunks, int parts, const AdamPass& a) {
  fused_adamw_kernel<kThreads, kUnroll, kMinBlocks>
      <<<blocks, kThreads, 0, ctx.stream>>>(tensors, chunks, parts, a);
}

// The narrow pass (SY_ADAMW_BLOCKS caps the grid): a few wide blocks, each alone on its SM (the
// launch bounds give it the whole register file), block b running chunks b, b + grid, ... with
// two vectors a thread in flight, so that few SMs still keep enough bytes in flight to draw most
// of the memory bandwidth while the other SMs run GEMMs. Every element is computed as in the
// per-chunk pass, whichever block runs it: the cap changes no bit.
constexpr int kNarrowThreads = 1024;
__global__ void __launch_bounds__(kNarrowThreads, 1)
    narrow_adamw_kernel(const TensorSlot* __restrict__ tensors,
                        const ChunkSlot* __restrict__ chunks, int64_t num_chunks, AdamPass a) {
  for (int64_t b = blockIdx.x; b < num_chunks; b += gridDim.x)
    fused_adamw_chunk<kNarrowThreads, 2>(tensors, chunks[b], 0, kChunk, a);
}

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace

void adamw_update(Context& ctx, const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                  const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                  double weight_decay, int64_t step) {
  const int64_t n = param.numel();
  if (n == 0) return;
  dispatch_wide(param.dtype(), [&]<class T>(Tag<T>) {
    const AdamScalars<T> s = adam_scalars<T>(lr, beta1, beta2, eps, weight_decay, step);
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

// ---- MultiTensorTable -------------------------------------------------------------------------
namespace {

// The kernels' view of one tensor; `op` names the caller in errors.
TensorSlot make_slot(Context& ctx, const char* op, const MultiTensor& t) {
  if (t.numel > int64_t{INT32_MAX} * kChunk)
    fail(ctx, op, "a tensor too large for the chunk table");
  // Vectors need every array 16-byte aligned (compute and value_low: 8 bytes, four halves);
  // chunk starts are multiples of 4 elements, so they keep the base's alignment.
  bool vector = aligned(t.grad, t.grad_bf16 ? 8 : 16);
  for (const float* p : {t.value, t.exp_avg, t.exp_avg_sq}) vector = vector && aligned(p, 16);
  vector = vector && aligned(t.compute, 8) && aligned(t.value_low, 8);
  const uint32_t flags = (t.decay ? kDecay : 0u) | (t.expert ? kExpert : 0u) |
                         (vector ? kVector : 0u) | (t.partials ? kPartials : 0u) |
                         (t.value_low ? kSplit : 0u) | (t.grad_bf16 ? kGradBf16 : 0u) |
                         (t.round_bf16 ? kRoundGrad : 0u);
  return {t.value,   t.grad,      t.partials, t.exp_avg, t.exp_avg_sq,
          t.compute, t.value_low, t.numel,    flags};
}

// Blocks of one launch run in any order: two tensors sharing memory would race.
void check_disjoint(Context& ctx, const char* op, const std::vector<MultiTensor>& tensors) {
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;  // [begin, end) of every array
  for (const MultiTensor& t : tensors) {
    if (t.numel <= 0) continue;
    for (const float* p : {t.value, t.exp_avg, t.exp_avg_sq})
      if (p) ranges.emplace_back(reinterpret_cast<uintptr_t>(p),
                                 reinterpret_cast<uintptr_t>(p + t.numel));
    if (t.grad) {
      const uintptr_t grad = reinterpret_cast<uintptr_t>(t.grad);
      ranges.emplace_back(grad, grad + static_cast<uintptr_t>(t.numel) * (t.grad_bf16 ? 2 : 4));
    }
    if (t.compute)
      ranges.emplace_back(reinterpret_cast<uintptr_t>(t.compute),
                          reinterpret_cast<uintptr_t>(t.compute + t.numel));
    if (t.value_low)
      ranges.emplace_back(reinterpret_cast<uintptr_t>(t.value_low),
                          reinterpret_cast<uintptr_t>(t.value_low + t.numel));
    if (t.partials)
      ranges.emplace_back(reinterpret_cast<uintptr_t>(t.partials),
                          reinterpret_cast<uintptr_t>(t.partials + t.numel));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      fail(ctx, op, "two of the tensors share memory (a parameter listed twice?)");
}

bool same_sizes(const std::vector<MultiTensor>& a, const std::vector<MultiTensor>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](const MultiTensor& x, const MultiTensor& y) { return x.numel == y.numel; });
}

}  // namespace

void MultiTensorTable::assign(Context& ctx, const char* op, std::vector<MultiTensor> tensors) {
  if (uploaded_ && tensors == tensors_) return;  // the same list as the last call
  check_disjoint(ctx, op, tensors);
  std::vector<TensorSlot> slots;
  slots.reserve(tensors.size());
  for (const MultiTensor& t : tensors)
    if (t.numel > 0) slots.push_back(make_slot(ctx, op, t));
  if (slots.size() >= static_cast<size_t>(INT32_MAX)) fail(ctx, op, "too many tensors");
  const size_t slot_bytes = slots.size() * sizeof(TensorSlot);
  // The same sizes with other pointers (gradients reallocated between steps): the chunk list
  // stands; only the slots go up again, a few KiB instead of the whole table, so that the host
  // work between the norm's read and the update's launch stays short.
  const bool slots_only = uploaded_ && same_sizes(tensors, tensors_);
  if (!slots_only) {
    std::vector<ChunkSlot> chunks;
    for (size_t i = 0; i < slots.size(); ++i) {
      const int64_t n_chunks = (slots[i].numel + kChunk - 1) / kChunk;
      for (int64_t c = 0; c < n_chunks; ++c)
        chunks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
    }
    num_chunks_ = static_cast<int64_t>(chunks.size());
    chunks_offset_ = (slot_bytes + 15) / 16 * 16;
    host_.assign(chunks_offset_ + chunks.size() * sizeof(ChunkSlot), 0);
    if (!chunks.empty())
      std::memcpy(host_.data() + chunks_offset_, chunks.data(), chunks.size() * sizeof(ChunkSlot));
  }
  if (!slots.empty()) std::memcpy(host_.data(), slots.data(), slot_bytes);
  const size_t bytes = slots_only ? slot_bytes : host_.size();
  if (bytes > 0) {
    if (!device_.defined() || device_.nbytes() < host_.size()) {
      device_ = Tensor();  // back to the free list first
      device_ = ctx.alloc({static_cast<int64_t>((host_.size() + 3) / 4)}, DType::i32);
    }
    // Ordered after the passes that still read the previous table. From pageable memory: the
    // bytes are staged before the call returns.
    SY_CUDA(ctx, op, cudaMemcpyAsync(device_.data(), host_.data(), bytes, cudaMemcpyHostToDevice,
                                     ctx.stream));
  }
  tensors_ = std::move(tensors);
  uploaded_ = true;
}

void grad_norm_squares(Context& ctx, const MultiTensorTable& table, double* out) {
  const auto* tensors = static_cast<const TensorSlot*>(table.device_data());
  const auto* chunks = reinterpret_cast<const ChunkSlot*>(
      static_cast<const char*>(table.device_data()) + table.chunks_offset());
  const int64_t n = table.num_chunks();
  if (n == 0) {
    SY_CUDA(ctx, "grad_norm_squares", cudaMemsetAsync(out, 0, 2 * sizeof(double), ctx.stream));
    return;
  }
  auto* partials = static_cast<double*>(ctx.scratch(kScratchA, n * sizeof(double)));
  chunk_squares_kernel<<<static_cast<unsigned>(n), kPassThreads, 0, ctx.stream>>>(tensors, chunks,
                                                                                 partials);
  check_launch(ctx, "grad_norm_squares");
  sum_chunk_squares_kernel<<<1, kReduceThreads, 0, ctx.stream>>>(tensors, chunks, partials, n, out);
  check_launch(ctx, "grad_norm_squares");
}

namespace {
// The update's launch shapes: threads x vectors a thread in flight, blocks an SM (0: as many as
// the registers allow). Short blocks reached cudaMemcpy's rate in bench/copy_bench.cu, but 256 x 4
// uncapped (144 registers, one block an SM) ran the pass 12.6% slower on an H100 (BENCHMARKS.md).
// The capped ones hold 2048 vectors an SM in flight, and on an H100 every one of them ran slower
// than wide too (+1.1% to +15.8%): occupancy is not the limit there.
using UpdateLaunch = void (*)(Context&, unsigned, const TensorSlot*, const ChunkSlot*, int,
                              const AdamPass&);
struct Shape {
  const char* name;  // as SY_ADAMW_SHAPE takes it
  UpdateLaunch launch;
  const void* kernel;
};
template <int kThreads, int kUnroll, int kMinBlocks>
constexpr Shape shape(const char* name) {
  return {name, launch_fused_adamw<kThreads, kUnroll, kMinBlocks>,
          reinterpret_cast<const void*>(fused_adamw_kernel<kThreads, kUnroll, kMinBlocks>)};
}
const Shape kShapes[] = {
    shape<kUpdateThreads, 1, 0>("wide"), shape<1024, 1, 2>("wide2"), shape<512, 2, 2>("mid"),
    shape<256, 4, 2>("short"),           shape<256, 2, 4>("short4"), shape<256, 1, 8>("short8")};

// A shape (its index in kShapes) and its blocks a chunk.
struct UpdateShape {
  int shape;
  int parts;
};
// What the tuner tries, the default first. On an H100 wide:4 was the fastest; mid:16, short4:16
// and wide:16 ran 1.1%, 2.2% and 6.3% slower (twenty-sixth and twenty-ninth sessions). On an H200
// the pass ran 11% below cudaMemcpy in the wide shape; short blocks are what brought a copy to
// cudaMemcpy's rate on the H100, and wide:16 (each thread one vector, the block then done) is the
// pass's form of the fastest of those copies. In order: wide:4, wide:8, mid:16, short4:16, wide:16.
constexpr UpdateShape kCandidates[] = {{0, kDefaultParts}, {0, 8}, {2, 16}, {4, 16}, {0, 16}};
constexpr int kNumCandidates = static_cast<int>(std::size(kCandidates));

std::string shape_label(UpdateShape u) {
  return std::string(kShapes[u.shape].name) + ":" + std::to_string(u.parts);
}

// SY_ADAMW_SHAPE and SY_ADAMW_PARTS (measurement knobs; the bits are the same): the shape they
// pin, or none when both are unset (or the shape is `auto`). `short*` default to 16 parts (4096
// elements a block), the others to kDefaultParts.
std::optional<UpdateShape> pinned_shape() {
  const char* shape =
      env_choice("SY_ADAMW_SHAPE", {"auto", "wide", "wide2", "mid", "short", "short4", "short8"});
  const char* parts = env_choice("SY_ADAMW_PARTS", {"1", "2", "4", "8", "16"});
  static_assert(kMaxParts == 16, "SY_ADAMW_PARTS's choices are the divisors of kMaxParts");
  const std::string_view chosen = shape ? shape : "auto";
  if (chosen == "auto" && !parts) return std::nullopt;
  UpdateShape u{0, kDefaultParts};
  for (int i = 0; i < static_cast<int>(std::size(kShapes)); ++i)
    if (chosen == kShapes[i].name) u.shape = i;
  if (chosen.starts_with("short")) u.parts = 16;
  if (parts) u.parts = std::atoi(parts);
  return u;
}

void launch_update(Context& ctx, UpdateShape u, const TensorSlot* tensors, const ChunkSlot* chunks,
                   int64_t num_chunks, const AdamPass& a) {
  if (num_chunks * u.parts > int64_t{INT32_MAX})
    fail(ctx, "fused_adamw_step", "too many chunks for one grid");
  kShapes[u.shape].launch(ctx, static_cast<unsigned>(num_chunks * u.parts), tensors, chunks,
                          u.parts, a);
}

// Loads the candidates' kernels now (CUDA loads a module's functions lazily, at their first
// launch), so that no candidate's timed pass includes the host's loading.
void load_candidates(Context& ctx) {
  for (const UpdateShape& u : kCandidates) {
    cudaFuncAttributes attributes{};
    SY_CUDA(ctx, "fused_adamw_step", cudaFuncGetAttributes(&attributes, kShapes[u.shape].kernel));
  }
}
}  // namespace

UpdateShapeTuner::~UpdateShapeTuner() {
  if (started_) cudaEventDestroy(started_);
  if (finished_) cudaEventDestroy(finished_);
}

void UpdateShapeTuner::take_last_time(Context& ctx) {
  if (timing_ < 0) return;
  const cudaError_t done = cudaEventQuery(finished_);
  if (done == cudaErrorNotReady) {  // nothing waited for that pass yet: it runs again
    timing_ = -1;
    return;
  }
  SY_CUDA(ctx, "fused_adamw_step", done);
  float ms = 0;
  SY_CUDA(ctx, "fused_adamw_step", cudaEventElapsedTime(&ms, started_, finished_));
  ms_per_chunk_[timing_] = ms / static_cast<double>(timing_chunks_);
  timing_ = -1;
}

int UpdateShapeTuner::start(Context& ctx, int64_t num_chunks) {
  if (chosen_ >= 0) return chosen_;
  if (ms_per_chunk_.empty()) {
    load_candidates(ctx);
    if (!started_) SY_CUDA(ctx, "fused_adamw_step", cudaEventCreate(&started_));
    if (!finished_) SY_CUDA(ctx, "fused_adamw_step", cudaEventCreate(&finished_));
    ms_per_chunk_.assign(kNumCandidates, -1.0);
  }
  take_last_time(ctx);
  const auto untimed =
      std::find_if(ms_per_chunk_.begin(), ms_per_chunk_.end(), [](double ms) { return ms < 0; });
  if (untimed == ms_per_chunk_.end()) {
    chosen_ = static_cast<int>(std::min_element(ms_per_chunk_.begin(), ms_per_chunk_.end()) -
                               ms_per_chunk_.begin());
    return chosen_;
  }
  timing_ = static_cast<int>(untimed - ms_per_chunk_.begin());
  timing_chunks_ = num_chunks;
  SY_CUDA(ctx, "fused_adamw_step", cudaEventRecord(started_, ctx.stream));
  return timing_;
}

void UpdateShapeTuner::finish(Context& ctx) {
  if (timing_ >= 0) SY_CUDA(ctx, "fused_adamw_step", cudaEventRecord(finished_, ctx.stream));
}

std::string UpdateShapeTuner::summary() const {
  if (chosen_ < 0) return "";
  std::string out;
  char us[32];
  for (int c = 0; c < kNumCandidates; ++c) {
    std::snprintf(us, sizeof us, "%.3f", 1e3 * ms_per_chunk_[c]);
    out += (c ? ", " : "") + shape_label(kCandidates[c]) +
           (c == chosen_ ? " (chosen, " + std::string(us) + " us a chunk)"
                         : " (" + std::string(us) + ")");
  }
  return out;
}

void fused_adamw_step(Context& ctx, const MultiTensorTable& table, const AdamWStep& hp,
                      UpdateShapeTuner* tuner) {
  const int64_t n = table.num_chunks();
  if (n == 0) return;
  AdamPass a;
  a.decayed = adam_scalars<float>(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, hp.step);
  a.undecayed = adam_scalars<float>(hp.lr, hp.beta1, hp.beta2, hp.eps, 0.0, hp.step);
  a.grad_scale = static_cast<float>(hp.grad_scale);  // as Backend::scale rounds it for f32
  a.scale_grads = hp.grad_scale != 1.0;
  a.zero_grads = hp.zero_grads;
  a.write_grads = hp.zero_grads || (a.scale_grads && !hp.discard_grads);
  const auto* tensors = static_cast<const TensorSlot*>(table.device_data());
  const auto* chunks = reinterpret_cast<const ChunkSlot*>(
      static_cast<const char*>(table.device_data()) + table.chunks_offset());
  // SY_ADAMW_BLOCKS=N caps the grid (a measurement knob: the pass beside other kernels on fewer
  // SMs, bench/overlap_bench); 0 or unset: `parts` blocks a chunk.
  const int64_t cap = env_whole_number("SY_ADAMW_BLOCKS", int64_t{1} << 30, "blocks").value_or(0);
  const std::optional<UpdateShape> pinned = pinned_shape();
  if (cap > 0 && cap < n) {
    narrow_adamw_kernel<<<static_cast<unsigned>(cap), kNarrowThreads, 0, ctx.stream>>>(
        tensors, chunks, n, a);
  } else if (pinned || !tuner) {
    launch_update(ctx, pinned.value_or(kCandidates[0]), tensors, chunks, n, a);
  } else {
    launch_update(ctx, kCandidates[tuner->start(ctx, n)], tensors, chunks, n, a);
    tuner->finish(ctx);
  }
  check_launch(ctx, "fused_adamw_step");
}

// ---- the backend's entry points: a table from the parameter list, then one pass ------------
namespace {
bool is_pass_grad(const Tensor& grad) {
  return grad.dtype() == DType::f32 || grad.dtype() == DType::bf16;
}
// A bf16 gradient's value held in f32 (accumulated, or replicated): read rounded to bf16.
bool grad_read_rounded(const Param& param) {
  return param.bf16_grad && param.grad.dtype() != DType::bf16;
}
void set_grad(MultiTensor& t, const Param& param) {
  t.grad = param.grad.data();
  t.grad_bf16 = param.grad.dtype() == DType::bf16;
  t.round_bf16 = grad_read_rounded(param);
}
}  // namespace

bool grad_norm_squares(Context& ctx, MultiTensorTable& table, std::span<Param* const> params,
                       const OpCheck& check, double& shared, double& expert) {
  bool fusable = true;  // f32 or bf16 gradients
  for (const Param* param : params) {
    check.float_dtype(param->grad, {param->path, " grad"});
    fusable = fusable && is_pass_grad(param->grad);
  }
  if (!fusable) return false;
  // A gradient whose squares came out of the GEMM that wrote it (Param::grad_squares) is not
  // read again; those squares are used once.
  std::vector<MultiTensor> tensors(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    Param& param = *params[i];
    // (Squares of an f32 gradient that is to be read rounded are not the ones wanted.)
    const bool precomputed = param.grad_squares_valid &&
                             param.grad_state == Param::GradState::live &&
                             param.grad_squares.defined() &&
                             param.grad_squares.dtype() == DType::f64 && !grad_read_rounded(param);
    if (precomputed) {
      tensors[i].partials = param.grad_squares.ptr<double>();
      tensors[i].numel = param.grad_squares.numel();
    } else {
      set_grad(tensors[i], param);
      tensors[i].numel = param.grad.numel();
    }
    tensors[i].expert = param.is_expert;
    param.grad_squares_valid = false;
  }
  table.assign(ctx, "grad_norm_squares", std::move(tensors));
  auto* sums = static_cast<double*>(ctx.scratch(kScratchB, 2 * sizeof(double)));
  grad_norm_squares(ctx, table, sums);
  double host[2];
  to_host_sync(ctx, "grad_norm_squares", host, sums, sizeof host);
  shared = host[0];
  expert = host[1];
  return true;
}

bool fused_adamw_step(Context& ctx, MultiTensorTable& table, UpdateShapeTuner& tuner,
                      std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                      std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp,
                      const OpCheck& check) {
  if (exp_avgs.size() != params.size() || exp_avg_sqs.size() != params.size())
    check.fail(std::to_string(params.size()) + " params but " + std::to_string(exp_avgs.size()) +
               " exp_avg and " + std::to_string(exp_avg_sqs.size()) + " exp_avg_sq tensors");
  check.positive(hp.step, "step");
  auto split = [](const Param& p) { return p.value.dtype() == DType::f32_split; };
  auto separate_compute = [&](const Param& p) {
    return !split(p) && p.compute.defined() && p.compute.data() != p.value.data();
  };
  // f32 masters with no compute copy or a bf16 one, or f32_split masters (their compute copy is
  // their high halves)
  bool fusable = true;
  for (const Param* param : params) {
    const DType dtype =
        split(*param) ? DType::f32 : check.wide_dtype(param->value, {param->path, " value"});
    fusable = fusable && dtype == DType::f32 && is_pass_grad(param->grad);
    if (split(*param) && param->compute.defined() && param->compute.data() != param->value.data())
      check.fail(param->path + ": an f32_split value's compute copy must be its high halves");
    if (separate_compute(*param)) {
      check.float_dtype(param->compute, {param->path, " compute"});
      fusable = fusable && param->compute.dtype() == DType::bf16;
    }
  }
  if (!fusable) return false;
  std::vector<MultiTensor> tensors(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Param& p = *params[i];
    const int64_t n = p.value.numel();
    for (auto [t, what] : {std::pair{&exp_avgs[i], " exp_avg"}, {&exp_avg_sqs[i], " exp_avg_sq"}}) {
      check.dtype(*t, DType::f32, {p.path, what});
      check.numel(*t, n, {p.path, what});
    }
    check.numel(p.grad, n, {p.path, " grad"});
    MultiTensor& t = tensors[i];
    if (split(p)) {
      t.compute = p.value.high_half().ptr<bf16>();
      t.value_low = p.value.low_half_bits();
    } else {
      t.value = p.value.ptr<float>();
    }
    set_grad(t, p);
    t.exp_avg = exp_avgs[i].ptr<float>();
    t.exp_avg_sq = exp_avg_sqs[i].ptr<float>();
    if (separate_compute(p)) {
      check.numel(p.compute, n, {p.path, " compute"});
      t.compute = p.compute.ptr<bf16>();
    }
    t.numel = n;
    t.decay = p.decay;
    t.expert = p.is_expert;
  }
  table.assign(ctx, "fused_adamw_step", std::move(tensors));
  fused_adamw_step(ctx, table, hp, &tuner);
  return true;
}

}  // namespace sy::cuda
