// The router's projection on the device (contract: Backend::router_logits and
// router_logits_backward, model/backend.h): f32 w [D, E], u and du rows in bf16 or f32, widened
// to f32 as they are read, so that the layer keeps no f32 copy of u and the [T, D] rows cross
// memory once each way.
//
//   forward   logits[t, e] = sum_d u[t, d] w[d, e]: one warp per token row (grid-stride), each
//             lane 8 consecutive d per 16-byte load, f32 partial sums for a chunk of EC experts
//             in registers, then a butterfly warp sum (every lane ends with the same bits).
//   du        du[t, d] = round(du[t, d] + sum_e dlogits[t, e] w[d, e]), the sum over e in
//             ascending order: one warp per token row, each block a 256-wide tile of d.
//   dw        dw = dw_beta dw + u^T dlogits in two deterministic passes: per chunk of rows, f32
//             partials [chunks, D, E] in scratch slot A; then one thread per (d, e) sums the
//             chunks in order and applies dw_beta (0: dw is not read). No atomics anywhere.
//
// Why w goes through shared memory: each token reads all of w (D*E*4 bytes, 64 KiB at D 2048,
// E 8), from L1 at lane strides of 8 rows; that touches 32 cache lines per load instruction.
// Staged with one padding word per 8 rows, lane l's row 8l + j falls in bank l*(8*stride + 1)
// + const (mod 32), an odd multiplier: the 32 lanes hit 32 banks.
//
// Bytes and time at T 8192, D 2048, E 8, bf16 u, on an H200 (4.3 TB/s DRAM, ~33 TB/s of shared
// memory over 132 SMs): forward reads u once (32 MiB, 7.8 us) while each token reads 64 KiB of
// staged w (512 MiB of shared-memory traffic, ~16 us): ~0.02 ms, against ~0.15 ms for the copy
// to f32 plus an f32 GEMM with N = 8. Backward: dw reads u (32 MiB) and writes and reads 8 MiB of
// partials; du reads and writes du (64 MiB); with the shared-memory reads of w ~0.04-0.05 ms,
// against ~0.35 ms for the copy, two f32 GEMMs and the add.
//
// Every kernel has a vector path (D % 8 == 0 and 16-byte aligned rows) and a scalar twin that
// assigns the same d to the same lane and sums in the same order: the two give the same bits.
#include <algorithm>
#include <cstdint>

#include "model/cuda/kernels.h"
#include "model/cuda/vec.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowWarps = 8;                   // warps per block in the row kernels
constexpr int kRowThreads = 32 * kRowWarps;
constexpr int kSpan = 32 * kVec;               // d covered by one warp-wide 16-byte load: 256
constexpr size_t kSmemBudget = 96 << 10;       // per block: two or three blocks per SM
constexpr int kMaxExpertChunk = 8;             // experts summed together per pass over a row
constexpr int kDwThreads = 128;                // dw partials: 8 d per thread, 1024 d per block
constexpr int64_t kDwMinChunkRows = 64;
constexpr size_t kDwPartialBudget = 32 << 20;  // f32 partials in scratch, at most

// Shared-memory index of (row, col) in a [rows, stride] tile with one padding word per 8 rows.
__host__ __device__ inline int padded(int row, int stride, int col) {
  return row * stride + col + (row >> 3);
}
inline size_t padded_bytes(int64_t rows, int64_t stride) {
  return static_cast<size_t>(rows * stride + (rows + 7) / 8) * sizeof(float);
}

// x[j] = row[d0 + j] in f32, 0 past D. Vec: one 16-byte access (the caller checked alignment).
template <bool Vec, class T>
__device__ inline void load_row8(const T* row, int64_t d0, int64_t D, float (&x)[kVec]) {
  if constexpr (Vec) {
    load8(row + d0, x);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) x[j] = d0 + j < D ? convert<float>(row[d0 + j]) : 0.0f;
  }
}

template <bool Vec, class T>
__device__ inline void store_row8(T* row, int64_t d0, int64_t D, const float (&x)[kVec]) {
  if constexpr (Vec) {
    store8(row + d0, x);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (d0 + j < D) row[d0 + j] = convert<T>(x[j]);
  }
}

// acc[c] += x[j] * w[d0 + j, c] over the lane's 8 rows (those below D), j ascending.
template <int EC, bool Vec>
__device__ inline void accumulate_rows(float (&acc)[EC], const float (&x)[kVec],
                                       const float* w_tile, int64_t d0, int64_t D) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    if (!Vec && d0 + j >= D) break;
    const float* w_row = w_tile + padded(static_cast<int>(d0) + j, EC, 0);
