// Rotary embedding and causal attention. Attention (first version): q, k, v are gathered into
// per-head [B*H, S, Dh] buffers, the scores and products run as cuBLAS strided-batched GEMMs over
// the B*H heads, and a fused kernel applies the causal mask and the softmax. Scores and their
// gradients are kept in fp32 (fp64 for f64 data); probs and dS are stored in the data dtype.
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

namespace sy::cuda {
namespace {

// ---- rotary ---------------------------------------------------------------------------------
// Token t's position: t % seq, or with documents (doc_start [N]) its place in its document.
__device__ inline int64_t rope_position(int64_t t, int64_t seq, const int32_t* doc_start) {
  return t % seq - (doc_start ? doc_start[t] : 0);
}

template <class T, class S>
__global__ void rope_kernel(T* x, const S* cos_table, const S* sin_table, int64_t N, int64_t seq,
                            int64_t H, int64_t Dh, S sign, const int32_t* doc_start) {
  const int64_t half = Dh / 2, total = N * H * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (H * half), rem = i - t * H * half;
    const int64_t h = rem / half, d = rem - h * half;
    T* lo = x + (t * H + h) * Dh;
    const int64_t at = rope_position(t, seq, doc_start) * half + d;
    const S c = cos_table[at], sn = sign * sin_table[at];
    const S x0 = convert<S>(lo[d]), x1 = convert<S>(lo[d + half]);
    lo[d] = convert<T>(x0 * c - x1 * sn);
    lo[d + half] = convert<T>(x1 * c + x0 * sn);
  }
}

// bf16 with Dh/2 % 8 == 0: thread i rotates 8 pairs (d .. d+7, d+half .. d+half+7) of one
// (row, head) with 16-byte loads and f32 cos/sin; blockIdx.y picks x (0) or x2 (1), so q and k
// rotate in one launch. Same per-pair expressions as rope_kernel: bitwise the same.
__global__ void rope_vec(bf16* x, bf16* x2, const float* __restrict__ cos_table,
                         const float* __restrict__ sin_table, int64_t N, int64_t seq, int64_t H,
                         int64_t Dh, float sign, const int32_t* doc_start) {
  bf16* base = blockIdx.y == 0 ? x : x2;
  const int64_t half = Dh / 2, groups = half / kVec, total = N * H * groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (H * groups), rem = i - t * H * groups;
    const int64_t h = rem / groups, d = (rem - h * groups) * kVec;
    bf16* lo = base + (t * H + h) * Dh + d;
    const int64_t at = rope_position(t, seq, doc_start) * half + d;
    float c[kVec], sn[kVec], x0[kVec], x1[kVec], y0[kVec], y1[kVec];
    load8(lo, x0);
    load8(lo + half, x1);
    load8(cos_table + at, c);
    load8(sin_table + at, sn);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float s = sign * sn[e];
      y0[e] = x0[e] * c[e] - x1[e] * s;
      y1[e] = x1[e] * c[e] + x0[e] * s;
    }
    store8(lo, y0);
    store8(lo + half, y1);
  }
}

// ---- layout ---------------------------------------------------------------------------------
template <class T>
struct HeadCopies {
  const T* src[4];
  T* dst[4];
};

// [B*S, H*Dh] -> [B, H, S, Dh] for blockIdx.y-th pair.
template <class T>
__global__ void to_heads_kernel(HeadCopies<T> copies, int64_t B, int64_t S, int64_t H,
                                int64_t Dh) {
  const T* src = copies.src[blockIdx.y];
  T* dst = copies.dst[blockIdx.y];
  const int64_t D = H * Dh, total = B * S * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, c = i - t * D;
    const int64_t b = t / S, s = t - b * S, h = c / Dh, d = c - h * Dh;
    dst[((b * H + h) * S + s) * Dh + d] = src[i];
  }
}

// [B, H, S, Dh] -> [B*S, H*Dh]
template <class T>
__global__ void from_heads_kernel(HeadCopies<T> copies, int64_t B, int64_t S, int64_t H,
                                  int64_t Dh) {
  const T* src = copies.src[blockIdx.y];
  T* dst = copies.dst[blockIdx.y];
  const int64_t D = H * Dh, total = B * S * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, c = i - t * D;
    const int64_t b = t / S, s = t - b * S, h = c / Dh, d = c - h * Dh;
    dst[i] = src[((b * H + h) * S + s) * Dh + d];
  }
}

// ---- softmax --------------------------------------------------------------------------------
__device__ inline float exp_acc(float x) { return expf(x); }
__device__ inline double exp_acc(double x) { return exp(x); }

constexpr int kRowsPerBlock = 8;

