// The portable grouped GEMM (contract in grouped_gemm.h): bf16 tensor cores through
// mma.sync.m16n8k16 (sm_80 and up), fp32 accumulation, one persistent launch for every segment.
//
// Every form is one logical GEMM per tile, out[m, n] = sum_r Aop[m, r] * Bop[r, n]:
//   forward        Aop = A[seg g]       (K-major in memory)   Bop = B[g]   [K, N] (N-major)
//   forward trans  Aop = A[seg g]       (K-major)             Bop = B[g]^T, B[g] [N, K] (K-major)
//   wgrad          Aop = A[seg g]^T     (M-major: the reduction runs down A's rows)
//                  Bop = B[seg g]       (N-major)
// Shared memory keeps each operand tile in its global layout (rows of 8-element, 16-byte chunks
// copied by cp.async, padded by 16 bytes per row so that ldmatrix reads are conflict-free);
// ldmatrix.trans turns an MN-major tile into the fragment that mma wants.
//
// Tiles: 128 x 256 outputs per CTA, 8 warps of 64 x 64, a reduction step of 64 in a 3-stage
// cp.async pipeline. A persistent grid (as many CTAs as fit on the device) walks all tiles of all
// segments: forward tiles are (segment, 128-row block of it, 256-column block), so a tile never
// crosses a segment; the loads zero-fill rows past the segment's end (and columns past K or N)
// and the epilogue stores only inside the segment. wgrad tiles are (segment, block of C[g]); the
// reduction walks the segment's rows and zero-fills those past its end, so rows of the next
// segment never contribute, and an empty segment stores zeros. Each output element is summed by
// one thread in a fixed order: results are bitwise repeatable.
//
// Declines (returns false) unless K and N are multiples of 8 and A, B and C are 16-byte aligned
// (whole 16-byte chunks per row), and for more than kMaxGroups segments.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "model/cuda/env_choice.h"
#include "model/cuda/grouped_gemm.h"
#include "model/cuda/kernels.h"
#include "model/cuda/mma.cuh"

namespace sy::cuda {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 3;
constexpr int kWarpsN = 4, kWarpM = 64, kWarpN = 64;  // 2 x 4 warps of 64 x 64
constexpr int kMmaThreads = 256;
constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;  // m16n8k16 tiles per warp
constexpr int kPad = 8;  // bf16 elements (16 bytes) added to every shared-memory row
constexpr int kMaxGroups = 1024;

// Elements of one stage's tile of an operand with `outer` rows (M or N) and kBK reduction steps.
constexpr int tile_elements(bool k_major, int outer) {
  return k_major ? outer * (kBK + kPad) : kBK * (outer + kPad);
}

template <bool kWgrad, bool kTransB>
struct Layout {
  static constexpr bool a_k_major = !kWgrad;
  static constexpr bool b_k_major = !kWgrad && kTransB;
  static constexpr int a_tile = tile_elements(a_k_major, kBM);
  static constexpr int b_tile = tile_elements(b_k_major, kBN);
  static constexpr size_t smem_bytes = size_t{kStages} * (a_tile + b_tile) * sizeof(bf16);
};

struct Problem {
  const bf16* A;
  const bf16* B;
  void* C;
  const int32_t* offsets;  // [groups + 1]
  int groups;
  int K, N;
  int tiles_n;        // column blocks of C
  int tiles_k;        // wgrad: row blocks of C[g] (K rows)
  int64_t tiles;      // all tiles of the launch
  bool accumulate;
};

// ---- tiles ----------------------------------------------------------------------------------
// Shared [kRows, kCols] (row stride kCols + kPad) <- global rows row0.. and columns col0.. of a
// matrix with leading dimension ld, in 16-byte chunks; chunks at rows >= row_end or columns
// >= col_end are zero-filled (kCols and col_end are multiples of 8, so a chunk is all in or out).
template <int kRows, int kCols>
__device__ inline void load_tile(bf16* smem, const bf16* gmem, int64_t ld, int row0, int row_end,
                                 int col0, int col_end) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kMmaThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int j = 0; j < kChunks / kMmaThreads; ++j) {
    const int chunk = j * kMmaThreads + static_cast<int>(threadIdx.x);
    const int r = chunk / kChunksPerRow, c = (chunk % kChunksPerRow) * 8;
    const int row = row0 + r, col = col0 + c;
    const bool valid = row < row_end && col < col_end;
    const bf16* src = valid ? gmem + static_cast<int64_t>(row) * ld + col : gmem;
    cp_async_16(smem + r * (kCols + kPad) + c, src, valid);
  }
}

