// RMSNorm: one warp per row. rstd and the gain are in the statistics dtype (fp32 for bf16 data).
// The gain gradient is a column sum over rows, done in two deterministic passes (per-chunk
// partial sums, then one sum per column) rather than with atomics.
#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kChunkRows = 64;    // rows per partial sum of the gain gradient

template <class T, class S>
__global__ void rmsnorm_forward_kernel(T* out, S* rstd, const T* x, const S* gain, int64_t N,
                                       int64_t D) {
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
  const S r = static_cast<S>(1.0 / sqrt(static_cast<double>(ss) / static_cast<double>(D) + 1e-5));
  if (lane == 0) rstd[row] = r;
  T* yr = out + row * D;
  for (int64_t j = lane; j < D; j += 32)
    yr[j] = convert<T>(load(xr + j) * static_cast<A>(r) * static_cast<A>(gain[j]));
}

// dx_j = r g_j dy_j - x_j r^3 / D * sum_k dy_k g_k x_k
template <class T, class S>
__global__ void rmsnorm_backward_dx(T* dx, const T* dout, const T* x, const S* gain,
                                    const S* rstd, int64_t N, int64_t D) {
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
  for (int64_t j = lane; j < D; j += 32)
    dxr[j] = convert<T>(r * static_cast<A>(gain[j]) * load(dyr + j) - load(xr + j) * c);
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

template <class A, class S>
__global__ void rmsnorm_dgain_finish(S* dgain, const A* partial, int64_t chunks, int64_t D) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  A sum = 0;
  for (int64_t c = 0; c < chunks; ++c) sum += partial[c * D + j];
  dgain[j] = static_cast<S>(static_cast<A>(dgain[j]) + sum);
}

}  // namespace

void rmsnorm_forward(Context& ctx, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& gain) {
  const int64_t D = x.dim(-1), N = x.numel() / D;
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    using S = stat_t<T>;
    rmsnorm_forward_kernel<T, S><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        out.ptr<T>(), rstd.ptr<S>(), x.ptr<T>(), gain.ptr<S>(), N, D);
  });
  check_launch(ctx, "rmsnorm_forward");
}

void rmsnorm_backward(Context& ctx, const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                      const Tensor& x, const Tensor& gain, const Tensor& rstd) {
  const int64_t D = x.dim(-1), N = x.numel() / D;
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  dispatch_float(x.dtype(), [&]<class T>(Tag<T>) {
    using S = stat_t<T>;
    using A = acc_t<T>;
    rmsnorm_backward_dx<T, S><<<blocks, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gain.ptr<S>(), rstd.ptr<S>(), N, D);
    A* partial = static_cast<A*>(ctx.scratch(kScratchA, chunks * D * sizeof(A)));
    const dim3 grid(static_cast<unsigned>((D + 31) / 32), static_cast<unsigned>(chunks));
    rmsnorm_dgain_partial<T, S><<<grid, dim3(32, 8), 0, ctx.stream>>>(
        partial, dout.ptr<T>(), x.ptr<T>(), rstd.ptr<S>(), N, D);
    rmsnorm_dgain_finish<A, S><<<grid_for(D), kThreads, 0, ctx.stream>>>(dgain.ptr<S>(), partial,
                                                                        chunks, D);
  });
  check_launch(ctx, "rmsnorm_backward");
}

}  // namespace sy::cuda
