// Cross-entropy over one chunk of logits: one block per row (max, sum of exponentials, loss),
// and in training dlogits = (softmax - onehot) * grad_scale written over the logits.
//
// Vector paths (V % 8 == 0, 16-byte aligned rows), thread i taking the 8-element groups i,
// i + blockDim.x, ... with 16-byte accesses:
//  - bf16 rows of V <= 512 * 8 * 8 (32768): the block holds its row in registers, reduces max and
//    sum from there and writes the gradient over it: one read and one write of [T, V] instead of
//    the scalar kernel's three reads and one write;
//  - f32 rows (the training path: the LM head's logits are in the statistics dtype) and longer
//    bf16 rows: one pass for max and sum together (online softmax: the running sum is rescaled
//    when the running max grows), a second that writes the gradient: two reads, one write. The
//    LM head's form (cross_entropy_into: f32 logits, bf16 gradient) holds rows up to 32768 in
//    registers between the two passes: one read, the same bits.
// Their sums of exponentials add in another order than the scalar kernel's, so loss and gradient
// may differ from it in the last bits; docs/cuda.md.
#include <cmath>

#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

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
  if (target == kIgnoreTarget) {  // not trained: no loss, no gradient (the whole block returns)
    if (threadIdx.x == 0) losses[row] = static_cast<L>(0);
    if (compute_grad)
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) r[j] = convert<T>(A(0));
    return;
  }
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

// A row of `vecs` groups of kVec elements set to zero: an ignored target's gradient.
template <class G>
__device__ inline void store_zero_row(G* row, int64_t vecs) {
  float zeros[kVec] = {};
  for (int64_t c = threadIdx.x; c < vecs; c += blockDim.x) store8(row + c * kVec, zeros);
}

constexpr int kMaxVecsPerThread = 8;
constexpr int kMaxRowThreads = 512;  // with <= 128 registers a thread (ptxas: 95 at 8 vectors)

template <int VPT>
__global__ void __launch_bounds__(kMaxRowThreads)
cross_entropy_vec(float* __restrict__ losses, bf16* __restrict__ logits,
                  const int32_t* __restrict__ targets, int64_t V, bool compute_grad,
                  float grad_scale) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x, vecs = V / kVec;
  bf16* r = logits + row * V;
  const int64_t target = targets[row];
  if (target == kIgnoreTarget) {
    if (threadIdx.x == 0) losses[row] = 0.0f;
    if (compute_grad) store_zero_row(r, vecs);
    return;
  }
  const float target_logit = threadIdx.x == 0 ? load(r + target) : 0.0f;  // before any writes
  uint4 raw[VPT];
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    const int64_t c = v * int64_t(blockDim.x) + threadIdx.x;
    if (c < vecs) raw[v] = load_raw8(r + c * kVec);
  }
  float m = -INFINITY;
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    if (v * int64_t(blockDim.x) + threadIdx.x < vecs) {
      float f[kVec];
      unpack8(raw[v], f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) m = max(m, f[e]);
    }
  }
  m = block_max(m, shared, -INFINITY);
  float s = 0;
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    if (v * int64_t(blockDim.x) + threadIdx.x < vecs) {
      float f[kVec];
      unpack8(raw[v], f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) s += expf(f[e] - m);
    }
  }
  s = block_sum(s, shared);
  if (threadIdx.x == 0)
    losses[row] = static_cast<float>(static_cast<double>(m) + log(static_cast<double>(s)) -
                                     static_cast<double>(target_logit));
  if (!compute_grad) return;
  const float f = grad_scale / s;
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    const int64_t c = v * int64_t(blockDim.x) + threadIdx.x;
    if (c < vecs) {
      float x[kVec];
      unpack8(raw[v], x);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        x[e] = expf(x[e] - m) * f;
        if (c * kVec + e == target) x[e] -= grad_scale;
      }
      store8(r + c * kVec, x);
    }
  }
}

// Online max and sum: s holds sum exp(x - m) over what this thread has seen.
__device__ inline void online_add(float& m, float& s, const float (&f)[kVec]) {
  float mv = f[0];
#pragma unroll
  for (int e = 1; e < kVec; ++e) mv = max(mv, f[e]);
  const float m_new = max(m, mv);
  if (m_new == -INFINITY) return;  // all -inf so far: nothing to add
  if (m_new > m) s *= expf(m - m_new);
  m = m_new;
#pragma unroll
  for (int e = 0; e < kVec; ++e) s += expf(f[e] - m);
}

