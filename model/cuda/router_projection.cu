// The router's projection on the device (contract: Backend::router_logits and
// router_logits_backward, model/backend.h): f32 w [D, E], u and du rows in bf16 or f32, widened
// to f32 as they are read, so that the layer keeps no f32 copy of u and the [T, D] rows cross
// memory once each way.
//
//   forward   logits[t, e] = sum_d u[t, d] w[d, e]: one warp per 4 token rows (grid-stride),
//             each lane 8 consecutive d per 16-byte load, f32 partial sums for a chunk of EC
//             experts in registers, then a butterfly warp sum (every lane ends with the same
//             bits).
//   du        du[t, d] = round(du[t, d] + sum_e dlogits[t, e] w[d, e]), the sum over e in
//             ascending order: one warp per token row, each block a 256-wide tile of d.
//   input     dx[t, d] = round(sum of the token's kept rows[d] + the du term), the MoE layer's
//             whole input gradient in one pass (Backend::router_input_grad): du_kernel's grid,
//             with the permute's gather of each token's rows added first.
//   dw        dw = dw_beta dw + u^T dlogits in two deterministic passes: per chunk of rows, f32
//             partials [chunks, E, D] in scratch slot A; then one thread per (d, e) sums the
//             chunks in order and applies dw_beta (0: dw is not read). No atomics anywhere.
//
// Why w goes through shared memory: each token reads all of w (D*E*4 bytes, 64 KiB at D 2048,
// E 8), from L1 at lane strides of 8 rows; that touches 32 cache lines per load instruction.
// Staged with one padding word per 8 rows, lane l's row 8l + j falls in bank l*(8*stride + 1)
// + const (mod 32), an odd multiplier: the 32 lanes hit 32 banks.
//
// Bytes and time at T 8192, D 2048, E 8, bf16 u, on an H200 (4.3 TB/s DRAM, ~33 TB/s of shared
// memory over 132 SMs): forward reads u once (32 MiB, 7.8 us) while each warp's 4 tokens read
// 64 KiB of staged w (128 MiB of shared-memory traffic, ~4 us; 2 tokens a warp until 2026-12-06)
// and each block stages 64 KiB of w.
// Backward: dw reads u (32 MiB) and writes and reads 8 MiB of partials; du reads and writes du
// (64 MiB). At this size latency bounds them more than bytes (~8 warps an SM in dw, a few
// tokens a warp), so each thread keeps several loads in flight: four tokens of two 256-wide
// spans in the forward, 8 rows in dw, 16 staging loads, 16 chunks in the finishing sum.
// Measured (2026-12-03, one H200, bench/memory_bound_bench, same call as the previous
// kernels): forward 0.028 ms (was 0.044), backward 0.072 ms (was 0.123); per kernel, each timed
// alone by a one-off harness: dw partials 0.022, the finishing sum 0.010, du 0.041 (a copy of
// the same 64 MiB: 0.024). Tried: du with the lane's w rows in registers and 4 rows in flight,
// 0.039 ms: not the shared-memory reads, not worth a second du kernel.
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
constexpr size_t kSmemMax = 227 << 10;         // per block with the opt-in (sm_90)
constexpr int kMaxExpertChunk = 8;             // experts summed together per pass over a row
constexpr int kDwThreads = 128;                // dw partials: 8 d per thread, 1024 d per block
constexpr int64_t kDwMinChunkRows = 64;
constexpr int kDwTileRows = 64;                // dlogits rows in shared memory at a time
constexpr int kDwRowsInFlight = 8;             // rows of u loaded before their sums
constexpr int kLogitsBlocksPerSm = 2;
// Tokens a warp takes at once in the forward: each read of the w tile feeds all of them. Past 8
// experts the shared-memory reads of w bound the kernel (E per 8 d of each token), and 4 share
// each; at 8 experts 4 took 0.0262-0.0265 ms against 2's 0.0281-0.0292 (T 8192, D 2048, two
// H100s whose unchanged kernels differ by 1-2%, 2026-12-06).
constexpr int kLogitsTokens = 4;
constexpr size_t kDwPartialBudget = 32 << 20;  // f32 partials in scratch, at most

