// RMSNorm: one warp per row. rstd and the gain are in the statistics dtype (fp32 for bf16 data).
// The gain gradient is a column sum over rows, done in two deterministic passes (per-chunk
// partial sums, then one sum per column) rather than with atomics.
//
// bf16 rows of D <= 4096 elements, D % 8 == 0, take the vector kernels, reading each row once
// with 16-byte loads into registers. Forward: a warp a row (lane owns vectors lane, lane + 32,
// ...). Backward: a block spans the row and takes a chunk of kVecChunkRows rows, computing dx and
// the chunk's gain-gradient partials in one pass over dout and x, with every sum in a fixed
// order (rmsnorm_backward_vec). Their sums run in another order than the scalar kernels', so
// rstd, dx and dgain may differ from them in the last bits; docs/cuda.md.
//
// Two fusions for the residual stream (the transformer's blocks), each saving a pass over [T, D]:
// add_rmsnorm_forward writes the residual sum a + b and normalises it from registers (bitwise
// add_into, then rmsnorm_forward); the backward with `accumulate` adds dx into the residual's
// gradient as it stores it (dx + dres rounded once, where the separate add rounded dx first).
#include <algorithm>

#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kChunkRows = 64;    // rows per partial sum of the gain gradient

template <class T, class S>
__global__ void rmsnorm_forward_kernel(T* out, S* rstd, const T* x, const S* gain, int64_t N,
                                       int64_t D, double eps) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= N) return;
  const T* xr = x + row * D;
  A ss = 0;
  for (int64_t j = lane; j < D; j += 32) {
    const A v = load(xr + j);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const S r = static_cast<S>(1.0 / sqrt(static_cast<double>(ss) / static_cast<double>(D) + eps));
  if (lane == 0) rstd[row] = r;
  T* yr = out + row * D;
  for (int64_t j = lane; j < D; j += 32)
    yr[j] = convert<T>(load(xr + j) * static_cast<A>(r) * static_cast<A>(gain[j]));
}

// dx_j = r g_j dy_j - x_j r^3 / D * sum_k dy_k g_k x_k
template <class T, class S>
__global__ void rmsnorm_backward_dx(T* dx, const T* dout, const T* x, const S* gain, const S* rstd,
                                    int64_t N, int64_t D, bool accumulate) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= N) return;
  const T* xr = x + row * D;
  const T* dyr = dout + row * D;
  A s = 0;
  for (int64_t j = lane; j < D; j += 32) s += load(dyr + j) * static_cast<A>(gain[j]) * load(xr + j);
  s = warp_sum(s);
  const A r = static_cast<A>(rstd[row]);
  const A c = static_cast<A>(static_cast<double>(s) * r * r * r / static_cast<double>(D));
  T* dxr = dx + row * D;
  for (int64_t j = lane; j < D; j += 32) {
    const A grad = r * static_cast<A>(gain[j]) * load(dyr + j) - load(xr + j) * c;
    dxr[j] = convert<T>(accumulate ? load(dxr + j) + grad : grad);
  }
}

// partial[chunk, j] = sum over the chunk's rows of dy_j x_j r. Block (32, 8): 32 columns.
template <class T, class S>
__global__ void rmsnorm_dgain_partial(acc_t<T>* partial, const T* dout, const T* x,
                                      const S* rstd, int64_t N, int64_t D) {
  using A = acc_t<T>;
  __shared__ A shared[8][33];
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = blockIdx.y * int64_t(kChunkRows);
  const int64_t end = min(N, begin + kChunkRows);
  A acc = 0;
  if (j < D)
    for (int64_t t = begin + threadIdx.y; t < end; t += 8)
      acc += load(dout + t * D + j) * load(x + t * D + j) * static_cast<A>(rstd[t]);
  shared[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    A sum = 0;
    for (int y = 0; y < 8; ++y) sum += shared[y][threadIdx.x];
    partial[blockIdx.y * D + j] = sum;
  }
}

