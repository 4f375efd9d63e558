// The Hopper grouped GEMM (model/cuda/grouped_gemm.h has the contract; NOTES-grouped-gemm.md the
// design, the arithmetic of the benchmark cases and what to try next).
//
// One persistent launch per call: a grid of min(#SMs, tiles) CTAs walks one tile list that covers
// every group (tile t, t + gridDim.x, ...). A CTA is three warpgroups:
//   warpgroup 0  the producer: one thread issues TMA loads (128B-swizzled boxes) into a ring of
//                kStages shared-memory stages, each guarded by a "full" mbarrier (expect-tx) and
//                an "empty" mbarrier (one arrival per consumer warp);
//   warpgroups 1, 2  the consumers: each owns 64 rows of the 128 x BN tile and runs
//                wgmma.mma_async m64nBNk16 from shared memory into f32 registers, then writes
//                its rows straight from registers to C (masked at the segment end and at N).
// setmaxnreg moves registers from the producer (40) to the consumers (232).
// Tile order (decode_tile): inside a group, bands of 8 n tiles with m fastest, so that the ~132
// tiles in flight read ~16 blocks of A rows and 8 of B columns, which the L2 keeps between
// waves; SY_GG_SM90_BAND=N picks the band width, 0 the earlier order (n fastest over the whole
// group). The order changes which SM computes a tile, not how: results are bitwise the same.
// Four versions, SY_GG_SM90_VERSION=1|2|3|4 (default 4), bitwise equal results:
//   1  each chunk's wgmmas complete (wait_group 0) before the next chunk is issued;
//   2  one chunk stays in flight (wait_group 1), its predecessor's stage is released only once
//      that predecessor's wgmmas are done; with accumulate, the old C tile is prefetched into L2
//      a few chunks before the epilogue, so the read-modify-write no longer waits on DRAM;
//   3  version 2, and for the accumulating f32 weight gradient (wgrad, C f32, accumulate: the
//      only accumulating call training makes into f32) an epilogue through shared memory: each
//      consumer stages its f32 accumulators in 64 x 64 slices and one thread per warpgroup has
//      the TMA add each slice to C (cp.reduce.async.bulk.tensor .add), so old C never travels to
//      the SM and the consumers move on to the next tile while the adds drain. One f32 add per
//      element, as in version 2's read-modify-write. Every other call runs version 2.
//   4  version 2's main loop, and every epilogue it can through shared memory and the TMA: each
//      consumer stages its accumulators one C box at a time (64 rows x 128 bytes: 64 bf16 or
//      32 f32 columns, double-buffered) and one thread per warpgroup has the TMA store it (C =)
//      or add it (C +=, f32 only), then the warpgroup moves on to the next tile while the TMA
//      drains. Version 2's epilogue stored each row's 16 or 32 bytes straight from the fragment
//      registers, a few microseconds per tile with the tensor cores idle (NOTES-grouped-gemm.md,
//      "Version 4"). Forward halves of a tile that reach past their segment's end (into the next
//      group's rows, which a box cannot mask) keep version 2's masked stores; so do bf16 `+=`
//      calls (the TMA's bf16 add would round twice) and calls over more than kMaxGroupsStaged
//      groups (the staging takes the room of the larger tables).
//
// Operand forms (wgmma's transpose bits; both allowed for 16-bit types):
//   forward          A [M_total, K] K-major;  B[g] [K, N] N-major (3D map {N, K, G})
//   forward trans_b  A K-major;               B[g] [N, K] K-major (3D map {K, N, G})
//   wgrad            A^T: A [M_total, K] is M-major; B [M_total, N] N-major; the reduction runs
//                    over the segment's rows.
// A forward call may bring a second operand pair (A2, B2 over K2, the same form): the producer
// loads its chunks after the first pair's, into the same accumulators, so C = A op(B) + A2 op(B2)
// is summed in f32 and rounded once (the expert FFN's input gradient dh1 w1^T + dh3 w3^T).
// Out-of-bounds boxes are zero-filled by the TMA, which covers K tails (the 3D maps keep one
// group's B from reading the next group's) and rows past M_total. Rows past a segment's end that
// are still inside the tensor are real data of the next group:
//   forward: they only feed C rows past the segment end, which the epilogue does not store;
//   wgrad:   they would feed the reduction, so the consumers zero them in shared memory after the
//            TMA lands (generic-proxy stores, then fence.proxy.async so wgmma's async-proxy reads
//            see them, then a named barrier over both consumer warpgroups since they share B).
//            Zeroing costs a few hundred shared stores once per tile, against a predicated
//            load path that would slow every chunk; both A and B rows are zeroed so that an
//            Inf or NaN in the next expert's data cannot leak (0 * Inf = NaN).
// Each C element is written by one thread with one fixed-order f32 sum: results are bitwise
// repeatable, and no C element outside the covered region is touched.
//
// Debug hook: build with -DSY_GG_SM90_DEBUG=1 (e.g. CMAKE_CUDA_FLAGS) and every mbarrier wait is
// bounded: a wait that spins ~2^28 times writes (block, thread, barrier, parity, iteration) to
// mapped host memory and traps; the host synchronises after each launch and reports the record
// in the exception (no device printf).
#include <cuda.h>          // CUtensorMap and its enums (types only: libcuda is not linked)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "model/cuda/env_choice.h"
#include "model/cuda/grouped_gemm.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SY_GG_SM90_DEVICE 1
#endif