// Shared-memory index of (row, col) in a [rows, stride] tile with one padding word per 8 rows.
__host__ __device__ inline int padded(int row, int stride, int col) {
  return row * stride + col + (row >> 3);
}
__host__ __device__ inline size_t padded_bytes(int64_t rows, int64_t stride) {
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

// acc[i][c] += x[i][j] * w[d0 + j, c] over the lane's 8 rows (those below D), j ascending:
// the TOK tokens share each read of the tile.
template <int EC, int TOK, bool Vec>
__device__ inline void accumulate_rows(float (&acc)[TOK][EC], const float (&x)[TOK][kVec],
                                       const float* w_tile, int64_t d0, int64_t D) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    if (!Vec && d0 + j >= D) break;
    const float* w_row = w_tile + padded(static_cast<int>(d0) + j, EC, 0);
#pragma unroll
    for (int c = 0; c < EC; ++c) {
      const float wv = w_row[c];
#pragma unroll
      for (int i = 0; i < TOK; ++i) acc[i][c] = fmaf(x[i][j], wv, acc[i][c]);
    }
  }
}

// tile[padded(r, cols, c)] = src[(row0 + r) * ld + col0 + c] for r < rows, c < cols, 0 where
// r >= valid_rows or c >= valid_cols. kStageLoads loads in flight per thread before their
// stores: a plain strided loop waits on each load in turn (64 round trips to L2 per thread for
// the forward's 64 KiB tile, before any token's sums can start).
constexpr int kStageLoads = 16;
__device__ inline void stage_padded(float* tile, const float* src, int rows, int cols,
                                    int valid_rows, int valid_cols, int64_t row0, int64_t col0,
                                    int64_t ld) {
  const int n = rows * cols;
  for (int base = threadIdx.x; base < n; base += kStageLoads * blockDim.x) {
    float v[kStageLoads];
#pragma unroll
    for (int k = 0; k < kStageLoads; ++k) {
      const int i = base + k * static_cast<int>(blockDim.x), r = i / cols, c = i % cols;
      v[k] = i < n && r < valid_rows && c < valid_cols ? src[(row0 + r) * ld + col0 + c] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kStageLoads; ++k) {
      const int i = base + k * static_cast<int>(blockDim.x);
      if (i < n) tile[padded(i / cols, cols, i % cols)] = v[k];
    }
  }
}

// Eight consecutive values of a row as loaded, widened when read (get): bf16 stay packed in
// 4 registers until then, so that a thread keeps several rows' loads in flight cheaply.
template <class T, bool Vec>
struct Row8 {  // element path (and f32 rows): widened at load
  float v[kVec];
  __device__ void load(const T* row, int64_t d0, int64_t D) { load_row8<Vec>(row, d0, D, v); }
  __device__ void get(float (&x)[kVec]) const {
#pragma unroll
    for (int j = 0; j < kVec; ++j) x[j] = v[j];
  }
};
template <>
struct Row8<bf16, true> {
  uint4 raw;
  __device__ void load(const bf16* row, int64_t d0, int64_t) { raw = load_raw8(row + d0); }
  __device__ void get(float (&x)[kVec]) const { unpack8(raw, x); }
};

// ---- forward --------------------------------------------------------------------------------
// Grid: x over groups of TOK consecutive token rows (grid-stride), y over chunks of EC experts.
// Shared: w[:, chunk], padded, zeros past E. A warp takes TOK tokens at a time: each read of the
// tile feeds all of them (shared-memory reads, not bytes from memory, bound this kernel once the
// experts take several chunks), and 2 TOK 16-byte loads per lane are in flight; each token's
// sums run in d order whatever TOK is, so TOK does not change a bit.
template <class T, int EC, int TOK, bool Vec>
__global__ void __launch_bounds__(kRowThreads)
    logits_kernel(float* logits, const T* u, const float* w, int64_t N, int64_t D, int64_t E) {
  extern __shared__ float w_tile[];
  const int64_t e0 = static_cast<int64_t>(blockIdx.y) * EC;
  const int ec = static_cast<int>(min(static_cast<int64_t>(EC), E - e0));
  stage_padded(w_tile, w, static_cast<int>(D), EC, static_cast<int>(D), ec, 0, e0, E);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
       TOK * group < N; group += stride) {
    const int64_t t = TOK * group;
    const int tokens = static_cast<int>(min(static_cast<int64_t>(TOK), N - t));
    float acc[TOK][EC];
#pragma unroll
    for (int i = 0; i < TOK; ++i)
#pragma unroll
      for (int c = 0; c < EC; ++c) acc[i][c] = 0.0f;
    for (int64_t d0 = lane * kVec; d0 < D; d0 += 2 * kSpan) {
      const int64_t d1 = d0 + kSpan;
      float x0[TOK][kVec] = {}, x1[TOK][kVec] = {};  // tokens past N: sums of zeros, not stored
#pragma unroll
      for (int i = 0; i < TOK; ++i)
        if (i < tokens) load_row8<Vec>(u + (t + i) * D, d0, D, x0[i]);
      if (d1 < D) {
#pragma unroll
        for (int i = 0; i < TOK; ++i)
          if (i < tokens) load_row8<Vec>(u + (t + i) * D, d1, D, x1[i]);
      }
      accumulate_rows<EC, TOK, Vec>(acc, x0, w_tile, d0, D);
      if (d1 < D) accumulate_rows<EC, TOK, Vec>(acc, x1, w_tile, d1, D);
    }
    float mine[TOK];
#pragma unroll
    for (int i = 0; i < TOK; ++i) {
      mine[i] = 0.0f;
#pragma unroll
      for (int c = 0; c < EC; ++c) {
        const float total = warp_sum(acc[i][c]);
        if (lane == c) mine[i] = total;
      }
    }
    if (lane < ec)
#pragma unroll
      for (int i = 0; i < TOK; ++i)
        if (i < tokens) logits[(t + i) * E + e0 + lane] = mine[i];
  }
}