// dgain[j] += the partials of column j, added in chunk order (32 loads ahead: there are only D
// threads for ~256 chunks, and each round of loads waits a whole L2 latency).
template <class A, class S>
__global__ void rmsnorm_dgain_finish(S* dgain, const A* partial, int64_t chunks, int64_t D) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  const A sum = sum_in_order<32>(partial + j, chunks, D);
  dgain[j] = static_cast<S>(static_cast<A>(dgain[j]) + sum);
}

constexpr int kFinishThreads = 32;  // small blocks: the D columns spread over D / 32 SMs

constexpr int kVecChunkRows = 32;        // rows per block of the vector backward
constexpr int kColThreads = 256;         // threads per block of the vector backward
constexpr int kMaxBackwardVecs = 2;      // vectors per thread there: D <= 2 * 256 * 8 = 4096
constexpr int kBackwardRows = 2;         // rows per group there (two groups in flight)
constexpr int kMaxForwardVecs = 16;      // D <= 4096

// out = x r gain for one row held as raw bf16 vectors (lane holds vectors lane, lane + 32, ...),
// r = 1 / sqrt(mean x^2 + eps) written to rstd by lane 0.
template <int VPL>
__device__ __forceinline__ void normalize_row(bf16* __restrict__ out, float* __restrict__ rstd,
                                              const uint4 (&raw)[VPL],
                                              const float* __restrict__ gain, int64_t row,
                                              int64_t D, double eps, int lane) {
  const int64_t vecs = D / kVec;
  float ss = 0;
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    if (v * 32 + lane < vecs) {
      float f[kVec];
      unpack8(raw[v], f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) ss += f[e] * f[e];
    }
  }
  ss = warp_sum(ss);
  const float r =
      static_cast<float>(1.0 / sqrt(static_cast<double>(ss) / static_cast<double>(D) + eps));
  if (lane == 0) rstd[row] = r;
  bf16* yr = out + row * D;
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    const int64_t c = v * 32 + lane;
    if (c < vecs) {
      float f[kVec], g[kVec];
      unpack8(raw[v], f);
      load8(gain + c * kVec, g);
#pragma unroll
      for (int e = 0; e < kVec; ++e) f[e] = f[e] * r * g[e];
      store8(yr + c * kVec, f);
    }
  }
}

template <int VPL>
__global__ void rmsnorm_forward_vec(bf16* __restrict__ out, float* __restrict__ rstd,
                                    const bf16* __restrict__ x, const float* __restrict__ gain,
                                    int64_t N, int64_t D, double eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= N) return;
  const int64_t vecs = D / kVec;
  const bf16* xr = x + row * D;
  uint4 raw[VPL];
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    const int64_t c = v * 32 + lane;
    if (c < vecs) raw[v] = load_raw8(xr + c * kVec);
  }
  normalize_row<VPL>(out, rstd, raw, gain, row, D, eps, lane);
}

// One group of R rows of the vector backward's chunk, as raw bf16 vectors in registers: x, dout
// and, accumulating, the residual gradient dx already holds; and the rows' rstd.
template <int VPT, int R, bool Acc>
struct RowGroup {
  uint4 x[R][VPT], dy[R][VPT], res[Acc ? R : 1][VPT];
  float r[R];
};

// Issues the loads of rows first .. first + R - 1 (those before end) into `group`.
template <int VPT, int R, bool Acc>
__device__ __forceinline__ void load_group(RowGroup<VPT, R, Acc>& group, const bf16* dx,
                                           const bf16* __restrict__ dout,
                                           const bf16* __restrict__ x,
                                           const float* __restrict__ rstd, int64_t first,
                                           int64_t end, int64_t D) {
  const int64_t vecs = D / kVec;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t row = first + i;
    if (row >= end) continue;
    group.r[i] = rstd[row];
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
      const int64_t c = threadIdx.x + v * int64_t(kColThreads);
      if (c >= vecs) continue;
      group.x[i][v] = load_raw8(x + row * D + c * kVec);
      group.dy[i][v] = load_raw8(dout + row * D + c * kVec);
      if constexpr (Acc) group.res[i][v] = load_raw8(dx + row * D + c * kVec);
    }
  }
}