namespace sy::cuda {
namespace {

constexpr const char* kOp = "grouped_gemm_sm90";

// ---- tile geometry ---------------------------------------------------------------------------
constexpr int kBM = 128;                  // tile rows: two consumer warpgroups of 64
constexpr int kBK = 64;                   // reduction chunk: one 128-byte swizzle row of bf16
constexpr int kConsumers = 2;
constexpr int kCtaThreads = 128 * (1 + kConsumers);
constexpr int kMaxGroups = 1024;          // segment offsets and tile starts live in shared memory
constexpr int kPrefetchChunksAhead = 8;   // version 2: old C is prefetched this many chunks early
constexpr int kDefaultBand = 8;           // tile order: n tiles per band (0: n fastest, no bands)
[[maybe_unused]] constexpr int kSwizzleBytes = 128;
[[maybe_unused]] constexpr int kBoxBytes = 64 * kBK * 2;   // one 64 x 64 bf16 box: 8 KiB, 8 swizzle atoms of 1 KiB

enum class Form { forward, forward_trans_b, wgrad };

// Version 3's staging of the f32 accumulators: per consumer warpgroup two slices of 64 rows x 64
// columns (double-buffered), each two 128B-swizzled boxes of 64 rows x 32 f32 (8 KiB, 1024-byte
// aligned, the TMA's box for C).
constexpr int kSliceCols = 64;
constexpr int kReduceBoxCols = 32;                            // 128 bytes of f32: the swizzle span
constexpr int kReduceBoxBytes = 64 * kReduceBoxCols * 4;      // 8 KiB
constexpr int kSliceBytes = 64 * kSliceCols * 4;              // 16 KiB
constexpr int kSlicesPerConsumer = 2;

// Version 4's staging: per consumer warpgroup two buffers of one C box each, 64 rows x 128 bytes
// (64 bf16 or 32 f32 columns; 128 bytes is the 128B swizzle's span), 8 KiB, 1024-byte aligned.
constexpr int kStoreBoxBytes = 64 * 128;
constexpr int kStoreBuffers = 2;
constexpr int kMaxGroupsStaged = 240;  // the tables that still fit next to version 4's staging

// What the consumers do with a finished tile: store from registers (versions 1, 2), stage f32
// slices for the TMA's reduce-add (version 3), or stage C boxes for the TMA (version 4).
enum class Epilogue { registers, reduce_slices, staged_boxes };

// Shared memory: [stages][staging][full, empty barriers][segment offsets, tile starts].
// Version 3 adds 64 KiB of staging and pays for it with stages: 4 -> 3 at BN = 256 (1 + 3 x 48 +
// 64 + 8 = 217 KiB of the 227; 4 stages would need 265), 6 -> 4 at BN = 128 (1 + 4 x 32 + 64 + 8
// = 201 KiB; 5 would need 233). Version 4 adds 32 KiB and keeps the stages by holding tables for
// at most 240 groups: 1 + 192 + 32 + 0.06 + 1.9 = 226.9 KiB at either width.
template <int BN, Epilogue E = Epilogue::registers>
struct Geometry {
  static_assert(BN == 128 || BN == 256, "BN is 128 or 256");
  static constexpr int kStages = E == Epilogue::reduce_slices ? (BN == 256 ? 3 : 4)
                                                              : (BN == 256 ? 4 : 6);
  static constexpr int kABytes = kBM * kBK * 2;  // 16 KiB: two 64-row halves, one per consumer
  static constexpr int kBBytes = BN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kStagingBytes =
      E == Epilogue::reduce_slices   ? kConsumers * kSlicesPerConsumer * kSliceBytes
      : E == Epilogue::staged_boxes ? kConsumers * kStoreBuffers * kStoreBoxBytes
                                     : 0;
  static constexpr int kMaxGroupsHere = E == Epilogue::staged_boxes ? kMaxGroupsStaged : kMaxGroups;
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  static constexpr int kTableBytes = 2 * (kMaxGroupsHere + 1) * 4;
  // 1 KiB of slack: the swizzled stages need 1024-byte alignment, which the dynamic shared
  // memory base does not promise.
  static constexpr int kSmemBytes =
      1024 + kStages * kStageBytes + kStagingBytes + kBarrierBytes + kTableBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

__host__ __device__ constexpr Epilogue epilogue_of(int version) {
  return version == 3 ? Epilogue::reduce_slices
                      : version >= 4 ? Epilogue::staged_boxes : Epilogue::registers;
}

struct KernelParams {
  int groups = 0, M_total = 0, K = 0, N = 0;
  const int32_t* offsets = nullptr;    // [groups + 1]
  void* C = nullptr;
  int accumulate = 0;
  int K2 = 0;  // forward with a second operand pair (map_a2, map_b2): its reduction, else 0
  int band = 0;  // tile order inside a group: bands of this many n tiles, m fastest (decode_tile)
  double* squares = nullptr;  // wgrad `=`: [tiles][consumers][4 warps] sums of squares of C
  unsigned long long* debug = nullptr;  // SY_GG_SM90_DEBUG: mapped host words, else unused
};

// What one tile covers. Forward: C rows [m0, m0 + 128) of the segment ending at row_end, columns
// [n0, n0 + BN), reduction over k in [0, K). Wgrad: C[group] rows (K indices) [m0, m0 + 128) below
// row_end = K, reduction over the segment's rows [red_begin, red_begin + red_len).
// first: the reduction's 64-deep chunks over [red_begin, red_begin + red_len); chunks: those and,
// with a second operand pair (forward, p.K2 > 0), its chunks after them. Producer and consumers
// both walk `chunks` from this one place, so their rings cannot disagree.
struct Tile {
  int group, m0, n0, row_end, red_begin, red_len, first, chunks;
};

#ifdef SY_GG_SM90_DEVICE
// ---- PTX wrappers ----------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// Waits for the phase of `bar` with the given parity to complete.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity, const KernelParams& p,
                                          int iteration) {
#ifdef SY_GG_SM90_DEBUG
  long long spins = 0;
  while (!mbar_try_wait(bar, parity)) {
    if (++spins == (1ll << 28)) {
      volatile unsigned long long* d = p.debug;
      d[1] = (static_cast<unsigned long long>(blockIdx.x) << 32) | threadIdx.x;
      d[2] = (static_cast<unsigned long long>(bar) << 32) | parity;
      d[3] = static_cast<unsigned long long>(iteration);
      __threadfence_system();
      d[0] = 1;
      __threadfence_system();
      __trap();
    }
  }
#else
  while (!mbar_try_wait(bar, parity)) {
  }
#endif
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Version 3: C[box at (c0, c1, c2)] += the f32 box at shared address src, by the TMA (elements
// outside the map's bounds are skipped). Completion is tracked per issuing thread in bulk groups.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, uint32_t src, int c0,
                                                  int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Version 4 (forward forms): C[box at (c0, c1)] += the f32 box at shared address src.
__device__ __forceinline__ void tma_reduce_add_2d(const CUtensorMap* map, uint32_t src, int c0,
                                                  int c1) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3}], [%1];" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1)
      : "memory");
}

// Version 4: C[box at (c0, c1[, c2])] = the box at shared address src, by the TMA (elements
// outside the map's bounds are not written).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group"
      " [%0, {%2, %3}], [%1];" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_store_3d(const CUtensorMap* map, uint32_t src, int c0, int c1,
                                             int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group"
      " [%0, {%2, %3, %4}], [%1];" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Closes this thread's bulk group: the TMA operations issued since the previous commit.
__device__ __forceinline__ void bulk_commit_group() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// Waits until every bulk group of this thread has finished reading its shared-memory source
// (the source may then be overwritten; the writes to global memory may still be in flight).
__device__ __forceinline__ void bulk_wait_all_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}

// Waits until every bulk group of this thread has completed, global writes included.
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
}
// Waits until at most one committed group of this warpgroup's wgmmas is still running.
__device__ __forceinline__ void wgmma_wait_all_but_one() {
  asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
}

// Pulls a line of global memory into L2 (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(p)));
}

// Pins the accumulators in place: the compiler may not move their reads or writes across this
// point. wgmma writes them asynchronously, behind the compiler's back, so every use must stay
// between wgmma.fence and issue, or after wgmma.wait_group.
template <int kCount>
__device__ __forceinline__ void fence_accumulators(float (&acc)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

// Makes this thread's generic-proxy shared-memory stores visible to the async proxy (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// Named barrier 1 over the two consumer warpgroups (barrier 0 is __syncthreads).
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(128 * kConsumers) : "memory");
}

// Named barriers 2 and 3: one consumer warpgroup (version 3's epilogue hand-off to the TMA).
// Immediate ids, so that ptxas reserves 4 barriers rather than all 16.
__device__ __forceinline__ void warpgroup_sync(int half) {
  if (half == 0) asm volatile("bar.sync 2, 128;" ::: "memory");
  else asm volatile("bar.sync 3, 128;" ::: "memory");
}

__device__ __forceinline__ void st_shared_f32x2(uint32_t addr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(x), "f"(y) : "memory");
}

__device__ __forceinline__ void st_shared_bf16x2(uint32_t addr, float x, float y) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(*reinterpret_cast<const uint32_t*>(&v))
               : "memory");
}

__device__ __forceinline__ void st_shared_zero16(uint32_t addr) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(addr), "r"(0) : "memory");
}

// wgmma shared-memory matrix descriptor: start address >> 4 (bits 0-13), leading byte offset >> 4
// (16-29), stride byte offset >> 4 (32-45), base offset 0 (the stages are 1024-byte aligned),
// layout type 1 = 128-byte swizzle (62-63).
//   K-major, 128B swizzle: rows of 64 bf16 (128 B) at 128 B, 8-row atoms at SBO = 1024 B; LBO is
//     unused (1). The k16 steps inside the 64-wide row advance the start address by 32 B: the
//     swizzle is applied to the computed address, so this stays consistent with the TMA layout.
//   MN-major, 128B swizzle: 64 MN-contiguous bf16 per 128 B row, one row per k; 8-k atoms at
//     SBO = 1024 B; the next 64 MN elements at LBO (our boxes: 8 KiB). k16 steps advance 2 KiB.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16;
  desc |= static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32;
  desc |= 1ull << 62;
  return desc;
}

// D[64 x 128] += A[64 x 16] B[16 x 128]; A, B in shared memory (descriptors), D in f32 registers.
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                 int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB));
}

