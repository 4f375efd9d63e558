// How cuDNN's deterministic attention backward splits a batch whose dS workspace (S^2 x 2 bytes
// a sequence and head, bf16) exceeds its budget: the one rule, used by the CUDA backend
// (model/cuda/cudnn_attention.cu) and by the memory estimate (trainer/memory_estimate.cpp).
// Every split gives the bits of one call, so the rule moves time and memory, never the numbers.
#pragma once
#include <algorithm>
#include <cstdint>

namespace sy {

// The default budget's floor: the whole batch of B 4, H 16, S 2048 in one call (its 512 MiB of
// dS and the few hundred bytes cuDNN adds; more only where the allocator already holds a larger
// free block). At 128 MiB, one sequence, the allocator's free blocks gave the benchmark MoE two
// calls of 2 sequences in most layers, 0.67 ms a step slower than one call (one H100,
// 2026-12-06, BENCHMARKS.md).
constexpr int64_t kAttentionWorkspaceFloor = int64_t{513} << 20;

struct AttentionWorkspaceBudget {
  int64_t bytes;  // 0: no limit
  bool fixed;     // set by hand (SY_CUDNN_BWD_WORKSPACE_MIB): a hard cap, down to one head a call
};

struct AttentionBackwardChunks {
  int64_t sequences, heads;  // a call's share of the batch's B sequences and H heads
};

inline int64_t largest_divisor_within(int64_t n, int64_t limit) {
  int64_t d = std::clamp<int64_t>(limit, 1, n);
  while (n % d != 0) --d;
  return d;
}

// Sequences: the largest divisor of B whose dS fits the budget, at least 1. When one sequence's
// dS alone exceeds it, one sequence a call and heads: the largest divisor of H that fits, but,
// unless the budget is fixed, no fewer than give two waves of 128-key tiles on `sms` SMs: fewer
// leave SMs idle (on an H200 at S 16384, one head a call ran 2.25x the time of one call over the
// batch; two heads 1.18x, four 1.09x). Chunks start at offsets of the stats too, kept 16-byte
// aligned: H x S (for heads, S) a multiple of 4, else one call over the batch (one sequence a
// call). `workspace_bytes`: the whole batch's, as cuDNN sizes it.
inline AttentionBackwardChunks attention_backward_chunks(int64_t B, int64_t H, int64_t S,
                                                         int64_t workspace_bytes,
                                                         AttentionWorkspaceBudget budget, int sms) {
  if (budget.bytes <= 0 || workspace_bytes <= budget.bytes || (H * S) % 4 != 0) return {B, H};
  const int64_t per_sequence = std::max<int64_t>(1, workspace_bytes / B);
  if (per_sequence <= budget.bytes || S % 4 != 0)
    return {largest_divisor_within(B, budget.bytes / per_sequence), H};
  // A head's share of dS, without the few hundred bytes of the engine's own (page-rounded down).
  const int64_t per_head = std::max<int64_t>(4096, workspace_bytes / (B * H) / 4096 * 4096);
  int64_t heads = largest_divisor_within(H, budget.bytes / per_head);
  const int64_t key_tiles = (S + 127) / 128;
  const int64_t min_heads =
      budget.fixed ? 1 : std::min<int64_t>(H, (2 * int64_t{sms} + key_tiles - 1) / key_tiles);
  while (heads < min_heads || H % heads != 0) ++heads;
  return {1, heads};
}

}  // namespace sy