// ---- backward: du ---------------------------------------------------------------------------
// Stages w[tile, :] for this block's tile of `tile_d` rows of w (blockIdx.x), padded, and gives
// the lane its 8 d: d0 in w, local0 in the tile. False for a lane past the tile or D, which has
// nothing to do (the barrier is behind it).
__device__ inline bool stage_tile_of_d(float* w_tile, const float* w, int64_t D, int64_t E,
                                       int tile_d, int64_t& d0, int& local0) {
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x) * tile_d;
  const int rows = static_cast<int>(min(static_cast<int64_t>(tile_d), D - tile0));
  const int Ei = static_cast<int>(E);
  stage_padded(w_tile, w, tile_d, Ei, rows, Ei, tile0, 0, E);
  __syncthreads();
  local0 = (threadIdx.x & 31) * kVec;
  d0 = tile0 + local0;
  return local0 < tile_d && d0 < D;
}

// Grid: x over tiles of `tile_d` rows of w (8 per lane), y over token rows (grid-stride).
// Shared: w[tile, :], padded.
template <class T, bool Vec>
__global__ void __launch_bounds__(kRowThreads)
    du_kernel(T* du, const float* dlogits, const float* w, int64_t N, int64_t D, int64_t E,
              int tile_d) {
  extern __shared__ float w_tile[];
  const int Ei = static_cast<int>(E);
  int64_t d0;
  int local0;
  if (!stage_tile_of_d(w_tile, w, D, E, tile_d, d0, local0)) return;  // no barrier follows
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

// ---- the MoE layer's input gradient: du, with the permute's gather ---------------------------
// dx[t, d] = round(sum over kept k of rows[slot_row[t K + k], d] + sum_e dlogits[t, e] w[d, e]):
// the rows added in k order from 0 (as permute_rows_backward's gather), the router's term as
// du_kernel sums it, both in f32, rounded once. Grid and w tile as du_kernel's. A warp takes
// kInputGradTokens consecutive tokens at a time and stages their dlogits rows (contiguous) in
// its part of shared memory with coalesced loads; each read of the w tile then feeds all of its
// tokens. Measured at E 64, top-8, 16k tokens, D 768 (one H100, 2026-12-05, a call each): 2
// tokens a warp reading dlogits from global memory at each e took 176 us (Nsight Compute: 104M
// instructions, issue-bound and waiting on those loads); 4 tokens staged, 146 us; 8 tokens need
// more than 128 registers and took 630 us; 4 tokens with each token's 8 rows loaded at once
// (and its slot rows staged too), 162 us. So the rows still come 2 at a time; at top-1 and top-2
// (PrefetchedRows) all of a warp's rows are loaded before the sums over e: 0.0561 -> 0.0506 ms
// at T 8192, D 2048, E 8 (one H100, 2026-12-06, memory_bound_bench, two rounds).
constexpr int kInputGradTokens = 4;

template <class T, bool Vec>
struct TokenRows {
  const T* rows;
  const int32_t* slot_row;
  int64_t K, D;

  // acc[j] = sum over kept k, ascending, of the token's row r_k at d0 + j.
  __device__ void gather(int64_t t, int64_t d0, float (&acc)[kVec]) const {
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = 0.0f;
    for (int64_t k = 0; k < K; k += 2) {
      const int32_t r0 = slot_row[t * K + k];
      const int32_t r1 = k + 1 < K ? slot_row[t * K + k + 1] : -1;
      Row8<T, Vec> y0, y1;
      if (r0 >= 0) y0.load(rows + static_cast<int64_t>(r0) * D, d0, D);
      if (r1 >= 0) y1.load(rows + static_cast<int64_t>(r1) * D, d0, D);
      float y[kVec];
      if (r0 >= 0) {
        y0.get(y);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] += y[j];
      }
      if (r1 >= 0) {
        y1.get(y);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] += y[j];
      }
    }
  }
};