// C (=, +=) two adjacent columns (8- or 4-byte aligned: the column is even and N a multiple of 8).
__device__ inline void store_pair(float* dst, float v0, float v1, bool accumulate) {
  float2* d = reinterpret_cast<float2*>(dst);
  if (accumulate) {
    const float2 old = *d;
    v0 += old.x;
    v1 += old.y;
  }
  *d = make_float2(v0, v1);
}
__device__ inline void store_pair(bf16* dst, float v0, float v1, bool accumulate) {
  __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(dst);
  if (accumulate) {
    const float2 old = __bfloat1622float2(*d);
    v0 += old.x;
    v1 += old.y;
  }
  *d = __floats2bfloat162_rn(v0, v1);
}

template <bool kWgrad, bool kTransB, class CT>
__global__ void __launch_bounds__(kMmaThreads, 1) grouped_gemm_mma_kernel(Problem p) {
  using L = Layout<kWgrad, kTransB>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* const a_stages = reinterpret_cast<bf16*>(smem_raw);  // [kStages][a_tile]
  bf16* const b_stages = a_stages + kStages * L::a_tile;      // [kStages][b_tile]
  // Forward: the first 128-row block of each segment in the launch's numbering of row blocks.
  __shared__ int first_block[kMaxGroups + 1];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;

  if constexpr (!kWgrad) {
    if (warp == 0) {  // exclusive scan of ceil(rows / kBM) over the segments
      int carry = 0;
      for (int base = 0; base < p.groups; base += 32) {
        const int g = base + lane;
        const int blocks = g < p.groups ? (p.offsets[g + 1] - p.offsets[g] + kBM - 1) / kBM : 0;
        int sum = blocks;
        for (int d = 1; d < 32; d <<= 1) {
          const int up = __shfl_up_sync(0xffffffffu, sum, d);
          if (lane >= d) sum += up;
        }
        if (g < p.groups) first_block[g] = carry + sum - blocks;
        carry += __shfl_sync(0xffffffffu, sum, 31);
      }
      if (lane == 0) first_block[p.groups] = carry;
    }
    __syncthreads();
  }

  for (int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    int g, block_m, block_n;
    if constexpr (kWgrad) {
      const int64_t per_group = static_cast<int64_t>(p.tiles_k) * p.tiles_n;
      g = static_cast<int>(tile / per_group);
      const int rest = static_cast<int>(tile % per_group);
      block_m = rest / p.tiles_n;
      block_n = rest % p.tiles_n;
    } else {
      const int row_block = static_cast<int>(tile / p.tiles_n);
      block_n = static_cast<int>(tile % p.tiles_n);
      // The last segment starting at or before this row block (an empty segment starts where
      // the next one does, so the search passes over it).
      int lo = 0, hi = p.groups - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (first_block[mid] <= row_block) lo = mid;
        else hi = mid - 1;
      }
      g = lo;
      block_m = row_block - first_block[g];
    }
    const int seg_begin = p.offsets[g], seg_end = p.offsets[g + 1];
    const int reduction = kWgrad ? seg_end - seg_begin : p.K;
    const int k_steps = (reduction + kBK - 1) / kBK;

    auto load_stage = [&](int stage, int step) {
      bf16* a_tile = a_stages + stage * L::a_tile;
      bf16* b_tile = b_stages + stage * L::b_tile;
      const int r0 = step * kBK;
      if constexpr (!kWgrad) {
        load_tile<kBM, kBK>(a_tile, p.A, p.K, seg_begin + block_m * kBM, seg_end, r0, p.K);
        const bf16* b = p.B + static_cast<int64_t>(g) * p.K * p.N;
        if constexpr (kTransB)  // B[g] [N, K]
          load_tile<kBN, kBK>(b_tile, b, p.K, block_n * kBN, p.N, r0, p.K);
        else  // B[g] [K, N]
          load_tile<kBK, kBN>(b_tile, b, p.N, r0, p.K, block_n * kBN, p.N);
      } else {  // the reduction runs down the segment's rows of A [M, K] and B [M, N]
        load_tile<kBK, kBM>(a_tile, p.A, p.K, seg_begin + r0, seg_end, block_m * kBM, p.K);
        load_tile<kBK, kBN>(b_tile, p.B, p.N, seg_begin + r0, seg_end, block_n * kBN, p.N);
      }
    };

    float acc[kFragsM][kFragsN][4];
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    __syncthreads();  // every warp is done reading the previous tile's stages
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < k_steps) load_stage(s, s);
      cp_async_commit();  // one group per stage, empty or not, so that the wait count holds
    }
    for (int step = 0; step < k_steps; ++step) {
      cp_async_wait<kStages - 2>();  // this step's stage has landed (for this thread) ...
      __syncthreads();               // ... for every thread; and the stage refilled below is free
      const int next = step + kStages - 1;
      if (next < k_steps) load_stage(next % kStages, next);
      cp_async_commit();

      const bf16* a_tile = a_stages + (step % kStages) * L::a_tile;
      const bf16* b_tile = b_stages + (step % kStages) * L::b_tile;
      // ldmatrix x4: lane l addresses row (l % 8) of 8x8 matrix l / 8.
      const int i = lane >> 3, r = lane & 7;
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        uint32_t a[kFragsM][4], b[kFragsN][2];
#pragma unroll
        for (int fm = 0; fm < kFragsM; ++fm) {
          const int m0 = warp_m * kWarpM + fm * 16;
          // matrices: (rows m0.., k kk..), (m0+8.., kk..), (m0.., kk+8..), (m0+8.., kk+8..)
          if constexpr (L::a_k_major)
            ldmatrix_x4(a[fm], a_tile + (m0 + r + (i & 1) * 8) * (kBK + kPad) + kk + (i >> 1) * 8);
          else
            ldmatrix_x4_trans(a[fm],
                              a_tile + (kk + r + (i >> 1) * 8) * (kBM + kPad) + m0 + (i & 1) * 8);
        }
#pragma unroll
        for (int fn = 0; fn < kFragsN; fn += 2) {
          const int n0 = warp_n * kWarpN + fn * 8;
          // matrices: (n0.., k kk..), (n0.., kk+8..), (n0+8.., kk..), (n0+8.., kk+8..): the
          // fragments of the n8 tiles n0 and n0 + 8
          uint32_t t[4];
          if constexpr (L::b_k_major)
            ldmatrix_x4(t, b_tile + (n0 + r + (i >> 1) * 8) * (kBK + kPad) + kk + (i & 1) * 8);
          else
            ldmatrix_x4_trans(t, b_tile + (kk + r + (i & 1) * 8) * (kBN + kPad) + n0 + (i >> 1) * 8);
          b[fn][0] = t[0];
          b[fn][1] = t[1];
          b[fn + 1][0] = t[2];
          b[fn + 1][1] = t[3];
        }
#pragma unroll
        for (int fm = 0; fm < kFragsM; ++fm)
#pragma unroll
          for (int fn = 0; fn < kFragsN; ++fn) mma_bf16(acc[fm][fn], a[fm], b[fn][0], b[fn][1]);
      }
    }
    cp_async_wait<0>();  // only empty groups are left; nothing may be in flight at the next tile

    // Epilogue: thread (lane) holds rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1} of
    // each m16n8 tile.
    CT* c = static_cast<CT*>(p.C);
    int row0, row_end;
    if constexpr (kWgrad) {
      c += static_cast<int64_t>(g) * p.K * p.N;
      row0 = block_m * kBM;
      row_end = p.K;
    } else {
      row0 = seg_begin + block_m * kBM;
      row_end = seg_end;
    }
    row0 += warp_m * kWarpM + lane / 4;
    const int col0 = block_n * kBN + warp_n * kWarpN + 2 * (lane % 4);
