// Grouped GEMM over the expert segments of a MoE layer: one launch covers every expert.
//
// The rows of A (and of C in the forward form) are grouped into G consecutive segments, one per
// local expert: segment g holds rows [offsets[g], offsets[g+1]) with offsets[0] = 0 and
// offsets[G] = M_total (segments may be empty, and need not be multiples of any tile).
//   forward: C[seg g] (=, or += with accumulate) = A[seg g] @ op(B[g])
//            A [M_total, K] bf16, B [G, K, N] bf16 (or [G, N, K] with trans_b), C [M_total, N]
//   wgrad:   C[g] (=, or +=) = A[seg g]^T @ B[seg g]     (the reduction runs over the segment)
//            A [M_total, K] bf16, B [M_total, N] bf16, C [G, K, N]
// Forward only, a second operand pair over its own reduction (A2 [M_total, K2], B2 [G, K2, N] or
// [G, N, K2] with trans_b, the same segments and the same op(B) form):
//            C[seg g] (= or +=) A[seg g] @ op(B[g]) + A2[seg g] @ op(B2[g])
// summed in one f32 accumulator, C rounded once (the expert FFN's dx = dh1 w1^T + dh3 w3^T).
// C is bf16 or f32; accumulation is in f32 always. Every element of C that the operation covers
// is written (an empty segment's wgrad block is zeroed unless accumulate), so outputs need no
// clearing. No split over the reduction: results are bitwise repeatable.
#pragma once
#include <cstdint>

#include "model/cuda/common.cuh"

namespace sy::cuda {

enum class GroupedGemmKind { forward, wgrad };

struct GroupedGemmArgs {
  GroupedGemmKind kind = GroupedGemmKind::forward;
  bool trans_b = false;     // forward only: B[g] stored [N, K] (the dgrad form x @ w^T)
  bool accumulate = false;  // C += result instead of C = result
  int64_t groups = 0;       // G
  int64_t M_total = 0;      // rows of A (sum of the segment sizes)
  int64_t K = 0, N = 0;     // as in the shapes above
  const int64_t* host_rows = nullptr;   // [G] segment sizes on the host
  const int32_t* dev_offsets = nullptr; // [G + 1] segment offsets on the device
  const bf16* A = nullptr;
  const bf16* B = nullptr;
  const bf16* A2 = nullptr;  // forward only: the second pair (nullptr: none)
  const bf16* B2 = nullptr;
  int64_t K2 = 0;
  void* C = nullptr;
  DType c_dtype = DType::bf16;  // bf16 or f32
  // wgrad without accumulate: the Hopper kernel also writes the squares of C (of the stored,
  // rounded values where C is bf16) as f64 partials into *squares (reallocated unless it is f64
  // of the right size) and sets *squares_written; the other kernels leave both alone. Each
  // partial is one warp's part of one tile: f32 sums of 16 squares, added in f64 in a fixed
  // order (repeatable bit for bit).
  Tensor* squares = nullptr;
  bool* squares_written = nullptr;
};

// The Hopper kernel (wgmma, TMA, warp-specialised, persistent): model/cuda/grouped_gemm_sm90.cu.
// Returns false without launching anything when it does not handle the case (device not sm_90,
// a shape or alignment it does not support); the caller then falls back.
bool grouped_gemm_sm90(Context& ctx, const GroupedGemmArgs& args);

// The portable tensor-core kernel (mma.sync, cp.async; sm_80 and up): model/cuda/grouped_gemm.cu.
// Returns false when it does not handle the case (a second operand pair among them).
bool grouped_gemm_mma(Context& ctx, const GroupedGemmArgs& args);

}  // namespace sy::cuda