// Top-1 and top-2 on bf16 rows: a warp's TOK tokens' rows (at most 2 each) loaded before the
// router's sums and added after them, so that their loads wait behind the shared-memory
// arithmetic rather than after it. The same sums in the same order as TokenRows::gather.
template <int TOK>
struct PrefetchedRows {
  uint4 raw[TOK][2];
  int32_t row[TOK][2];

  // Every lane of the warp calls this (the shuffles): lane i < tokens * K holds slot t0 K + i.
  __device__ void load(const TokenRows<bf16, true>& rows, int64_t t0, int tokens, int64_t d0,
                       bool mine) {
    const int lane = threadIdx.x & 31, K = static_cast<int>(rows.K);
    const int32_t my = lane < tokens * K ? rows.slot_row[t0 * K + lane] : -1;
#pragma unroll
    for (int i = 0; i < TOK; ++i)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        row[i][k] = __shfl_sync(0xffffffffu, my, (i * K + k) & 31);
        if (k >= K || i >= tokens) row[i][k] = -1;
        if (mine && row[i][k] >= 0)
          raw[i][k] = load_raw8(rows.rows + static_cast<int64_t>(row[i][k]) * rows.D + d0);
      }
  }
  __device__ void gather(int i, float (&acc)[kVec]) const {
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (row[i][k] < 0) continue;
      float y[kVec];
      unpack8(raw[i][k], y);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += y[j];
    }
  }
};

// Shared memory: the w tile (du_kernel's), then each warp's [kInputGradTokens, E] dlogits.
inline size_t input_grad_smem_bytes(int tile_d, int64_t E) {
  return padded_bytes(tile_d, E) + static_cast<size_t>(kRowWarps) * kInputGradTokens * E * 4;
}