#pragma unroll
    for (int fm = 0; fm < kFragsM; ++fm)
#pragma unroll
      for (int fn = 0; fn < kFragsN; ++fn) {
        const int col = col0 + fn * 8;
        if (col >= p.N) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = row0 + fm * 16 + half * 8;
          if (row >= row_end) continue;
          store_pair(c + static_cast<int64_t>(row) * p.N + col, acc[fm][fn][2 * half],
                     acc[fm][fn][2 * half + 1], p.accumulate);
        }
      }
  }
}

// Per device: can the kernel run there, and how many CTAs fit on one SM.
template <bool kWgrad, bool kTransB, class CT>
int ctas_per_sm(Context& ctx, const char* op) {
  static std::mutex mutex;
  static std::map<int, int> per_device;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = per_device.find(ctx.device);
  if (it != per_device.end()) return it->second;
  auto* kernel = grouped_gemm_mma_kernel<kWgrad, kTransB, CT>;
  const size_t smem = Layout<kWgrad, kTransB>::smem_bytes;
  int fits = 0;
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    cudaGetLastError();  // no image for this device (an architecture the build left out)
  } else {
    SY_CUDA(ctx, op,
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem)));
    SY_CUDA(ctx, op,
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, kernel, kMmaThreads, smem));
  }
  per_device.emplace(ctx.device, fits);
  return fits;
}