// D[64 x 256] += A[64 x 16] B[16 x 256]; A, B in shared memory (descriptors), D in f32 registers.
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                 int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB));
}

template <int BN, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_tile(float (&acc)[BN / 2], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (BN == 128) wgmma_m64n128k16<kTransA, kTransB>(acc, desc_a, desc_b, 1);
  else wgmma_m64n256k16<kTransA, kTransB>(acc, desc_a, desc_b, 1);
}

template <class CT>
__device__ __forceinline__ void store_pair(CT* p, float x, float y, bool accumulate) {
  if constexpr (std::is_same_v<CT, float>) {
    float2 v = make_float2(x, y);
    if (accumulate) {
      const float2 old = *reinterpret_cast<const float2*>(p);
      v.x += old.x;
      v.y += old.y;
    }
    *reinterpret_cast<float2*>(p) = v;
  } else {
    if (accumulate) {
      const __nv_bfloat162 old = *reinterpret_cast<const __nv_bfloat162*>(p);
      x += __low2float(old);
      y += __high2float(old);
    }
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
  }
}

// Version 2, accumulate: prefetches this consumer warpgroup's 64 rows of the tile's old C into L2
// (128-byte lines spread over the warpgroup's 128 threads), so that the epilogue's
// read-modify-write reads L2 instead of waiting on DRAM. A prefetch has no result and no fault.
// c_block: C, or C[group] in wgrad.
template <int BN, class CT>
__device__ __forceinline__ void prefetch_c_tile(const CT* c_block, const Tile& tile, int half,
                                                int N) {
  constexpr int kLinesPerRow = BN * static_cast<int>(sizeof(CT)) / 128;
  constexpr int kPerLine = 128 / static_cast<int>(sizeof(CT));
  const int wg_thread = threadIdx.x & 127;
  for (int i = wg_thread; i < 64 * kLinesPerRow; i += 128) {
    const int row = tile.m0 + 64 * half + i / kLinesPerRow;
    const int col = tile.n0 + (i % kLinesPerRow) * kPerLine;
    if (row < tile.row_end && col < N) prefetch_l2(c_block + static_cast<int64_t>(row) * N + col);
  }
}

// Versions 3 and 4: hands one staged buffer of this consumer warpgroup to the TMA. The stores
// become visible to the async proxy; the issuing thread waits until its earlier bulk groups have
// read their buffers (the one the next slice overwrites among them); the warpgroup meets; the
// issuer starts `issue` (the TMA operations reading the buffer) and commits them as one group.
template <class Issue>
__device__ __forceinline__ void hand_to_tma(int half, bool issuer, Issue&& issue) {
  fence_proxy_async_shared();
  if (issuer) bulk_wait_all_read();
  warpgroup_sync(half);
  if (issuer) {
    issue();
    bulk_commit_group();
  }
}

// Version 3's epilogue for one consumer warpgroup: C[group] rows [m0 + 64 half, + 64), columns
// [n0, n0 + BN) += acc, through shared memory and the TMA. The 64 x BN accumulators leave in
// BN / 64 slices of 64 x 64 f32 that alternate between the warpgroup's two staging buffers:
//   1. every thread stores its fragment into the slice's two 128B-swizzled boxes (the swizzle
//      spreads the 8 rows a warp stores at once over all banks: 2 wavefronts per 256-byte
//      store, the minimum), then fence.proxy.async so that the TMA (async proxy) sees the stores;
//   2. the issuing thread waits until its groups have read their buffers (wait_group.read 0: the
//      previous slice's reduce, which reads the buffer the next slice will overwrite);
//   3. warpgroup barrier; the issuing thread starts this slice's reduce-adds and commits them.
// After each barrier every group but the newest has read its buffer, and the newest reads the
// buffer the next slice does not write; slices_issued carries the alternation across tiles.
// The TMA skips elements outside the map {N, K, G}: rows past K and columns past N are not
// touched. A warpgroup whose rows all lie past K, and slices or boxes that start past N, are
// skipped outright (warpgroup-uniform conditions, so the barrier stays uniform).
template <int BN>
__device__ __forceinline__ void reduce_epilogue(const float (&acc)[BN / 2],
                                                const CUtensorMap* map_c, uint32_t staging,
                                                const Tile& tile, int half, int N,
                                                int& slices_issued) {
  const int row_start = tile.m0 + 64 * half;
  if (row_start >= tile.row_end) return;
  const int wg_thread = threadIdx.x & 127, lane = threadIdx.x & 31, warp = wg_thread / 32;
  const bool issuer = wg_thread == 0;
  // The thread's rows 16 w + l / 4 and + 8 of the box, 128 bytes each; both have row % 8 = l / 4,
  // the key the 128-byte swizzle XORs into the 16-byte piece index. Columns 2 (l % 4) + {0, 1}
  // of each group of 8: byte 8 (l % 4) of the group's 32, i.e. piece (l % 4) / 2, offset 8 (l % 2).
  const uint32_t row_offset = (16 * warp + lane / 4) * 128 + 8 * (lane & 1);
  const uint32_t key = lane >> 2;
#pragma unroll
  for (int q = 0; q < BN / kSliceCols; ++q) {
    const int col_start = tile.n0 + q * kSliceCols;
    if (col_start >= N) break;
    const uint32_t buffer = staging + (slices_issued & 1) * kSliceBytes;
#pragma unroll
    for (int jj = 0; jj < kSliceCols / 8; ++jj) {  // fragment column group j = 8 q + jj
      const int j = q * (kSliceCols / 8) + jj;
      const uint32_t piece = 2 * (jj % 4) + ((lane & 3) >> 1);
      const uint32_t addr = buffer + (jj / 4) * kReduceBoxBytes + row_offset + ((piece ^ key) << 4);
      st_shared_f32x2(addr, acc[4 * j], acc[4 * j + 1]);
      st_shared_f32x2(addr + 8 * 128, acc[4 * j + 2], acc[4 * j + 3]);
    }
    hand_to_tma(half, issuer, [&] {
#pragma unroll
      for (int box = 0; box < kSliceCols / kReduceBoxCols; ++box) {
        const int col = col_start + box * kReduceBoxCols;
        if (col < N)
          tma_reduce_add_3d(map_c, buffer + box * kReduceBoxBytes, col, row_start, tile.group);
      }
    });
    ++slices_issued;
  }
}

// Versions 1 and 2's epilogue (and version 4's where a box cannot be used): this consumer
// warpgroup's 64 rows of the tile straight from the fragment registers to C, masked at the
// tile's row_end and at N. Thread (warp w, lane l) holds rows 16 w + l / 4 and + 8, columns
// 8 j + 2 (l % 4) + {0, 1}. c_block: C, or C[group] in wgrad.
template <int BN, class CT>
__device__ __forceinline__ void register_epilogue(const float (&acc)[BN / 2], CT* c_block,
                                                  const Tile& tile, int half, int N,
                                                  bool accumulate) {
  const int lane = threadIdx.x & 31, warp = (threadIdx.x / 32) & 3;
  const int row0 = tile.m0 + 64 * half + 16 * warp + lane / 4;
  const int row1 = row0 + 8;
  const bool ok0 = row0 < tile.row_end, ok1 = row1 < tile.row_end;
  CT* const c_row0 = c_block + static_cast<int64_t>(row0) * N;
  CT* const c_row1 = c_block + static_cast<int64_t>(row1) * N;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = tile.n0 + 8 * j + 2 * (lane & 3);
    if (col < N) {  // N is a multiple of 8, so col + 1 < N too
      if (ok0) store_pair(c_row0 + col, acc[4 * j], acc[4 * j + 1], accumulate);
      if (ok1) store_pair(c_row1 + col, acc[4 * j + 2], acc[4 * j + 3], accumulate);
    }
  }
}