template <class T, bool Vec, bool Prefetch>
__global__ void __launch_bounds__(kRowThreads, 2)  // 2 blocks an SM: at most 128 registers
    input_grad_kernel(T* dx, TokenRows<T, Vec> rows, const float* dlogits, const float* w,
                      int64_t N, int64_t D, int64_t E, int tile_d) {
  constexpr int TOK = kInputGradTokens;
  extern __shared__ float w_tile[];
  const int Ei = static_cast<int>(E);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* g = w_tile + padded_bytes(tile_d, E) / sizeof(float) + warp * TOK * Ei;
  int64_t d0;
  int local0;
  const bool mine = stage_tile_of_d(w_tile, w, D, E, tile_d, d0, local0);
  // (A lane past the tile still stages dlogits with its warp; it skips the sums and stores.)
  const int64_t stride = static_cast<int64_t>(gridDim.y) * kRowWarps * TOK;
  for (int64_t t0 = (static_cast<int64_t>(blockIdx.y) * kRowWarps + warp) * TOK; t0 < N;
       t0 += stride) {
    const int tokens = static_cast<int>(min(static_cast<int64_t>(TOK), N - t0));
    __syncwarp();  // the previous tokens' reads of g are done
    for (int i = lane; i < tokens * Ei; i += 32) g[i] = dlogits[t0 * E + i];
    [[maybe_unused]] PrefetchedRows<TOK> prefetched;
    if constexpr (Prefetch) prefetched.load(rows, t0, tokens, d0, mine);
    __syncwarp();
    if (!mine) continue;
    float sum[TOK][kVec];
#pragma unroll
    for (int i = 0; i < TOK; ++i)
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum[i][j] = 0.0f;
    for (int e = 0; e < Ei; ++e) {
      float wv[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) wv[j] = w_tile[padded(local0 + j, Ei, e)];
#pragma unroll
      for (int i = 0; i < TOK; ++i) {
        const float ge = g[i * Ei + e];  // one address a warp: a broadcast (unused past tokens)
#pragma unroll
        for (int j = 0; j < kVec; ++j) sum[i][j] = fmaf(ge, wv[j], sum[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < TOK; ++i) {
      if (i >= tokens) break;
      float acc[kVec];
      if constexpr (Prefetch) prefetched.gather(i, acc);
      else rows.gather(t0 + i, d0, acc);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += sum[i][j];
      store_row8<Vec>(dx + (t0 + i) * D, d0, D, acc);
    }
  }
}

// ---- backward: dw ---------------------------------------------------------------------------
// Grid: x over blocks of kDwThreads * 8 d, y over chunks of EC experts, z over chunks of
// `chunk_rows` token rows. partial[z, e, d] = sum over the chunk's rows, in order, of u[t, d]
// dlogits[t, e]: e-major, so that a warp's stores for one e are 1 KiB in a row (d-major, each
// lane's 64 words sat 256 bytes from its neighbours': 0.051 ms against 0.022 now, at T 8192,
// measured). Chunks of 64 rows: 0.022 ms, against 0.030 at 32 and 0.027 at 128. The chunk's
// dlogits go through shared memory kDwTileRows rows at a time (read there as broadcasts), and
// each thread keeps kDwRowsInFlight rows of u in flight: about 8 warps an SM run this kernel,
// and one row at a time left DRAM mostly idle, waiting on each load.
template <class T, int EC, bool Vec>
__global__ void __launch_bounds__(kDwThreads)
    dw_partial_kernel(float* partial, const T* u, const float* dlogits, int64_t N, int64_t D,
                      int64_t E, int64_t chunk_rows) {
  __shared__ float g_tile[kDwTileRows * EC + kDwTileRows / 8];  // padded [kDwTileRows, EC]
  const int64_t d0 = (static_cast<int64_t>(blockIdx.x) * kDwThreads + threadIdx.x) * kVec;
  const bool active = d0 < D;  // no early return: the whole block stages dlogits
  const int64_t e0 = static_cast<int64_t>(blockIdx.y) * EC;
  const int ec = static_cast<int>(min(static_cast<int64_t>(EC), E - e0));
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * chunk_rows;
  const int64_t t1 = min(N, t0 + chunk_rows);
  float acc[kVec][EC];
#pragma unroll
  for (int j = 0; j < kVec; ++j)
#pragma unroll
    for (int c = 0; c < EC; ++c) acc[j][c] = 0.0f;
  for (int64_t tile0 = t0; tile0 < t1; tile0 += kDwTileRows) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(kDwTileRows), t1 - tile0));
    __syncthreads();  // the previous tile's reads are done
    stage_padded(g_tile, dlogits, rows, EC, rows, ec, tile0, e0, E);
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < rows; r += kDwRowsInFlight) {
      Row8<T, Vec> batch[kDwRowsInFlight];
#pragma unroll
      for (int i = 0; i < kDwRowsInFlight; ++i)
        if (r + i < rows) batch[i].load(u + (tile0 + r + i) * D, d0, D);
#pragma unroll
      for (int i = 0; i < kDwRowsInFlight; ++i) {
        if (r + i >= rows) break;
        float x[kVec];
        batch[i].get(x);
        const float* g = g_tile + padded(r + i, EC, 0);
#pragma unroll
        for (int j = 0; j < kVec; ++j)
#pragma unroll
          for (int c = 0; c < EC; ++c) acc[j][c] = fmaf(x[j], g[c], acc[j][c]);
      }
    }
  }
  if (!active) return;
  float* out = partial + static_cast<int64_t>(blockIdx.z) * D * E;
#pragma unroll
  for (int c = 0; c < EC; ++c) {
    if (c >= ec) break;
    float col[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) col[j] = acc[j][c];
    store_row8<Vec>(out + (e0 + c) * D, d0, D, col);  // Vec: D % 8 == 0, so 32-byte aligned
  }
}