// The vector backward: a block of kColThreads threads spans the row (thread t holds vectors t,
// t + kColThreads, ...: VPT of them) and takes its chunk of kVecChunkRows rows R at a time. Each
// thread keeps its columns' gain and gain-gradient sums in registers over the chunk, so the
// partial of column j is a sum over the chunk's rows in order, and each row's dy.g.x is summed
// per thread, then per warp (butterfly), then over the warps in order through shared memory:
// the same bits whatever runs it. A group's R rows are loaded together, and the next group's
// loads are issued before this group's sums, barrier and stores, so that the block never waits
// for memory with nothing in flight: the grid is one wave of ~2 blocks an SM (at D 2048, 85
// registers a thread, 103 accumulating). Prefetching cut the call 4-9% on an H100; 4 rows a
// group, prefetched or not, or 8 without, were slower (BENCHMARKS.md, memory-bound kernels).
// (Until 2026-12-06 a warp took whole rows, with its column sums in shared memory: the same
// arithmetic in another order, ~40% of the bandwidth: BENCHMARKS.md, memory-bound kernels.)
template <int VPT, int R, bool Acc>
__global__ void __launch_bounds__(kColThreads, VPT == 1 ? 2 : 1)
    rmsnorm_backward_vec(bf16* dx, float* __restrict__ partial, const bf16* __restrict__ dout,
                         const bf16* __restrict__ x, const float* __restrict__ gain,
                         const float* __restrict__ rstd, int64_t N, int64_t D) {
  __shared__ float warp_sums[2][R][kColThreads / 32];  // two buffers: one barrier a group
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t vecs = D / kVec;
  const int64_t begin = blockIdx.x * int64_t(kVecChunkRows);
  const int64_t end = min(N, begin + kVecChunkRows);
  float g[VPT][kVec], dgain[VPT][kVec];
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    const int64_t c = threadIdx.x + v * int64_t(kColThreads);
#pragma unroll
    for (int e = 0; e < kVec; ++e) dgain[v][e] = 0.0f;
    if (c < vecs) load8(gain + c * kVec, g[v]);
  }
  RowGroup<VPT, R, Acc> cur, next;
  load_group(cur, dx, dout, x, rstd, begin, end, D);
  int buffer = 0;
  for (int64_t first = begin; first < end; first += R, buffer ^= 1) {
    if (first + R < end) load_group(next, dx, dout, x, rstd, first + R, end, D);
    float s[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      s[i] = 0.0f;
#pragma unroll
      for (int v = 0; v < VPT; ++v) {
        const int64_t c = threadIdx.x + v * int64_t(kColThreads);
        if (first + i >= end || c >= vecs) continue;
        float xv[kVec], dy[kVec];
        unpack8(cur.x[i][v], xv);
        unpack8(cur.dy[i][v], dy);
#pragma unroll
        for (int e = 0; e < kVec; ++e) s[i] += dy[e] * g[v][e] * xv[e];
      }
      s[i] = warp_sum(s[i]);
    }
    if (lane == 0)
#pragma unroll
      for (int i = 0; i < R; ++i) warp_sums[buffer][i][warp] = s[i];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t row = first + i;
      if (row >= end) continue;
      float row_sum = 0.0f;
      for (int w = 0; w < warps; ++w) row_sum += warp_sums[buffer][i][w];
      const float r = cur.r[i];
      const float cr =
          static_cast<float>(static_cast<double>(row_sum) * r * r * r / static_cast<double>(D));
#pragma unroll
      for (int v = 0; v < VPT; ++v) {
        const int64_t c = threadIdx.x + v * int64_t(kColThreads);
        if (c >= vecs) continue;
        float xv[kVec], dy[kVec], out[kVec];
        unpack8(cur.x[i][v], xv);
        unpack8(cur.dy[i][v], dy);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          out[e] = r * g[v][e] * dy[e] - xv[e] * cr;
          dgain[v][e] += dy[e] * xv[e] * r;
        }
        if constexpr (Acc) {
          float prior[kVec];
          unpack8(cur.res[i][v], prior);
#pragma unroll
          for (int e = 0; e < kVec; ++e) out[e] = prior[e] + out[e];
        }
        store8(dx + row * D + c * kVec, out);
      }
    }
    cur = next;
  }