// Version 4's epilogue for one consumer warpgroup: its 64 rows x BN columns of the tile, box by
// box (64 rows x 128 bytes: kBoxCols columns), C = acc by TMA stores, or C += acc by TMA f32
// reduce-adds (reduce; CT f32 only). Per box, with the warpgroup's two staging buffers
// alternating (boxes_issued carries the alternation across tiles):
//   1. every thread stores its fragment's pairs of the box into the 128B-swizzled buffer: row r
//      at 128 r, 16-byte piece c at piece c ^ (r % 8). A warp's store covers 8 rows (l / 4, so
//      r % 8 = l / 4) of 16 bytes (bf16 pairs) or 32 bytes (f32 pairs): the XOR puts the 8 rows
//      on different banks, 1 or 2 wavefronts, the minimum; then fence.proxy.async so that the
//      TMA (async proxy) sees the stores;
//   2. the issuing thread waits until its bulk groups have read their buffers (the previous
//      box's, which the next box overwrites);
//   3. warpgroup barrier; the issuing thread starts this box's store or add and commits it.
// The TMA skips elements outside the map: columns past N, rows past M_total (forward) or past K
// (wgrad, map {N, K, G}). The caller uses this only where every row of the box is the tile's
// (wgrad; forward halves inside their segment, or the last segment's halves).
template <int BN, class CT, bool kWgrad>
__device__ __forceinline__ void staged_epilogue(const float (&acc)[BN / 2],
                                                const CUtensorMap* map_c, uint32_t staging,
                                                const Tile& tile, int half, int N, bool reduce,
                                                int& boxes_issued) {
  constexpr bool kF32 = std::is_same_v<CT, float>;
  constexpr int kBoxCols = 128 / static_cast<int>(sizeof(CT));  // 64 bf16 or 32 f32
  constexpr int kColGroups = kBoxCols / 8;                      // fragment column groups a box
  const int row_start = tile.m0 + 64 * half;
  const int wg_thread = threadIdx.x & 127, lane = threadIdx.x & 31, warp = wg_thread / 32;
  const bool issuer = wg_thread == 0;
  // The thread's rows 16 w + l / 4 and + 8 of the box; both have r % 8 = l / 4. Its two columns
  // of column group jj sit at byte 4 (l % 4) of piece jj (bf16), or at byte 8 (l % 4) of the
  // group's 32, i.e. piece 2 jj + (l % 4) / 2, offset 8 (l % 2) (f32).
  const uint32_t row_offset =
      (16 * warp + lane / 4) * 128 + (kF32 ? 8 * (lane & 1) : 4 * (lane & 3));
  const uint32_t key = lane >> 2;
#pragma unroll
  for (int q = 0; q < BN / kBoxCols; ++q) {
    const int col_start = tile.n0 + q * kBoxCols;
    if (col_start >= N) break;
    const uint32_t buffer = staging + (boxes_issued & 1) * kStoreBoxBytes;
#pragma unroll
    for (int jj = 0; jj < kColGroups; ++jj) {
      const int j = q * kColGroups + jj;
      if constexpr (kF32) {
        const uint32_t piece = 2 * jj + ((lane & 3) >> 1);
        const uint32_t addr = buffer + row_offset + ((piece ^ key) << 4);
        st_shared_f32x2(addr, acc[4 * j], acc[4 * j + 1]);
        st_shared_f32x2(addr + 8 * 128, acc[4 * j + 2], acc[4 * j + 3]);
      } else {
        const uint32_t addr = buffer + row_offset + ((static_cast<uint32_t>(jj) ^ key) << 4);
        st_shared_bf16x2(addr, acc[4 * j], acc[4 * j + 1]);
        st_shared_bf16x2(addr + 8 * 128, acc[4 * j + 2], acc[4 * j + 3]);
      }
    }
    hand_to_tma(half, issuer, [&] {
      if constexpr (kWgrad) {
        if (kF32 && reduce) tma_reduce_add_3d(map_c, buffer, col_start, row_start, tile.group);
        else tma_store_3d(map_c, buffer, col_start, row_start, tile.group);
      } else {
        if (kF32 && reduce) tma_reduce_add_2d(map_c, buffer, col_start, row_start);
        else tma_store_2d(map_c, buffer, col_start, row_start);
      }
    });
    ++boxes_issued;
  }
}

// The sum of the squares of this warp's fragment of the finished tile (elements inside C only:
// rows below row_end, columns below N), into *out: each thread adds its squares 16 at a time in
// f32 (fused multiply-adds in a fixed order), those sums in f64, then the warp's 32 in a fixed
// butterfly. Read by the gradient norm in place of the gradient (Param::grad_squares). Costs
// ~200 cycles a tile against the tile's tens of microseconds of wgmma. A bf16 C's squares are
// those of the stored values (stored_as<CT>: rounded to nearest even, as the epilogues'
// __floats2bfloat162_rn round them).
template <int BN, class CT>
__device__ __forceinline__ void tile_squares(const float (&acc)[BN / 2], const Tile& tile, int half,
                                             int N, double* out) {
  const int lane = threadIdx.x & 31, warp = (threadIdx.x / 32) & 3;
  const int row0 = tile.m0 + 64 * half + 16 * warp + lane / 4;
  const bool ok0 = row0 < tile.row_end, ok1 = row0 + 8 < tile.row_end;
  double sum = 0.0;
#pragma unroll
  for (int j0 = 0; j0 < BN / 8; j0 += 4) {
    float part = 0.f;
#pragma unroll
    for (int j = j0; j < j0 + 4; ++j) {
      const bool col_ok = tile.n0 + 8 * j + 2 * (lane & 3) < N;  // N % 8 == 0: col + 1 < N too
      const float a = ok0 && col_ok ? stored_as<CT>(acc[4 * j]) : 0.f;
      const float b = ok0 && col_ok ? stored_as<CT>(acc[4 * j + 1]) : 0.f;
      const float c = ok1 && col_ok ? stored_as<CT>(acc[4 * j + 2]) : 0.f;
      const float d = ok1 && col_ok ? stored_as<CT>(acc[4 * j + 3]) : 0.f;
      part = __fmaf_rn(a, a, part);
      part = __fmaf_rn(b, b, part);
      part = __fmaf_rn(c, c, part);
      part = __fmaf_rn(d, d, part);
    }
    sum += static_cast<double>(part);
  }
#pragma unroll
  for (int d = 16; d >= 1; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
  if (lane == 0) *out = sum;
}

// A group's m_tiles x n_tiles tiles in the order the CTAs take them: bands of p.band n tiles
// (the last band may be narrower), m fastest inside a band. The CTAs working at one time then
// cover ~132 / band m tiles x band n tiles, so the A rows and B columns they read together stay
// small enough for the L2 to keep between waves (NOTES-grouped-gemm.md, "Tile order"). Returns
// {m index, n index}. band >= n_tiles is one band: m fastest over the whole group. band 0 (no
// bands): n fastest, so that the CTAs working at one time share a few 128-row blocks of A and all
// of B.
__device__ __forceinline__ int2 tile_in_group(int local, int m_tiles, int n_tiles, int band) {
  if (band <= 0) return make_int2(local / n_tiles, local % n_tiles);
  band = band < n_tiles ? band : n_tiles;  // one band at most: m_tiles * band stays in range
  const int per_band = m_tiles * band;
  const int b = local / per_band;
  const int in_band = local - b * per_band;
  return make_int2(in_band % m_tiles, b * band + in_band / m_tiles);
}

template <Form F, int BN>
__device__ __forceinline__ Tile decode_tile(int t, const KernelParams& p, const int* seg_off,
                                            const int* tile_start) {
  const int n_tiles = (p.N + BN - 1) / BN;
  Tile tile;
  if constexpr (F == Form::wgrad) {
    const int m_tiles = (p.K + kBM - 1) / kBM;
    const int per_group = m_tiles * n_tiles;
    tile.group = t / per_group;
    const int local = t - tile.group * per_group;
    const int2 mn = tile_in_group(local, m_tiles, n_tiles, p.band);
    tile.m0 = mn.x * kBM;
    tile.n0 = mn.y * BN;
    tile.row_end = p.K;
    tile.red_begin = seg_off[tile.group];
    tile.red_len = seg_off[tile.group + 1] - tile.red_begin;
  } else {
    // The group g with tile_start[g] <= t < tile_start[g + 1] (empty groups own no tiles).
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (tile_start[mid + 1] <= t) lo = mid + 1;
      else hi = mid;
    }
    tile.group = lo;
    const int local = t - tile_start[lo];
    const int m_tiles = (seg_off[lo + 1] - seg_off[lo] + kBM - 1) / kBM;
    const int2 mn = tile_in_group(local, m_tiles, n_tiles, p.band);
    tile.m0 = seg_off[lo] + mn.x * kBM;
    tile.n0 = mn.y * BN;
    tile.row_end = seg_off[lo + 1];
    tile.red_begin = 0;
    tile.red_len = p.K;
  }
  tile.first = (tile.red_len + kBK - 1) / kBK;
  tile.chunks = tile.first + (F == Form::wgrad ? 0 : (p.K2 + kBK - 1) / kBK);
  return tile;
}
#endif  // SY_GG_SM90_DEVICE