constexpr int kStreamThreads = 512;
constexpr int kStreamUnroll = 4;  // groups loaded before first use

// x = the gradient of group c's 8 logits: softmax * grad_scale, less grad_scale at the target.
__device__ inline void group_gradient(float (&x)[kVec], int64_t c, int64_t target, float row_max,
                                      float scale, float grad_scale) {
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    x[e] = expf(x[e] - row_max) * scale;
    if (c * kVec + e == target) x[e] -= grad_scale;
  }
}

// Two passes over a row, thread i taking groups i, i + blockDim.x, ...: the online max and sum,
// then the gradient. grad: where dlogits go, [N, V] of G: the logits themselves (G = T, in place)
// or another buffer (the LM head's bf16 gradient straight from its f32 logits, with no
// conversion pass).
// Held = 0 streams the row, reading it in each pass. Held > 0 keeps the thread's Held groups in
// registers between the passes (V / kVec <= Held * blockDim.x): the same groups in the same order
// through the same sums, so the same bits, with the logits read once. At Held 8 (f32 rows of
// 32768) a thread holds 93 registers, one block an SM. The LM head's form, f32 logits to a bf16
// gradient, holds (-5% a chunk on an H100); the in-place f32 gradient streams (holding was +3%
// there: BENCHMARKS.md, memory-bound kernels).
template <class T, class G, int Held>
__global__ void __launch_bounds__(kStreamThreads)
    cross_entropy_two_pass(float* __restrict__ losses, const T* logits, G* grad,
                           const int32_t* __restrict__ targets, int64_t V, bool compute_grad,
                           float grad_scale) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x, groups = V / kVec, stride = blockDim.x;
  const T* r = logits + row * V;
  G* g = grad + row * V;
  const int64_t target = targets[row];
  if (target == kIgnoreTarget) {
    if (threadIdx.x == 0) losses[row] = 0.0f;
    if (compute_grad) store_zero_row(g, groups);
    return;
  }
  const float target_logit = threadIdx.x == 0 ? load(r + target) : 0.0f;  // before any writes
  float m = -INFINITY, s = 0;
  [[maybe_unused]] float held[Held > 0 ? Held : 1][kVec];
  if constexpr (Held > 0) {
#pragma unroll
    for (int k = 0; k < Held; ++k)
      if (threadIdx.x + k * stride < groups) load8(r + (threadIdx.x + k * stride) * kVec, held[k]);
#pragma unroll
    for (int k = 0; k < Held; ++k)
      if (threadIdx.x + k * stride < groups) online_add(m, s, held[k]);
  } else {
    int64_t c = threadIdx.x;
    for (; c + (kStreamUnroll - 1) * stride < groups; c += kStreamUnroll * stride) {
      float f[kStreamUnroll][kVec];
#pragma unroll
      for (int u = 0; u < kStreamUnroll; ++u) load8(r + (c + u * stride) * kVec, f[u]);
#pragma unroll
      for (int u = 0; u < kStreamUnroll; ++u) online_add(m, s, f[u]);
    }
    for (; c < groups; c += stride) {
      float f[kVec];
      load8(r + c * kVec, f);
      online_add(m, s, f);
    }
  }
  const float row_max = block_max(m, shared, -INFINITY);
  s = m == -INFINITY ? 0.0f : s * expf(m - row_max);
  s = block_sum(s, shared);
  if (threadIdx.x == 0)
    losses[row] = static_cast<float>(static_cast<double>(row_max) + log(static_cast<double>(s)) -
                                     static_cast<double>(target_logit));
  if (!compute_grad) return;
  const float scale = grad_scale / s;
  if constexpr (Held > 0) {
#pragma unroll
    for (int k = 0; k < Held; ++k) {
      const int64_t c = threadIdx.x + k * stride;
      if (c >= groups) continue;
      group_gradient(held[k], c, target, row_max, scale, grad_scale);
      store8(g + c * kVec, held[k]);
    }
  } else {
    for (int64_t c = threadIdx.x; c < groups; c += stride) {
      float x[kVec];
      load8(r + c * kVec, x);
      group_gradient(x, c, target, row_max, scale, grad_scale);
      store8(g + c * kVec, x);
    }
  }
}