#pragma unroll
  for (int v = 0; v < VPT; ++v) {
    const int64_t c = threadIdx.x + v * int64_t(kColThreads);
    if (c < vecs) store8(partial + blockIdx.x * D + c * kVec, dgain[v]);
  }
}

// The residual sum and its norm, one warp per row: out_sum = bf16(a + b) as add_bf16_vec
// computes it, then rmsnorm_forward_vec's arithmetic on the rounded sum, from registers.
template <int VPL>
__global__ void add_rmsnorm_forward_vec(bf16* sum, bf16* __restrict__ out, float* __restrict__ rstd,
                                        const bf16* a, const bf16* b,
                                        const float* __restrict__ gain, int64_t N, int64_t D,
                                        double eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (row >= N) return;
  const int64_t vecs = D / kVec;
  uint4 raw[VPL], raw_b[VPL];
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    const int64_t c = v * 32 + lane;
    if (c < vecs) {
      raw[v] = load_raw8(a + row * D + c * kVec);
      raw_b[v] = load_raw8(b + row * D + c * kVec);
    }
  }
#pragma unroll
  for (int v = 0; v < VPL; ++v) {
    const int64_t c = v * 32 + lane;
    if (c < vecs) {
      float f[kVec], g[kVec];
      unpack8(raw[v], f);
      unpack8(raw_b[v], g);
#pragma unroll
      for (int e = 0; e < kVec; ++e) f[e] = f[e] + 1.0f * g[e];
      raw[v] = pack8(f);  // the rounded sum, what add_into stores and the norm then reads
      *reinterpret_cast<uint4*>(sum + row * D + c * kVec) = raw[v];
    }
  }
  normalize_row<VPL>(out, rstd, raw, gain, row, D, eps, lane);
}

// Smallest instantiated vectors-per-lane that covers D / 8 vectors, or 0 when none does.
inline int vectors_per_lane(int64_t D, int max_vpl) {
  const int64_t need = (D / kVec + 31) / 32;
  for (int vpl = 1; vpl <= max_vpl; vpl *= 2)
    if (need <= vpl) return vpl;
  return 0;
}

// The vector backward's vectors per thread (1 or 2) that cover D / 8 vectors, or 0.
inline int vectors_per_thread(int64_t D) {
  const int64_t need = (D / kVec + kColThreads - 1) / kColThreads;
  for (int vpt = 1; vpt <= kMaxBackwardVecs; vpt *= 2)
    if (need <= vpt) return vpt;
  return 0;
}

// f(integral_constant<vpl>) for vpl in 1, 2, 4, ..., Max.
template <int Max, int V = 1, class F>
void with_vpl(int vpl, F&& f) {
  if (vpl == V) return f(std::integral_constant<int, V>{});
  if constexpr (V < Max) with_vpl<Max, 2 * V>(vpl, f);
}

bool takes_vector_path(const Tensor& x, int64_t D, std::initializer_list<const void*> pointers) {
  if (x.dtype() != DType::bf16 || D % kVec != 0) return false;
  for (const void* p : pointers)
    if (!aligned16(p)) return false;
  return true;
}

}  // namespace

void rmsnorm_forward(Context& ctx, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& gain, double eps) {
  const int64_t D = x.dim(-1), N = x.numel() / D;
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  const int vpl = vectors_per_lane(D, kMaxForwardVecs);
  if (vpl > 0 && takes_vector_path(x, D, {out.data(), x.data(), gain.data()})) {
    with_vpl<kMaxForwardVecs>(vpl, [&](auto V) {
      rmsnorm_forward_vec<V.value><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
          out.ptr<bf16>(), rstd.ptr<float>(), x.ptr<bf16>(), gain.ptr<float>(), N, D, eps);
    });
    check_launch(ctx, "rmsnorm_forward");
    return;
  }
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    using S = stat_t<T>;
    rmsnorm_forward_kernel<T, S><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        out.ptr<T>(), rstd.ptr<S>(), x.ptr<T>(), gain.ptr<S>(), N, D, eps);
  });
  check_launch(ctx, "rmsnorm_forward");
}