template <bool kWgrad, bool kTransB, class CT>
bool launch(Context& ctx, const GroupedGemmArgs& args) {
  const char* op = kWgrad ? "grouped_gemm_wgrad (mma)" : "grouped_gemm (mma)";
  const int per_sm = ctas_per_sm<kWgrad, kTransB, CT>(ctx, op);
  if (per_sm < 1) return false;
  Problem p{};
  p.A = args.A;
  p.B = args.B;
  p.C = args.C;
  p.offsets = args.dev_offsets;
  p.groups = static_cast<int>(args.groups);
  p.K = static_cast<int>(args.K);
  p.N = static_cast<int>(args.N);
  p.tiles_n = static_cast<int>((args.N + kBN - 1) / kBN);
  p.tiles_k = static_cast<int>((args.K + kBM - 1) / kBM);
  p.accumulate = args.accumulate;
  if constexpr (kWgrad) {
    p.tiles = args.groups * p.tiles_k * p.tiles_n;
  } else {
    int64_t row_blocks = 0;
    for (int64_t g = 0; g < args.groups; ++g) row_blocks += (args.host_rows[g] + kBM - 1) / kBM;
    p.tiles = row_blocks * p.tiles_n;
  }
  if (p.tiles == 0) return true;
  int sms = 0;
  SY_CUDA(ctx, op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device));
  const int64_t grid = std::min<int64_t>(p.tiles, static_cast<int64_t>(sms) * per_sm);
  grouped_gemm_mma_kernel<kWgrad, kTransB, CT>
      <<<static_cast<unsigned>(grid), kMmaThreads, Layout<kWgrad, kTransB>::smem_bytes,
         ctx.stream>>>(p);
  check_launch(ctx, op);
  return true;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool grouped_gemm_mma(Context& ctx, const GroupedGemmArgs& args) {
  const bool wgrad = args.kind == GroupedGemmKind::wgrad;
  if (args.c_dtype != DType::bf16 && args.c_dtype != DType::f32) return false;
  if (args.A2 || args.B2 || args.K2 != 0) return false;  // one operand pair only
  if (args.groups < 1 || args.groups > kMaxGroups) return false;
  if (args.K % 8 != 0 || args.N % 8 != 0) return false;
  if (args.M_total > INT32_MAX || args.K > INT32_MAX || args.N > INT32_MAX) return false;
  if (!aligned16(args.A) || !aligned16(args.B) || !aligned16(args.C)) return false;
  if (args.N == 0) return true;  // C has no elements
  if (wgrad) {
    if (args.K == 0) return true;
  } else {
    if (args.M_total == 0) return true;
    if (args.K == 0) return false;  // C = 0 (or unchanged) without a product: the caller's loop
  }
  const bool f32 = args.c_dtype == DType::f32;
  if (wgrad) return f32 ? launch<true, false, float>(ctx, args) : launch<true, false, bf16>(ctx, args);
  if (args.trans_b)
    return f32 ? launch<false, true, float>(ctx, args) : launch<false, true, bf16>(ctx, args);
  return f32 ? launch<false, false, float>(ctx, args) : launch<false, false, bf16>(ctx, args);
}