// dw[d, e] = beta dw[d, e] + sum over chunks, in order, of partial[chunk, e, d]; beta 0 does not
// read dw. The loads of kFinishLoads chunks are issued before their adds: one at a time, 128
// chunks were 128 round trips to L2 per thread.
__global__ void dw_finish_kernel(float* dw, const float* partial, int64_t chunks, int64_t D,
                                 int64_t E, float beta) {
  const int64_t n = D * E;
  constexpr int kFinishLoads = 16;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float sum = sum_in_order<kFinishLoads>(partial + i, chunks, n);
    float* out = dw + (i % D) * E + i / D;
    *out = beta == 0.0f ? sum : fmaf(beta, *out, sum);
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
          auto* kernel = logits_kernel<T, EC.value, kLogitsTokens, Vec.value>;
          // Each block stages its 64 KiB of w first: two blocks an SM read u as fast as three
          // (measured 0.028 ms against 0.032 at T 8192, D 2048, E 8) and stage a third less.
          const int resident = std::min(resident_blocks(ctx, op, kernel, kRowThreads, smem),
                                        kLogitsBlocksPerSm * sm_count(ctx, op));
          const int64_t groups = (N + kLogitsTokens - 1) / kLogitsTokens;
          const dim3 grid(clamp_grid((groups + kRowWarps - 1) / kRowWarps,
                                     std::max<int64_t>(1, resident / chunks)),
                          static_cast<unsigned>(chunks));
          kernel<<<grid, kRowThreads, smem, ctx.stream>>>(logits.ptr<float>(), rows, w.ptr<float>(),
                                                          N, D, E);
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
        with_vec(rows_vectorise(rows, D) && aligned16(partial), [&](auto Vec) {
          const dim3 grid(static_cast<unsigned>((D + kDwThreads * kVec - 1) / (kDwThreads * kVec)),
                          static_cast<unsigned>(e_chunks), static_cast<unsigned>(chunks));
          dw_partial_kernel<T, EC.value, Vec.value><<<grid, kDwThreads, 0, ctx.stream>>>(
              partial, rows, dlogits.ptr<float>(), N, D, E, chunk_rows);
        });
      });
      check_launch(ctx, op);
      dw_finish_kernel<<<grid_for(D * E), kThreads, 0, ctx.stream>>>(
          dw.ptr<float>(), partial, chunks, D, E, static_cast<float>(dw_beta));
      check_launch(ctx, op);
      if (N == 0 || !du.defined()) return;
      T* grad_rows = du.ptr<T>();
      with_vec(rows_vectorise(static_cast<const T*>(grad_rows), D), [&](auto Vec) {
        const size_t smem = padded_bytes(tile_d, E);
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

bool router_input_grad(Context& ctx, const Tensor& dx, const Tensor& dx_perm,
                       const Tensor& slot_row, int64_t K, const Tensor& dlogits, const Tensor& w) {
  const char* op = "router_input_grad";
  if (w.dtype() != DType::f32 || (dx.dtype() != DType::bf16 && dx.dtype() != DType::f32))
    return false;
  const int64_t N = dx.dim(0), D = dx.dim(1), E = w.dim(1);
  const int tile_d = du_tile_rows(E);
  if (tile_d == 0 || input_grad_smem_bytes(tile_d, E) > kSmemMax) return false;  // E too large
  if (N == 0) return true;
  dispatch_float(dx.dtype(), [&]<class T>(Tag<T>) {
    if constexpr (!std::is_same_v<T, double>) {
      const bool vec = rows_vectorise(static_cast<const T*>(dx.ptr<T>()), D) &&
                       rows_vectorise(dx_perm.ptr<T>(), D);
      with_vec(vec, [&](auto Vec) {
        const size_t smem = input_grad_smem_bytes(tile_d, E);
        auto* kernel = input_grad_kernel<T, Vec.value, false>;
        if constexpr (Vec.value && std::is_same_v<T, bf16>)
          if (K <= 2) kernel = input_grad_kernel<T, true, true>;
        const int resident = resident_blocks(ctx, op, kernel, kRowThreads, smem);
        const int64_t tiles = (D + tile_d - 1) / tile_d;
        const int64_t per_block = kRowWarps * kInputGradTokens;
        const dim3 grid(
            static_cast<unsigned>(tiles),
            clamp_grid((N + per_block - 1) / per_block, std::max<int64_t>(1, resident / tiles)));
        const TokenRows<T, Vec.value> rows{dx_perm.ptr<T>(), slot_row.ptr<int32_t>(), K, D};
        kernel<<<grid, kRowThreads, smem, ctx.stream>>>(dx.ptr<T>(), rows, dlogits.ptr<float>(),
                                                        w.ptr<float>(), N, D, E, tile_d);
      });
    }
  });
  check_launch(ctx, op);
  return true;
}

}  // namespace sy::cuda