// grid: min(#SMs, tiles); block: 384 threads; dynamic shared memory
// Geometry<BN, epilogue_of(kVersion)>::kSmemBytes. kVersion 1: the first GPU-verified kernel (each
// chunk's wgmmas complete before the next chunk is issued). kVersion 2: one chunk of wgmmas stays
// in flight (wait_group 1; a stage is released once the wgmmas reading it have completed), and
// with accumulate the old C tile is prefetched into L2 while the main loop runs, so the
// epilogue's read-modify-write hits L2. kVersion 3 (wgrad, C f32, launched only with
// accumulate): version 2's main loop, then C += acc by TMA reduce-adds from shared memory (map_c:
// C as {N, K, G} f32, box {32, 64, 1}, 128B swizzle). kVersion 4: version 2's main loop, then the
// staged epilogue (map_c: C as {N, M_total} or, in wgrad, {N, K, G}, box {128 bytes, 64 rows[,
// 1]}, 128B swizzle); the host never launches it for a bf16 accumulate. map_c is unused below
// version 3.
template <int BN, Form F, class CT, int kVersion>
__global__ void __launch_bounds__(kCtaThreads, 1)
    grouped_gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a,
                             const __grid_constant__ CUtensorMap map_b,
                             const __grid_constant__ CUtensorMap map_a2,
                             const __grid_constant__ CUtensorMap map_b2,
                             const __grid_constant__ CUtensorMap map_c, const KernelParams p) {
#ifdef SY_GG_SM90_DEVICE
  constexpr bool kReduceEpilogue = kVersion == 3;
  constexpr bool kStagedEpilogue = kVersion >= 4;
  static_assert(!kReduceEpilogue || (F == Form::wgrad && std::is_same_v<CT, float>),
                "version 3 is the f32 weight gradient's accumulate epilogue only");
  using G = Geometry<BN, epilogue_of(kVersion)>;
  constexpr int kStages = G::kStages;
  constexpr bool kWgrad = F == Form::wgrad;
  constexpr int kTransA = kWgrad ? 1 : 0;                    // A M-major in wgrad
  constexpr int kTransB = F == Form::forward_trans_b ? 0 : 1;  // B N-major unless trans_b

  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t stages = (raw + 1023u) & ~1023u;  // 1024-aligned: the 128B swizzle's period
  uint8_t* const base = smem_raw + (stages - raw);
  const uint32_t staging = stages + kStages * G::kStageBytes;    // [2][2] x 16 KiB (3), 8 KiB (4)
  const uint32_t full_bar = staging + G::kStagingBytes;           // [kStages] x 8 B
  const uint32_t empty_bar = full_bar + kStages * 8;              // [kStages] x 8 B
  int* const seg_off = reinterpret_cast<int*>(base + kStages * G::kStageBytes + G::kStagingBytes +
                                              G::kBarrierBytes);
  int* const tile_start = seg_off + (G::kMaxGroupsHere + 1);

  // ---- set-up: barriers, the segment offsets and every group's first tile -------------------
  for (int i = threadIdx.x; i <= p.groups; i += blockDim.x) seg_off[i] = p.offsets[i];
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_bar + 8 * s, 1);                 // the producer's expect-tx arrival
      mbar_init(empty_bar + 8 * s, 4 * kConsumers);   // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    fence_proxy_async_shared();
    prefetch_tensor_map(&map_a);
    prefetch_tensor_map(&map_b);
    if (p.K2 > 0) {
      prefetch_tensor_map(&map_a2);
      prefetch_tensor_map(&map_b2);
    }
    if constexpr (kReduceEpilogue || kStagedEpilogue) prefetch_tensor_map(&map_c);
  }
  __syncthreads();
  const int n_tiles = (p.N + BN - 1) / BN;
  if (threadIdx.x < 32) {  // tile_start[g + 1] = tiles of groups 0..g, a warp-wide running scan
    const int lane = threadIdx.x;
    if (lane == 0) tile_start[0] = 0;
    int running = 0;
    for (int first = 0; first < p.groups; first += 32) {
      const int g = first + lane;
      int count = 0;
      if (g < p.groups) {
        count = kWgrad ? ((p.K + kBM - 1) / kBM) * n_tiles
                       : ((seg_off[g + 1] - seg_off[g] + kBM - 1) / kBM) * n_tiles;
      }
      int inclusive = count;
      for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      if (g < p.groups) tile_start[g + 1] = running + inclusive;
      running += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  const int total_tiles = tile_start[p.groups];
  const int warpgroup = threadIdx.x / 128;

  if (warpgroup == 0) {
    // ---- producer ----------------------------------------------------------------------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;" ::: "memory");
    if (threadIdx.x != 0) return;
    int it = 0;  // chunks issued so far by this CTA: stage it % kStages, pass it / kStages
    for (int t = blockIdx.x; t < total_tiles; t += gridDim.x) {
      const Tile tile = decode_tile<F, BN>(t, p, seg_off, tile_start);
      for (int c = 0; c < tile.chunks; ++c, ++it) {
        const int s = it % kStages;
        // A fresh barrier counts as having completed the phase before phase 0: the first pass
        // over the ring does not wait.
        mbar_wait(empty_bar + 8 * s, ((it / kStages) & 1) ^ 1, p, it);
        const uint32_t a_dst = stages + s * G::kStageBytes;
        const uint32_t b_dst = a_dst + G::kABytes;
        const uint32_t bar = full_bar + 8 * s;
        mbar_arrive_expect_tx(bar, G::kStageBytes);  // out-of-bounds fill counts too
        const int red = tile.red_begin + c * kBK;
        if constexpr (kWgrad) {
          // A box {64 K-columns, 64 rows} per consumer half; B boxes {64 N-columns, 64 rows}.
          for (int h = 0; h < kConsumers; ++h)
            tma_load_2d(a_dst + h * kBoxBytes, &map_a, bar, tile.m0 + 64 * h, red);
          for (int j = 0; j < BN / 64; ++j)
            tma_load_2d(b_dst + j * kBoxBytes, &map_b, bar, tile.n0 + 64 * j, red);
        } else {
          // The second pair's chunks follow the first's on the same accumulators; each pair's
          // K tail is zero-filled by its own maps.
          const bool second = c >= tile.first;
          const CUtensorMap* const ma = second ? &map_a2 : &map_a;
          const CUtensorMap* const mb = second ? &map_b2 : &map_b;
          const int k = second ? (c - tile.first) * kBK : red;
          tma_load_2d(a_dst, ma, bar, k, tile.m0);  // box {64 k, 128 rows}
          if constexpr (F == Form::forward) {
            for (int j = 0; j < BN / 64; ++j)  // box {64 n, 64 k, 1 group}
              tma_load_3d(b_dst + j * kBoxBytes, mb, bar, tile.n0 + 64 * j, k, tile.group);
          } else {
            tma_load_3d(b_dst, mb, bar, k, tile.n0, tile.group);  // box {64 k, BN n, 1}
          }
        }
      }
    }
    return;
  }

  // ---- consumers ------------------------------------------------------------------------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;" ::: "memory");
  const int half = warpgroup - 1;              // rows [64 half, 64 half + 64) of each tile
  const int consumer_thread = threadIdx.x - 128;  // 0..255 over both consumer warpgroups
  const int lane = threadIdx.x & 31;
  // K-major operands step 32 B per k16 inside the swizzled row; M/N-major ones 16 rows of 128 B.
  constexpr uint32_t kStepA = kTransA ? 16 * kSwizzleBytes : 32;
  constexpr uint32_t kStepB = kTransB ? 16 * kSwizzleBytes : 32;
  constexpr uint32_t kLboA = kTransA ? kBoxBytes : 16;
  constexpr uint32_t kLboB = kTransB ? kBoxBytes : 16;
  CT* const C = static_cast<CT*>(p.C);
  float acc[BN / 2];
  int it = 0;
  int slices_issued = 0;  // versions 3, 4: slices or boxes handed to the TMA (buffer = parity)
  for (int t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const Tile tile = decode_tile<F, BN>(t, p, seg_off, tile_start);
    const int chunks = tile.chunks;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;  // an empty wgrad segment stores zeros
    // Version 2 with accumulate: the chunk at which the old C tile is pulled into L2, a few
    // chunks (~0.5 us each at 128 x 256) before the epilogue reads it, late enough that the
    // streaming A and B loads do not evict it first.
    const int prefetch_chunk = chunks > kPrefetchChunksAhead ? chunks - kPrefetchChunksAhead : 0;
    CT* const c_block = C + (kWgrad ? static_cast<int64_t>(tile.group) * p.K * p.N : 0);
    for (int c = 0; c < chunks; ++c, ++it) {
      const int s = it % kStages;
      mbar_wait(full_bar + 8 * s, (it / kStages) & 1, p, it);
      const uint32_t stage = stages + s * G::kStageBytes;
      if constexpr (kWgrad) {
        const int valid = tile.red_len - c * kBK;  // rows of this chunk inside the segment
        if (valid < kBK) {
          // Zero rows [valid, 64) of every box (A halves and B boxes alike: one box is 64 rows
          // of 128 B, the swizzle permutes 16-byte pieces within a row only).
          constexpr int kBoxes = (G::kStageBytes) / kBoxBytes;
          const int per_box = (kBK - valid) * (kSwizzleBytes / 16);
          for (int i = consumer_thread; i < kBoxes * per_box; i += 128 * kConsumers) {
            const int box = i / per_box, piece = i - box * per_box;
            st_shared_zero16(stage + box * kBoxBytes + valid * kSwizzleBytes + piece * 16);
          }
          fence_proxy_async_shared();
          consumers_sync();
        }
      }
      const uint64_t desc_a = make_desc(stage + half * kBoxBytes, kLboA, 1024);
      const uint64_t desc_b = make_desc(stage + G::kABytes, kLboB, 1024);
      fence_accumulators(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        wgmma_tile<BN, kTransA, kTransB>(acc, desc_a + ((kk * kStepA) >> 4),
                                         desc_b + ((kk * kStepB) >> 4));
      wgmma_commit();
      if constexpr (kVersion >= 2) {
        if (p.accumulate && c == prefetch_chunk) prefetch_c_tile<BN>(c_block, tile, half, p.N);
        // Chunk c keeps the tensor cores busy while we wait for chunk c - 1, whose stage is then
        // free for the producer. Same accumulators, so the wgmmas still run in chunk order and
        // each C element keeps one fixed f32 summation order (bitwise equal to version 1).
        wgmma_wait_all_but_one();
        fence_accumulators(acc);
        if (c > 0 && lane == 0) mbar_arrive(empty_bar + 8 * ((it + kStages - 1) % kStages));
      } else {
        wgmma_wait_all();
        fence_accumulators(acc);
        if (lane == 0) mbar_arrive(empty_bar + 8 * s);
      }
    }
    if constexpr (kVersion >= 2) {
      wgmma_wait_all();
      fence_accumulators(acc);
      if (chunks > 0 && lane == 0) mbar_arrive(empty_bar + 8 * ((it + kStages - 1) % kStages));
    }

    if constexpr (kWgrad) {
      if (p.squares)
        tile_squares<BN, CT>(acc, tile, half, p.N,
                             p.squares + (static_cast<int64_t>(t) * kConsumers + half) * 4 +
                                 ((threadIdx.x / 32) & 3));
    }
    if constexpr (kReduceEpilogue) {
      reduce_epilogue<BN>(acc, &map_c, staging + half * kSlicesPerConsumer * kSliceBytes, tile,
                          half, p.N, slices_issued);
      continue;
    }
    if constexpr (kStagedEpilogue) {
      // A box covers 64 rows: usable where all of them are this tile's (or lie past M_total,
      // which the map skips). Warpgroup-uniform, so the barriers inside stay uniform.
      const int row_start = tile.m0 + 64 * half;
      if (row_start >= tile.row_end) continue;
      if (kWgrad || row_start + 64 <= tile.row_end || tile.row_end == p.M_total) {
        const uint32_t buffers = staging + half * kStoreBuffers * kStoreBoxBytes;
        staged_epilogue<BN, CT, kWgrad>(acc, &map_c, buffers, tile, half, p.N, p.accumulate != 0,
                                        slices_issued);
        continue;
      }
    }
    register_epilogue<BN>(acc, c_block, tile, half, p.N, p.accumulate != 0);
  }
  // Versions 3 and 4: the last TMA stores and adds must have read shared memory (which outlives
  // only the CTA) and reached C before the CTA ends.
  if constexpr (kReduceEpilogue || kStagedEpilogue) {
    if ((threadIdx.x & 127) == 0) bulk_wait_all();
  }
#endif  // SY_GG_SM90_DEVICE
}

}  // namespace

// ---- host side -------------------------------------------------------------------------------
namespace {

struct DeviceInfo {
  bool sm90 = false;  // compute capability 9.0 exactly: the sm_90a cubin runs there only
  int sms = 0;
};

DeviceInfo device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(device);
  if (found != cache.end()) return found->second;
  DeviceInfo info;
  int major = 0, minor = 0, sms = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess) {
    info.sm90 = major == 9 && minor == 0 && sms > 0;
    info.sms = sms;
  } else {
    cudaGetLastError();  // clear the sticky-free error so the caller's next check is clean
  }
  cache[device] = info;
  return info;
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000,
                                         cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      entry = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  }();
  return fn;
}