// ---- running the grouped ops ----------------------------------------------------------------
GroupedGemmChoice grouped_gemm_choice_from_env() {
  const char* value = env_choice("SY_GROUPED_GEMM", {"auto", "sm90", "mma", "cublas"});
  if (!value || std::strcmp(value, "auto") == 0) return GroupedGemmChoice::automatic;
  if (std::strcmp(value, "sm90") == 0) return GroupedGemmChoice::sm90;
  if (std::strcmp(value, "mma") == 0) return GroupedGemmChoice::mma;
  return GroupedGemmChoice::cublas;
}

SegmentOffsets::~SegmentOffsets() {  // errors ignored: the process may be exiting
  for (cudaEvent_t event : copied_)
    if (event) cudaEventDestroy(event);
  if (pinned_) cudaFreeHost(pinned_);
}

const int32_t* SegmentOffsets::upload(Context& ctx, const char* op,
                                      std::span<const int64_t> rows) {
  const int64_t n = static_cast<int64_t>(rows.size()) + 1;
  host_.resize(n);
  host_[0] = 0;
  for (size_t g = 0; g < rows.size(); ++g)
    host_[g + 1] = host_[g] + static_cast<int32_t>(rows[g]);  // the caller checked the sum fits
  if (device_.defined() && host_ == last_) return device_.ptr<int32_t>();
  if (n > capacity_) {  // first use, or more segments than ever: new slots
    SY_CUDA(ctx, op, cudaStreamSynchronize(ctx.stream));  // no copy may still read the old ones
    if (pinned_) SY_CUDA(ctx, op, cudaFreeHost(pinned_));
    pinned_ = nullptr;
    const int64_t capacity = std::max<int64_t>(n, kMaxGroups + 1);
    void* pinned = nullptr;
    SY_CUDA(ctx, op, cudaMallocHost(&pinned, kSlots * capacity * sizeof(int32_t)));
    pinned_ = static_cast<int32_t*>(pinned);
    capacity_ = capacity;
    for (int s = 0; s < kSlots; ++s) {
      if (!copied_[s])
        SY_CUDA(ctx, op, cudaEventCreateWithFlags(&copied_[s], cudaEventDisableTiming));
      pending_[s] = false;
    }
  }
  if (!device_.defined() || device_.numel() < n) {
    device_ = Tensor();  // back to the cache first (stream order keeps reuse safe)
    device_ = ctx.alloc({capacity_}, DType::i32);
  }
  const int slot = next_slot_;
  next_slot_ = (next_slot_ + 1) % kSlots;
  if (pending_[slot]) SY_CUDA(ctx, op, cudaEventSynchronize(copied_[slot]));
  int32_t* staging = pinned_ + slot * capacity_;
  std::memcpy(staging, host_.data(), n * sizeof(int32_t));
  SY_CUDA(ctx, op,
          cudaMemcpyAsync(device_.data(), staging, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                          ctx.stream));
  SY_CUDA(ctx, op, cudaEventRecord(copied_[slot], ctx.stream));
  pending_[slot] = true;
  last_ = host_;
  return device_.ptr<int32_t>();
}

const char* run_grouped_gemm(Context& ctx, GroupedGemmChoice choice, SegmentOffsets& offsets,
                             GroupedGemmArgs args, std::span<const int64_t> rows) {
  if (choice == GroupedGemmChoice::cublas) return nullptr;
  const char* op = args.kind == GroupedGemmKind::wgrad ? "grouped_gemm_wgrad" : "grouped_gemm";
  args.dev_offsets = offsets.upload(ctx, op, rows);
  args.host_rows = rows.data();
  if (choice != GroupedGemmChoice::mma && grouped_gemm_sm90(ctx, args)) return "sm90";
  if (choice != GroupedGemmChoice::sm90 && grouped_gemm_mma(ctx, args)) return "mma";
  return nullptr;
}

}  // namespace sy::cuda