// One warp per score row (bh, i): probs[j] = softmax over first <= j <= i, 0 elsewhere (above
// the diagonal, and left of the query's document: first = doc_start[b*S + i], 0 without).
template <class T, class A>
__global__ void causal_softmax_kernel(T* probs, const A* scores, int64_t rows, int64_t S, int64_t H,
                                      const int32_t* doc_start) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t i = row % S;
  const int64_t first = doc_start ? doc_start[row / S / H * S + i] : 0;
  const A* sc = scores + row * S;
  T* p = probs + row * S;
  A m = -INFINITY;
  for (int64_t j = first + lane; j <= i; j += 32) m = max(m, sc[j]);
  m = warp_max(m);
  A sum = 0;
  for (int64_t j = first + lane; j <= i; j += 32) sum += exp_acc(sc[j] - m);
  sum = warp_sum(sum);
  const A inv = A(1) / sum;
  for (int64_t j = lane; j < S; j += 32)
    p[j] = convert<T>(j >= first && j <= i ? exp_acc(sc[j] - m) * inv : A(0));
}

// dS[j] = P[j] (dP[j] - sum_k dP[k] P[k]) for j <= i, 0 above the diagonal. With documents the
// forward's P is 0 left of the query's document too, so its dS is 0 there, and those keys add
// dP[k] * 0 to the sum: the zeros in probs carry the mask, as they do to dv = P^T dO.
template <class T, class A>
__global__ void softmax_backward_kernel(T* ds, const A* dp, const T* probs, int64_t rows,
                                        int64_t S) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t i = row % S;
  const A* g = dp + row * S;
  const T* p = probs + row * S;
  A d = 0;
  for (int64_t j = lane; j <= i; j += 32) d += g[j] * load(p + j);
  d = warp_sum(d);
  T* out = ds + row * S;
  for (int64_t j = lane; j < S; j += 32) out[j] = convert<T>(j <= i ? load(p + j) * (g[j] - d) : A(0));
}

template <class T>
void copy_heads(Context& ctx, bool to, std::initializer_list<std::pair<const void*, void*>> pairs,
                int64_t B, int64_t S, int64_t H, int64_t Dh) {
  HeadCopies<T> copies{};
  unsigned n = 0;
  for (auto [src, dst] : pairs) {
    copies.src[n] = static_cast<const T*>(src);
    copies.dst[n] = static_cast<T*>(dst);
    ++n;
  }
  const dim3 grid(grid_for(B * S * H * Dh), n);
  if (to) to_heads_kernel<T><<<grid, kThreads, 0, ctx.stream>>>(copies, B, S, H, Dh);
  else from_heads_kernel<T><<<grid, kThreads, 0, ctx.stream>>>(copies, B, S, H, Dh);
}

// ---- grouped-query heads ---------------------------------------------------------------------
// out[t, (j*G + g)*Dh + d] = x[t, j*Dh + d], one element a thread.
template <class T>
__global__ void repeat_kv_heads_kernel(T* out, const T* x, int64_t rows, int64_t kv_width,
                                       int64_t G, int64_t Dh) {
  const int64_t width = kv_width * G, total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i - t * width;
    const int64_t h = c / Dh, d = c - h * Dh;
    out[i] = x[t * kv_width + (h / G) * Dh + d];
  }
}

// dx[t, j*Dh + d] = sum over g = 0 .. G-1 (in order, in S) of dout[t, (j*G + g)*Dh + d].
template <class T, class S>
__global__ void repeat_kv_heads_backward_kernel(T* dx, const T* dout, int64_t rows,
                                                int64_t kv_width, int64_t G, int64_t Dh) {
  const int64_t width = kv_width * G, total = rows * kv_width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / kv_width, c = i - t * kv_width;
    const int64_t j = c / Dh, d = c - j * Dh;
    const T* from = dout + t * width + j * G * Dh + d;
    S sum = convert<S>(from[0]);
    for (int64_t g = 1; g < G; ++g) sum += convert<S>(from[g * Dh]);
    dx[i] = convert<T>(sum);
  }
}

}  // namespace

void repeat_kv_heads(Context& ctx, const Tensor& out, const Tensor& x, int64_t kv_heads) {
  const int64_t rows = x.dim(0), kv_width = x.dim(1), G = out.dim(1) / kv_width;
  if (out.numel() == 0) return;
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    repeat_kv_heads_kernel<T><<<grid_for(out.numel()), kThreads, 0, ctx.stream>>>(
        out.ptr<T>(), x.ptr<T>(), rows, kv_width, G, kv_width / kv_heads);
  });
  check_launch(ctx, "repeat_kv_heads");
}