// A tensor map (bf16 operands; f32 for version 3's C) with a 128B-swizzled box; dims and box
// innermost first, strides in bytes of dims 1.. . False when the driver refuses it (the caller
// then declines the case, or for C falls back to version 2).
bool make_map(CUtensorMap* map, const void* data, int rank, const uint64_t* dims,
              const uint64_t* strides, const uint32_t* box,
              CUtensorMapDataType type = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16) {
  cuuint64_t d[3], s[2];
  cuuint32_t b[3], one[3] = {1, 1, 1};
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    if (i + 1 < rank) s[i] = strides[i];
  }
  const CUresult status = encode_tiled()(
      map, type, static_cast<cuuint32_t>(rank),
      const_cast<void*>(data), d, s, b, one, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);  // out-of-bounds elements read as zero, are not written
  return status == CUDA_SUCCESS;
}

#ifdef SY_GG_SM90_DEBUG
// Four words of mapped pinned host memory: they stay readable after a trap has broken the context.
volatile unsigned long long* debug_host = nullptr;

unsigned long long* debug_words(Context& ctx) {
  static unsigned long long* device = nullptr;
  if (!debug_host) {
    unsigned long long* host = nullptr;
    SY_CUDA(ctx, kOp, cudaHostAlloc(reinterpret_cast<void**>(&host), 4 * sizeof(*host),
                                    cudaHostAllocMapped));
    std::memset(host, 0, 4 * sizeof(*host));
    SY_CUDA(ctx, kOp, cudaHostGetDevicePointer(reinterpret_cast<void**>(&device), host, 0));
    debug_host = host;
  }
  return device;
}