#pragma unroll
    for (int c = 0; c < EC; ++c) acc[c] = fmaf(x[j], w_row[c], acc[c]);
  }
}

// ---- forward --------------------------------------------------------------------------------
// Grid: x over token rows (grid-stride), y over chunks of EC experts. Shared: w[:, chunk],
// padded, zeros past E.
template <class T, int EC, bool Vec>
__global__ void __launch_bounds__(kRowThreads)
    logits_kernel(float* logits, const T* u, const float* w, int64_t N, int64_t D, int64_t E) {
  extern __shared__ float w_tile[];
  const int64_t e0 = static_cast<int64_t>(blockIdx.y) * EC;
  const int ec = static_cast<int>(min(static_cast<int64_t>(EC), E - e0));
  for (int64_t i = threadIdx.x; i < D * EC; i += blockDim.x) {
    const int d = static_cast<int>(i / EC), c = static_cast<int>(i % EC);
    w_tile[padded(d, EC, c)] = c < ec ? w[d * E + e0 + c] : 0.0f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5); t < N;
       t += stride) {
    const T* row = u + t * D;
    float acc[EC];
#pragma unroll
    for (int c = 0; c < EC; ++c) acc[c] = 0.0f;
    // Two 16-byte loads in flight per lane; the sums still run in d order.
    for (int64_t d0 = lane * kVec; d0 < D; d0 += 2 * kSpan) {
      const int64_t d1 = d0 + kSpan;
      float x0[kVec], x1[kVec];
      load_row8<Vec>(row, d0, D, x0);
      if (d1 < D) load_row8<Vec>(row, d1, D, x1);
      accumulate_rows<EC, Vec>(acc, x0, w_tile, d0, D);
      if (d1 < D) accumulate_rows<EC, Vec>(acc, x1, w_tile, d1, D);
    }
    float mine = 0.0f;
#pragma unroll
    for (int c = 0; c < EC; ++c) {
      const float total = warp_sum(acc[c]);
      if (lane == c) mine = total;
    }
    if (lane < ec) logits[t * E + e0 + lane] = mine;
  }
}

// ---- backward: du ---------------------------------------------------------------------------
// Grid: x over tiles of `tile_d` rows of w (8 per lane), y over token rows (grid-stride).
// Shared: w[tile, :], padded.
template <class T, bool Vec>
__global__ void __launch_bounds__(kRowThreads)
    du_kernel(T* du, const float* dlogits, const float* w, int64_t N, int64_t D, int64_t E,
              int tile_d) {
  extern __shared__ float w_tile[];
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x) * tile_d;
  const int rows = static_cast<int>(min(static_cast<int64_t>(tile_d), D - tile0));
  const int Ei = static_cast<int>(E);
  for (int i = threadIdx.x; i < tile_d * Ei; i += blockDim.x) {
    const int r = i / Ei, e = i % Ei;
    w_tile[padded(r, Ei, e)] = r < rows ? w[(tile0 + r) * E + e] : 0.0f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t d0 = tile0 + lane * kVec;
  if (lane * kVec >= tile_d || d0 >= D) return;  // no barrier follows
  const int local0 = lane * kVec;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * kRowWarps;
  for (int64_t t = static_cast<int64_t>(blockIdx.y) * kRowWarps + (threadIdx.x >> 5); t < N;
       t += stride) {
    T* row = du + t * D;
    float x[kVec];
    load_row8<Vec>(row, d0, D, x);  // issued first: independent of the sums below
    float sum[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum[j] = 0.0f;
    const float* g = dlogits + t * E;
    for (int e = 0; e < Ei; ++e) {
      const float ge = g[e];  // one address for the whole warp: a broadcast
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum[j] = fmaf(ge, w_tile[padded(local0 + j, Ei, e)], sum[j]);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) x[j] += sum[j];
    store_row8<Vec>(row, d0, D, x);
  }
}

// ---- backward: dw ---------------------------------------------------------------------------
// Grid: x over blocks of kDwThreads * 8 d, y over chunks of EC experts, z over chunks of
// `chunk_rows` token rows. partial[z, d, e] = sum over the chunk's rows, in order, of u[t, d]
// dlogits[t, e].
template <class T, int EC, bool Vec>
__global__ void __launch_bounds__(kDwThreads)
    dw_partial_kernel(float* partial, const T* u, const float* dlogits, int64_t N, int64_t D,
                      int64_t E, int64_t chunk_rows) {
  const int64_t d0 = (static_cast<int64_t>(blockIdx.x) * kDwThreads + threadIdx.x) * kVec;
  if (d0 >= D) return;
  const int64_t e0 = static_cast<int64_t>(blockIdx.y) * EC;
  const int ec = static_cast<int>(min(static_cast<int64_t>(EC), E - e0));
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * chunk_rows;
  const int64_t t1 = min(N, t0 + chunk_rows);
  float acc[kVec][EC];
#pragma unroll
  for (int j = 0; j < kVec; ++j)
#pragma unroll
    for (int c = 0; c < EC; ++c) acc[j][c] = 0.0f;
#pragma unroll 2
  for (int64_t t = t0; t < t1; ++t) {
    float x[kVec], g[EC];
    load_row8<Vec>(u + t * D, d0, D, x);
#pragma unroll
    for (int c = 0; c < EC; ++c) g[c] = c < ec ? dlogits[t * E + e0 + c] : 0.0f;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
#pragma unroll
      for (int c = 0; c < EC; ++c) acc[j][c] = fmaf(x[j], g[c], acc[j][c]);
  }
  float* out = partial + static_cast<int64_t>(blockIdx.z) * D * E;
#pragma unroll
  for (int j = 0; j < kVec; ++j)
    if (d0 + j < D)
#pragma unroll
      for (int c = 0; c < EC; ++c)
        if (c < ec) out[(d0 + j) * E + e0 + c] = acc[j][c];
}

// dw[i] = beta dw[i] + sum over chunks, in order, of partial[chunk, i]; beta 0 does not read dw.
__global__ void dw_finish_kernel(float* dw, const float* partial, int64_t chunks, int64_t n,
                                 float beta) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * n + i];
    dw[i] = beta == 0.0f ? sum : fmaf(beta, dw[i], sum);
  }
}