void repeat_kv_heads_backward(Context& ctx, const Tensor& dx, const Tensor& dout,
                              int64_t kv_heads) {
  const int64_t rows = dx.dim(0), kv_width = dx.dim(1), G = dout.dim(1) / kv_width;
  if (dx.numel() == 0) return;
  dispatch_float(dx.dtype(), [&]<class T>(Tag<T>) {
    repeat_kv_heads_backward_kernel<T, stat_t<T>>
        <<<grid_for(dx.numel()), kThreads, 0, ctx.stream>>>(dx.ptr<T>(), dout.ptr<T>(), rows,
                                                            kv_width, G, kv_width / kv_heads);
  });
  check_launch(ctx, "repeat_kv_heads_backward");
}

void rope(Context& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t B, int64_t S,
          int64_t H, int sign, const int32_t* doc_start) {
  rope(ctx, x, Tensor(), cos, sin, B, S, H, sign, doc_start);
}

void rope(Context& ctx, const Tensor& x, const Tensor& x2, const Tensor& cos, const Tensor& sin,
          int64_t B, int64_t S, int64_t H, int sign, const int32_t* doc_start) {
  const int64_t N = B * S, Dh = x.dim(1) / H;
  if (N == 0) return;
  const char* op = sign > 0 ? "rope_forward" : "rope_backward";
  const int tensors = x2.defined() ? 2 : 1;
  if (x.dtype() == DType::bf16 && (Dh / 2) % kVec == 0 &&
      all_aligned16(x.data(), cos.data(), sin.data()) && (tensors == 1 || aligned16(x2.data()))) {
    const dim3 grid(grid_for(N * H * (Dh / 2 / kVec)), tensors);
    rope_vec<<<grid, kThreads, 0, ctx.stream>>>(
        x.ptr<bf16>(), tensors == 2 ? x2.ptr<bf16>() : nullptr, cos.ptr<float>(), sin.ptr<float>(),
        N, S, H, Dh, static_cast<float>(sign), doc_start);
    check_launch(ctx, op);
    return;
  }
  for (const Tensor* t : {&x, &x2}) {
    if (!t->defined()) continue;
    dispatch_float(t->dtype(), [&]<class T>(Tag<T>) {
      using St = stat_t<T>;
      rope_kernel<T, St><<<grid_for(N * H * (Dh / 2)), kThreads, 0, ctx.stream>>>(
          t->ptr<T>(), cos.ptr<St>(), sin.ptr<St>(), N, S, H, Dh, static_cast<St>(sign), doc_start);
    });
    check_launch(ctx, op);
  }
}

const std::pair<Tensor, Tensor>& RopeTables::get(Context& ctx, int64_t S, int64_t Dh,
                                                 const Rotary& rotary, DType dtype) {
  const auto key = std::make_tuple(S, Dh, rotary, dtype);
  auto it = tables_.find(key);
  if (it != tables_.end()) return it->second;
  const int64_t half = Dh / 2;
  std::vector<double> cos(S * half), sin(S * half);
  const std::vector<double> frequencies = rope_frequencies(Dh, rotary);
  for (int64_t i = 0; i < half; ++i) {
    const double f = frequencies[i];
    for (int64_t s = 0; s < S; ++s) {
      const double a = static_cast<double>(s) * f;
      cos[s * half + i] = std::cos(a);
      sin[s * half + i] = std::sin(a);
    }
  }
  const auto upload = [&](const Tensor& dst, const std::vector<double>& values) {
    if (values.empty()) return;
    dispatch_wide(dtype, [&]<class T>(Tag<T>) {
      std::vector<T> staging(values.size());
      for (size_t i = 0; i < values.size(); ++i) staging[i] = convert<T>(values[i]);
      // From pageable memory: the copy has taken the bytes when it returns.
      SY_CUDA(ctx, "rope table",
              cudaMemcpyAsync(dst.data(), staging.data(), dst.nbytes(), cudaMemcpyHostToDevice,
                              ctx.stream));
    });
  };
  std::pair<Tensor, Tensor> table{ctx.alloc({S, half}, dtype), ctx.alloc({S, half}, dtype)};
  upload(table.first, cos);
  upload(table.second, sin);
  return tables_.emplace(key, std::move(table)).first->second;
}