template <int V = 1, class F>
void with_vpt(int vpt, F&& f) {
  if (vpt == V) return f(std::integral_constant<int, V>{});
  if constexpr (V < kMaxVecsPerThread) with_vpt<2 * V>(vpt, f);
}

// The fewest vectors a thread (1, 2, 4, 8) with which `threads` threads hold a row of `vecs`
// vectors; 0 when even kMaxVecsPerThread do not.
int vecs_per_thread(int64_t vecs, int threads) {
  int vpt = 1;
  while (vpt < kMaxVecsPerThread && vecs > int64_t{threads} * vpt) vpt *= 2;
  return vecs <= int64_t{threads} * vpt ? vpt : 0;
}

}  // namespace

void cross_entropy(Context& ctx, const Tensor& losses, const Tensor& logits,
                   const Tensor& targets, bool compute_grad, double grad_scale) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  if (N == 0) return;
  // Vector path: the fewest threads (256..512) and vectors per thread (1..8) that hold a row.
  if (logits.dtype() == DType::bf16 && V % kVec == 0 && aligned16(logits.data())) {
    const int64_t vecs = V / kVec;
    int threads = kThreads;
    while (threads < kMaxRowThreads && vecs > int64_t(threads) * kMaxVecsPerThread) threads *= 2;
    if (const int vpt = vecs_per_thread(vecs, threads); vpt > 0) {
      with_vpt(vpt, [&](auto VPT) {
        cross_entropy_vec<VPT.value><<<static_cast<unsigned>(N), threads, 0, ctx.stream>>>(
            losses.ptr<float>(), logits.ptr<bf16>(), targets.ptr<int32_t>(), V, compute_grad,
            static_cast<float>(grad_scale));
      });
      check_launch(ctx, "cross_entropy");
      return;
    }
  }
  if ((logits.dtype() == DType::bf16 || logits.dtype() == DType::f32) && V % kVec == 0 &&
      aligned16(logits.data())) {
    auto launch = [&]<class T>(Tag<T>) {
      cross_entropy_two_pass<T, T, 0><<<static_cast<unsigned>(N), kStreamThreads, 0, ctx.stream>>>(
          losses.ptr<float>(), logits.ptr<T>(), logits.ptr<T>(), targets.ptr<int32_t>(), V,
          compute_grad, static_cast<float>(grad_scale));
    };
    if (logits.dtype() == DType::bf16) launch(Tag<bf16>{});
    else launch(Tag<float>{});
    check_launch(ctx, "cross_entropy");
    return;
  }
  dispatch_float(logits.dtype(), [&]<class T>(Tag<T>) {
    using L = stat_t<T>;
    cross_entropy_kernel<T, L><<<static_cast<unsigned>(N), kThreads, 0, ctx.stream>>>(
        losses.ptr<L>(), logits.ptr<T>(), targets.ptr<int32_t>(), V, compute_grad,
        static_cast<acc_t<T>>(grad_scale));
  });
  check_launch(ctx, "cross_entropy");
}

bool cross_entropy_into(Context& ctx, const Tensor& losses, const Tensor& logits,
                        const Tensor& targets, double grad_scale, const Tensor& dlogits) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  if (logits.dtype() != DType::f32 || dlogits.dtype() != DType::bf16 || V % kVec != 0 ||
      !aligned16(logits.data()) || !aligned16(dlogits.data()))
    return false;
  if (N == 0) return true;
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(N), kStreamThreads, 0, ctx.stream>>>(
        losses.ptr<float>(), logits.ptr<float>(), dlogits.ptr<bf16>(), targets.ptr<int32_t>(), V,
        true, static_cast<float>(grad_scale));
  };
  // Held: the fewest groups a thread (1..8, as the bf16 vector path) that hold the row.
  if (const int held = vecs_per_thread(V / kVec, kStreamThreads); held > 0)
    with_vpt(held, [&](auto H) { launch(cross_entropy_two_pass<float, bf16, H.value>); });
  else launch(cross_entropy_two_pass<float, bf16, 0>);  // streamed
  check_launch(ctx, "cross_entropy_into");
  return true;
}

}  // namespace sy::cuda