// ---- launch helpers -------------------------------------------------------------------------
// f(integral_constant<EC>) for EC in 1, 2, 4, 8.
template <class F>
void with_expert_chunk(int ec, F&& f) {
  switch (ec) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// f(bool_constant<Vec>)
template <class F>
void with_vec(bool vec, F&& f) {
  if (vec) f(std::true_type{});
  else f(std::false_type{});
}

// The smallest power of two >= E, at most kMaxExpertChunk.
int expert_chunk(int64_t E) {
  int ec = 1;
  while (ec < kMaxExpertChunk && ec < E) ec *= 2;
  return ec;
}

int sm_count(Context& ctx, const char* op) {
  int sms = 0;
  SY_CUDA(ctx, op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device));
  return std::max(sms, 1);
}

// Blocks that fit on the device at once for `kernel` with `smem` bytes (at least 1), after
// allowing that much dynamic shared memory.
template <class K>
int resident_blocks(Context& ctx, const char* op, K* kernel, int threads, size_t smem) {
  SY_CUDA(ctx, op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  int per_sm = 0;
  SY_CUDA(ctx, op, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return std::max(per_sm, 1) * sm_count(ctx, op);
}

unsigned clamp_grid(int64_t want, int64_t cap) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min({want, cap, int64_t{65535}})));
}

template <class T>
bool rows_vectorise(const T* rows, int64_t D) {
  return D % kVec == 0 && aligned16(rows);
}

// The du tile: 8 d per lane of a warp, as many lanes as w[tile, :] fits the budget (0: none).
int du_tile_rows(int64_t E) {
  int lanes = 32;
  while (lanes > 0 && padded_bytes(static_cast<int64_t>(lanes) * kVec, E) > kSmemBudget) --lanes;
  return lanes * kVec;
}

}  // namespace