void attention_forward(Context& ctx, const Tensor& out, const Tensor& probs, const Tensor& q,
                       const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                       const int32_t* doc_start) {
  const char* op = "attention_forward";
  const int64_t D = q.dim(1), Dh = D / H, BH = B * H, T = B * S;
  if (T == 0) return;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  dispatch_float(q.dtype(), [&]<class Tp>(Tag<Tp>) {
    using A = acc_t<Tp>;
    const DType dt = dtype_of<Tp>(), at = dtype_of<A>();
    const size_t act = static_cast<size_t>(T * D) * sizeof(Tp);
    void* qh = ctx.scratch(kScratchB, act);
    void* kh = ctx.scratch(kScratchC, act);
    void* vh = ctx.scratch(kScratchD, act);
    void* oh = ctx.scratch(kScratchE, act);
    void* scores = ctx.scratch(kScratchF, static_cast<size_t>(BH * S * S) * sizeof(A));
    copy_heads<Tp>(ctx, true, {{q.data(), qh}, {k.data(), kh}, {v.data(), vh}}, B, S, H, Dh);
    check_launch(ctx, op);
    // scores = q k^T / sqrt(Dh)
    gemm_strided_batched(ctx, op, false, true, S, S, Dh, scale, qh, Dh, S * Dh, kh, Dh, S * Dh,
                         0.0, scores, S, S * S, BH, dt, at);
    causal_softmax_kernel<Tp, A>
        <<<static_cast<unsigned>((BH * S + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock,
           0, ctx.stream>>>(probs.ptr<Tp>(), static_cast<const A*>(scores), BH * S, S, H,
                            doc_start);
    check_launch(ctx, op);
    // out = P v
    gemm_strided_batched(ctx, op, false, false, S, Dh, S, 1.0, probs.data(), S, S * S, vh, Dh,
                         S * Dh, 0.0, oh, Dh, S * Dh, BH, dt, dt);
    copy_heads<Tp>(ctx, false, {{oh, out.data()}}, B, S, H, Dh);
    check_launch(ctx, op);
  });
}

void attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& probs, int64_t B, int64_t S, int64_t H) {
  const char* op = "attention_backward";
  const int64_t D = q.dim(1), Dh = D / H, BH = B * H, T = B * S;
  if (T == 0) return;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  dispatch_float(q.dtype(), [&]<class Tp>(Tag<Tp>) {
    using A = acc_t<Tp>;
    const DType dt = dtype_of<Tp>(), at = dtype_of<A>();
    const size_t act = static_cast<size_t>(T * D) * sizeof(Tp);
    void* dvh = ctx.scratch(kScratchA, act);
    void* qh = ctx.scratch(kScratchB, act);
    void* kh = ctx.scratch(kScratchC, act);
    void* vh = ctx.scratch(kScratchD, act);
    void* doh = ctx.scratch(kScratchE, act);
    void* dp = ctx.scratch(kScratchF, static_cast<size_t>(BH * S * S) * sizeof(A));
    void* ds = ctx.scratch(kScratchG, static_cast<size_t>(BH * S * S) * sizeof(Tp));
    copy_heads<Tp>(ctx, true, {{q.data(), qh}, {k.data(), kh}, {v.data(), vh}, {dout.data(), doh}},
                   B, S, H, Dh);
    check_launch(ctx, op);
    // dP = dO v^T;  dv = P^T dO
    gemm_strided_batched(ctx, op, false, true, S, S, Dh, 1.0, doh, Dh, S * Dh, vh, Dh, S * Dh,
                         0.0, dp, S, S * S, BH, dt, at);
    gemm_strided_batched(ctx, op, true, false, S, Dh, S, 1.0, probs.data(), S, S * S, doh, Dh,
                         S * Dh, 0.0, dvh, Dh, S * Dh, BH, dt, dt);
    softmax_backward_kernel<Tp, A><<<static_cast<unsigned>((BH * S + kRowsPerBlock - 1) / kRowsPerBlock),
                                     32 * kRowsPerBlock, 0, ctx.stream>>>(
        static_cast<Tp*>(ds), static_cast<const A*>(dp), probs.ptr<Tp>(), BH * S, S);
    check_launch(ctx, op);
    // dq = dS k / sqrt(Dh) (into doh's buffer);  dk = dS^T q / sqrt(Dh) (into kh's buffer)
    gemm_strided_batched(ctx, op, false, false, S, Dh, S, scale, ds, S, S * S, kh, Dh, S * Dh,
                         0.0, doh, Dh, S * Dh, BH, dt, dt);
    gemm_strided_batched(ctx, op, true, false, S, Dh, S, scale, ds, S, S * S, qh, Dh, S * Dh,
                         0.0, kh, Dh, S * Dh, BH, dt, dt);
    copy_heads<Tp>(ctx, false, {{doh, dq.data()}, {kh, dk.data()}, {dvh, dv.data()}}, B, S, H, Dh);
    check_launch(ctx, op);
  });
}

}  // namespace sy::cuda