// Synchronises; a timed-out wait is reported with what it was waiting for.
void debug_check(Context& ctx) {
  const cudaError_t status = cudaStreamSynchronize(ctx.stream);
  const volatile unsigned long long* w = debug_host;
  if (w[0] != 0) {
    fail(ctx, kOp, "mbarrier wait timed out: block " + std::to_string(w[1] >> 32) + " thread " +
                       std::to_string(w[1] & 0xffffffffu) + " barrier at shared " +
                       std::to_string(w[2] >> 32) + " parity " + std::to_string(w[2] & 1) +
                       " iteration " + std::to_string(w[3]) + " (" + cudaGetErrorName(status) +
                       ")");
  }
  SY_CUDA(ctx, kOp, status);
}
#endif

// The kernel's tensor maps: A and B (loads); A2 and B2 for a second operand pair (forward; zeroed
// and unused otherwise); C for versions 3 and 4 (likewise).
struct TensorMaps {
  CUtensorMap a, b, a2, b2, c;
};

// The load maps of one operand pair: A [M, K] and B (forward [G, K, N], trans_b [G, N, K], wgrad
// [M, N]), 128B-swizzled boxes as the producer loads them. False when the driver refuses one.
bool make_operand_maps(CUtensorMap* map_a, CUtensorMap* map_b, const bf16* A, const bf16* B,
                       Form form, uint64_t M, uint64_t K, uint64_t N, uint64_t G, int bn) {
  const bool wgrad = form == Form::wgrad;
  {
    const uint64_t dims[2] = {K, M}, strides[1] = {K * 2};
    const uint32_t box[2] = {64, wgrad ? 64u : static_cast<uint32_t>(kBM)};
    if (!make_map(map_a, A, 2, dims, strides, box)) return false;
  }
  if (wgrad) {
    const uint64_t dims[2] = {N, M}, strides[1] = {N * 2};
    const uint32_t box[2] = {64, 64};
    return make_map(map_b, B, 2, dims, strides, box);
  }
  if (form == Form::forward) {
    const uint64_t dims[3] = {N, K, G}, strides[2] = {N * 2, K * N * 2};
    const uint32_t box[3] = {64, 64, 1};
    return make_map(map_b, B, 3, dims, strides, box);
  }
  const uint64_t dims[3] = {K, N, G}, strides[2] = {K * 2, N * K * 2};
  const uint32_t box[3] = {64, static_cast<uint32_t>(bn), 1};
  return make_map(map_b, B, 3, dims, strides, box);
}