bool router_logits(Context& ctx, const Tensor& logits, const Tensor& u, const Tensor& w) {
  const char* op = "router_logits";
  if (w.dtype() != DType::f32 || (u.dtype() != DType::bf16 && u.dtype() != DType::f32))
    return false;
  const int64_t N = u.dim(0), D = u.dim(1), E = w.dim(1);
  int ec = expert_chunk(E);
  while (ec > 1 && padded_bytes(D, ec) > kSmemBudget) ec /= 2;
  const size_t smem = padded_bytes(D, ec);
  if (smem > kSmemBudget) return false;  // D too wide for a one-expert tile
  if (N == 0) return true;
  const int64_t chunks = (E + ec - 1) / ec;
  if (chunks > 65535) return false;
  dispatch_float(u.dtype(), [&]<class T>(Tag<T>) {
    if constexpr (!std::is_same_v<T, double>) {
      const T* rows = u.ptr<T>();
      with_expert_chunk(ec, [&](auto EC) {
        with_vec(rows_vectorise(rows, D), [&](auto Vec) {
          auto* kernel = logits_kernel<T, EC.value, Vec.value>;
          const int resident = resident_blocks(ctx, op, kernel, kRowThreads, smem);
          const dim3 grid(clamp_grid((N + kRowWarps - 1) / kRowWarps,
                                     std::max<int64_t>(1, resident / chunks)),
                          static_cast<unsigned>(chunks));
          kernel<<<grid, kRowThreads, smem, ctx.stream>>>(logits.ptr<float>(), rows,
                                                          w.ptr<float>(), N, D, E);
        });
      });
    }
  });
  check_launch(ctx, op);
  return true;
}

bool router_logits_backward(Context& ctx, const Tensor& dw, const Tensor& du,
                            const Tensor& dlogits, const Tensor& u, const Tensor& w,
                            double dw_beta) {
  const char* op = "router_logits_backward";
  if (w.dtype() != DType::f32 || (u.dtype() != DType::bf16 && u.dtype() != DType::f32))
    return false;
  const int64_t N = u.dim(0), D = u.dim(1), E = w.dim(1);
  const int tile_d = du_tile_rows(E);
  if (tile_d == 0) return false;  // E too large for one row of w per lane
  // dw: chunks of at least kDwMinChunkRows rows, at most kDwPartialBudget of partials.
  const int64_t per_chunk = D * E * static_cast<int64_t>(sizeof(float));
  const int64_t max_chunks =
      std::max<int64_t>(1, static_cast<int64_t>(kDwPartialBudget) / std::max<int64_t>(per_chunk, 1));
  const int64_t chunks = std::clamp<int64_t>((N + kDwMinChunkRows - 1) / kDwMinChunkRows, 1,
                                             std::min<int64_t>(max_chunks, 65535));
  const int64_t chunk_rows = std::max<int64_t>(1, (N + chunks - 1) / chunks);
  const int ec = expert_chunk(E);
  const int64_t e_chunks = (E + ec - 1) / ec;
  if (e_chunks > 65535) return false;
  float* partial = static_cast<float*>(ctx.scratch(kScratchA, chunks * per_chunk));
  dispatch_float(u.dtype(), [&]<class T>(Tag<T>) {
    if constexpr (!std::is_same_v<T, double>) {
      const T* rows = u.ptr<T>();
      // dw partials first: du is not u, so the order is free; this one reads u.
      with_expert_chunk(ec, [&](auto EC) {
        with_vec(rows_vectorise(rows, D), [&](auto Vec) {
          const dim3 grid(static_cast<unsigned>((D + kDwThreads * kVec - 1) / (kDwThreads * kVec)),
                          static_cast<unsigned>(e_chunks), static_cast<unsigned>(chunks));
          dw_partial_kernel<T, EC.value, Vec.value><<<grid, kDwThreads, 0, ctx.stream>>>(
              partial, rows, dlogits.ptr<float>(), N, D, E, chunk_rows);
        });
      });
      check_launch(ctx, op);
      dw_finish_kernel<<<grid_for(D * E), kThreads, 0, ctx.stream>>>(
          dw.ptr<float>(), partial, chunks, D * E, static_cast<float>(dw_beta));
      check_launch(ctx, op);
      if (N == 0) return;
      T* grad_rows = du.ptr<T>();
      const size_t smem = padded_bytes(tile_d, E);
      with_vec(rows_vectorise(static_cast<const T*>(grad_rows), D), [&](auto Vec) {
        auto* kernel = du_kernel<T, Vec.value>;
        const int resident = resident_blocks(ctx, op, kernel, kRowThreads, smem);
        const int64_t tiles = (D + tile_d - 1) / tile_d;
        const dim3 grid(static_cast<unsigned>(tiles),
                        clamp_grid((N + kRowWarps - 1) / kRowWarps,
                                   std::max<int64_t>(1, resident / tiles)));
        kernel<<<grid, kRowThreads, smem, ctx.stream>>>(grad_rows, dlogits.ptr<float>(),
                                                        w.ptr<float>(), N, D, E, tile_d);
      });
      check_launch(ctx, op);
    }
  });
  return true;
}

}  // namespace sy::cuda