bool add_rmsnorm_forward(Context& ctx, const Tensor& sum, const Tensor& out, const Tensor& rstd,
                         const Tensor& a, const Tensor& b, const Tensor& gain, double eps) {
  const int64_t D = sum.dim(-1), N = sum.numel() / D;
  const int vpl = vectors_per_lane(D, kMaxForwardVecs);
  if (vpl == 0 ||
      !takes_vector_path(sum, D, {sum.data(), out.data(), a.data(), b.data(), gain.data()}))
    return false;
  if (N == 0) return true;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  with_vpl<kMaxForwardVecs>(vpl, [&](auto V) {
    add_rmsnorm_forward_vec<V.value><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        sum.ptr<bf16>(), out.ptr<bf16>(), rstd.ptr<float>(), a.ptr<bf16>(), b.ptr<bf16>(),
        gain.ptr<float>(), N, D, eps);
  });
  check_launch(ctx, "add_rmsnorm_forward");
  return true;
}

void rmsnorm_backward(Context& ctx, const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                      const Tensor& x, const Tensor& gain, const Tensor& rstd, bool accumulate) {
  const int64_t D = x.dim(-1), N = x.numel() / D;
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  const unsigned finish_grid = blocks_for(D, kFinishThreads);  // no grid-stride loop
  const int vpt = vectors_per_thread(D);
  if (vpt > 0 && takes_vector_path(x, D, {dx.data(), dout.data(), x.data(), gain.data()})) {
    const int64_t chunks = (N + kVecChunkRows - 1) / kVecChunkRows;
    float* partial = static_cast<float*>(ctx.scratch(kScratchA, chunks * D * sizeof(float)));
    // Whole warps over the row's vectors, up to kColThreads.
    const int threads = static_cast<int>(std::min<int64_t>(kColThreads, (D / kVec + 31) / 32 * 32));
    with_vpl<kMaxBackwardVecs>(vpt, [&](auto V) {
      const auto launch = [&](auto kernel) {
        kernel<<<static_cast<unsigned>(chunks), threads, 0, ctx.stream>>>(
            dx.ptr<bf16>(), partial, dout.ptr<bf16>(), x.ptr<bf16>(), gain.ptr<float>(),
            rstd.ptr<float>(), N, D);
      };
      if (accumulate) launch(rmsnorm_backward_vec<V.value, kBackwardRows, true>);
      else launch(rmsnorm_backward_vec<V.value, kBackwardRows, false>);
    });
    rmsnorm_dgain_finish<float, float><<<finish_grid, kFinishThreads, 0, ctx.stream>>>(
        dgain.ptr<float>(), partial, chunks, D);
    check_launch(ctx, "rmsnorm_backward");
    return;
  }
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    using S = stat_t<T>;
    using A = acc_t<T>;
    rmsnorm_backward_dx<T, S><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gain.ptr<S>(), rstd.ptr<S>(), N, D, accumulate);
    A* partial = static_cast<A*>(ctx.scratch(kScratchA, chunks * D * sizeof(A)));
    const dim3 grid(static_cast<unsigned>((D + 31) / 32), static_cast<unsigned>(chunks));
    rmsnorm_dgain_partial<T, S><<<grid, dim3(32, 8), 0, ctx.stream>>>(
        partial, dout.ptr<T>(), x.ptr<T>(), rstd.ptr<S>(), N, D);
    rmsnorm_dgain_finish<A, S><<<finish_grid, kFinishThreads, 0, ctx.stream>>>(
        dgain.ptr<S>(), partial, chunks, D);
  });
  check_launch(ctx, "rmsnorm_backward");
}

}  // namespace sy::cuda