template <int BN, Form F, class CT, int kVersion>
void launch(Context& ctx, const TensorMaps& maps, const KernelParams& params, int grid) {
  constexpr int smem = Geometry<BN, epilogue_of(kVersion)>::kSmemBytes;
  auto kernel = grouped_gemm_sm90_kernel<BN, F, CT, kVersion>;
  SY_CUDA(ctx, kOp, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<grid, kCtaThreads, smem, ctx.stream>>>(maps.a, maps.b, maps.a2, maps.b2, maps.c, params);
  check_launch(ctx, kOp);
#ifdef SY_GG_SM90_DEBUG
  debug_check(ctx);
#endif
}

template <int BN, int kVersion>
void dispatch(Context& ctx, Form form, DType c_dtype, const TensorMaps& maps,
              const KernelParams& params, int grid) {
  const bool f32 = c_dtype == DType::f32;
  switch (form) {
    case Form::forward:
      return f32 ? launch<BN, Form::forward, float, kVersion>(ctx, maps, params, grid)
                 : launch<BN, Form::forward, bf16, kVersion>(ctx, maps, params, grid);
    case Form::forward_trans_b:
      return f32 ? launch<BN, Form::forward_trans_b, float, kVersion>(ctx, maps, params, grid)
                 : launch<BN, Form::forward_trans_b, bf16, kVersion>(ctx, maps, params, grid);
    case Form::wgrad:
      return f32 ? launch<BN, Form::wgrad, float, kVersion>(ctx, maps, params, grid)
                 : launch<BN, Form::wgrad, bf16, kVersion>(ctx, maps, params, grid);
  }
}

// SY_GG_SM90_VERSION=1 selects the first GPU-verified kernel, 2 the one before the TMA
// epilogues, 3 the TMA reduce-add for the accumulating f32 weight gradient only (1.4-1.9x v2
// there, bitwise equal, H200 2026-12-02) and version 2 elsewhere; 4 (or unset) the staged TMA
// epilogue for every call but a bf16 accumulate. Any other value is an error.
int kernel_version() {
  const char* v = env_choice("SY_GG_SM90_VERSION", {"1", "2", "3", "4"});
  return v ? *v - '0' : 4;
}

// The tile order's band width in n tiles (KernelParams::band): SY_GG_SM90_BAND=N (0 to 65536),
// 0 = the order before bands (n fastest over the whole group). Read once.
int tile_band() {
  static const int band = static_cast<int>(
      env_whole_number("SY_GG_SM90_BAND", 65536, "n tiles per band; 0: no bands")
          .value_or(kDefaultBand));
  return band;
}

// Shapes where the per-group cuBLAS loop beats this kernel: declining them sends the caller
// (cuda_backend.cu: sm90, then mma, then the loop) to the loop. Off unless SY_GG_SM90_ROUTE=1.
// A row matches when every field matches (0 = any); rows_per_group_min and _max bound the mean
// rows per group. In isolation the loop wins every form at 2048 or more rows per group (forward
// 705 vs 627 TFLOP/s, input gradient 681 vs 631, weight gradient 656 vs 628 on the 8-expert
// shapes), but in the training step it lost: the 1.81B MoE ran at 67.6k tokens/s with this
// table on against 96.6k with it off (H200, 2026-12-02; NOTES-grouped-gemm.md, "Routing rule").
struct LoopRoute {
  GroupedGemmKind kind;
  bool any_kind;
  int64_t groups, K, N, rows_per_group_min, rows_per_group_max;
};
constexpr LoopRoute kLoopRoutes[] = {
    {GroupedGemmKind::wgrad, true, 0, 0, 0, 2048, 0},
};

bool route_to_loop(const GroupedGemmArgs& a) {
  if (!env_is("SY_GG_SM90_ROUTE", "1") || a.groups <= 0) return false;
  const int64_t mean_rows = a.M_total / a.groups;
  for (const LoopRoute& r : kLoopRoutes) {
    if ((r.any_kind || r.kind == a.kind) && (r.groups == 0 || r.groups == a.groups) &&
        (r.K == 0 || r.K == a.K) && (r.N == 0 || r.N == a.N) &&
        mean_rows >= r.rows_per_group_min &&
        (r.rows_per_group_max == 0 || mean_rows <= r.rows_per_group_max))
      return true;
  }
  return false;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t count_tiles(const GroupedGemmArgs& a, int bn) {
  const int64_t n_tiles = ceil_div(a.N, bn);
  if (a.kind == GroupedGemmKind::wgrad) return a.groups * ceil_div(a.K, kBM) * n_tiles;
  int64_t tiles = 0;
  for (int64_t g = 0; g < a.groups; ++g) tiles += ceil_div(a.host_rows[g], kBM) * n_tiles;
  return tiles;
}

}  // namespace

bool grouped_gemm_sm90(Context& ctx, const GroupedGemmArgs& a) {
  const bool wgrad = a.kind == GroupedGemmKind::wgrad;
  // ---- what this kernel handles; anything else falls back -----------------------------------
  constexpr int64_t kMaxExtent = INT32_MAX - 1024;  // TMA coordinates and tile indices are int32
  if (wgrad && a.trans_b) return false;
  if (a.groups < 1 || a.groups > kMaxGroups) return false;
  if (a.K <= 0 || a.N <= 0 || a.K % 8 != 0 || a.N % 8 != 0) return false;  // 16-byte rows
  if (a.M_total < 0 || a.M_total > kMaxExtent || a.K > kMaxExtent || a.N > kMaxExtent) return false;
  if (a.c_dtype != DType::bf16 && a.c_dtype != DType::f32) return false;
  if (!a.host_rows || !a.dev_offsets || !a.C || !aligned16(a.C)) return false;
  if (a.M_total > 0 && (!a.A || !a.B || !aligned16(a.A) || !aligned16(a.B))) return false;
  const bool pair = a.A2 || a.B2 || a.K2 != 0;
  if (pair && (wgrad || a.K2 <= 0 || a.K2 % 8 != 0 || a.K2 > kMaxExtent)) return false;
  // SY_GG_SM90_PAIR=0 declines every pair (the caller then makes two calls): for measurement.
  if (pair && env_is("SY_GG_SM90_PAIR", "0")) return false;
  if (pair && a.M_total > 0 && (!a.A2 || !a.B2 || !aligned16(a.A2) || !aligned16(a.B2)))
    return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const DeviceInfo info = device_info(device);
  if (!info.sm90 || !encode_tiled()) return false;
  if (route_to_loop(a)) return false;

  int64_t rows = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    if (a.host_rows[g] < 0) fail(ctx, kOp, "negative segment size for group " + std::to_string(g));
    rows += a.host_rows[g];
  }
  if (rows != a.M_total)
    fail(ctx, kOp, "segment sizes sum to " + std::to_string(rows) + ", M_total is " +
                       std::to_string(a.M_total));

  const size_t c_bytes = a.c_dtype == DType::f32 ? 4 : 2;
  if (a.M_total == 0) {  // nothing to reduce or to compute
    if (wgrad && !a.accumulate)
      SY_CUDA(ctx, kOp, cudaMemsetAsync(a.C, 0, static_cast<size_t>(a.groups * a.K * a.N) * c_bytes,
                                        ctx.stream));
    return true;
  }

  // ---- tile width: 128 x 256 tiles unless that leaves SMs idle (SY_GG_SM90_BN=128|256 forces)
  int bn = count_tiles(a, 256) >= 2 * info.sms ? 256 : 128;
  if (const char* forced = env_choice("SY_GG_SM90_BN", {"128", "256"}))
    bn = std::strcmp(forced, "128") == 0 ? 128 : 256;
  const int64_t tiles = count_tiles(a, bn);
  if (tiles == 0) return true;  // forward: every segment empty
  if (tiles > INT32_MAX) return false;

  // ---- tensor maps ---------------------------------------------------------------------------
  const uint64_t M = static_cast<uint64_t>(a.M_total), K = static_cast<uint64_t>(a.K),
                 N = static_cast<uint64_t>(a.N), G = static_cast<uint64_t>(a.groups);
  const Form form = wgrad ? Form::wgrad : (a.trans_b ? Form::forward_trans_b : Form::forward);
  TensorMaps maps;
  std::memset(&maps, 0, sizeof(maps));
  if (!make_operand_maps(&maps.a, &maps.b, a.A, a.B, form, M, K, N, G, bn)) return false;
  if (pair && !make_operand_maps(&maps.a2, &maps.b2, a.A2, a.B2, form, M,
                                 static_cast<uint64_t>(a.K2), N, G, bn))
    return false;

  // Version 3 covers the one accumulating call into f32 that training makes, the expert weight
  // gradients under gradient accumulation (model/moe/experts.cpp); the other accumulating call,
  // dx += dh3 w3^T, has a bf16 C, where the TMA's bf16 add would round acc to bf16 before adding
  // (two roundings against version 2's one). Those, `=` calls, and a C map the driver refuses
  // run version 2. C[g] is its own [K, N] matrix: the map {N, K, G} bounds every box at the
  // group's own K rows and N columns.
  int version = kernel_version();
  if (version == 3) {
    const uint64_t dims[3] = {N, K, G}, strides[2] = {N * 4, K * N * 4};
    const uint32_t box[3] = {kReduceBoxCols, 64, 1};
    const bool reduce_epilogue = wgrad && a.accumulate && a.c_dtype == DType::f32 &&
                                 make_map(&maps.c, a.C, 3, dims, strides, box,
                                          CU_TENSOR_MAP_DATA_TYPE_FLOAT32);
    if (!reduce_epilogue) version = 2;
  } else if (version == 4) {
    // The staged epilogue's C map: one box is 64 rows x 128 bytes. Forward C is [M_total, N];
    // wgrad's C[g] is its own [K, N] matrix, so the map {N, K, G} bounds each box at its group.
    const uint64_t cb = c_bytes;
    const uint32_t box_cols = static_cast<uint32_t>(128 / cb);
    const CUtensorMapDataType type = a.c_dtype == DType::f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                                              : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    bool staged = a.groups <= kMaxGroupsStaged && !(a.accumulate && a.c_dtype == DType::bf16);
    if (staged && wgrad) {
      const uint64_t dims[3] = {N, K, G}, strides[2] = {N * cb, K * N * cb};
      const uint32_t box[3] = {box_cols, 64, 1};
      staged = make_map(&maps.c, a.C, 3, dims, strides, box, type);
    } else if (staged) {
      const uint64_t dims[2] = {N, M}, strides[1] = {N * cb};
      const uint32_t box[2] = {box_cols, 64};
      staged = make_map(&maps.c, a.C, 2, dims, strides, box, type);
    }
    if (!staged) version = 2;
  }

  KernelParams params;
  params.groups = static_cast<int>(a.groups);
  params.M_total = static_cast<int>(a.M_total);
  params.K = static_cast<int>(a.K);
  params.N = static_cast<int>(a.N);
  params.offsets = a.dev_offsets;
  params.C = a.C;
  params.accumulate = a.accumulate ? 1 : 0;
  params.K2 = pair ? static_cast<int>(a.K2) : 0;
  params.band = tile_band();
  // The squares of C (wgrad `=`, f32 or bf16 C): one f64 per warp of each tile's two consumers.
  // SY_GG_SM90_SQUARES=0 leaves them out (the norm then reads the gradients): for measurement.
  const bool squares_off = env_is("SY_GG_SM90_SQUARES", "0");
  if (a.squares && a.squares_written && wgrad && !a.accumulate && !squares_off) {
    const int64_t count = tiles * kConsumers * 4;
    Tensor& squares = *a.squares;
    if (!squares.defined() || squares.dtype() != DType::f64 || squares.numel() != count)
      squares = ctx.alloc({count}, DType::f64);
    params.squares = squares.ptr<double>();
    *a.squares_written = true;
  }
#ifdef SY_GG_SM90_DEBUG
  params.debug = debug_words(ctx);
#endif
  const int grid = static_cast<int>(tiles < info.sms ? tiles : info.sms);
  if (version == 3) {
    if (bn == 256) launch<256, Form::wgrad, float, 3>(ctx, maps, params, grid);
    else launch<128, Form::wgrad, float, 3>(ctx, maps, params, grid);
  } else if (version == 4) {
    if (bn == 256) dispatch<256, 4>(ctx, form, a.c_dtype, maps, params, grid);
    else dispatch<128, 4>(ctx, form, a.c_dtype, maps, params, grid);
  } else if (version == 1) {
    if (bn == 256) dispatch<256, 1>(ctx, form, a.c_dtype, maps, params, grid);
    else dispatch<128, 1>(ctx, form, a.c_dtype, maps, params, grid);
  } else {
    if (bn == 256) dispatch<256, 2>(ctx, form, a.c_dtype, maps, params, grid);
    else dispatch<128, 2>(ctx, form, a.c_dtype, maps, params, grid);
  }
  return true;
}

}  // namespace sy::cuda
