// LM head and cross-entropy, fused: logits = x @ W for one chunk of rows at a time, the loss and
// (in training) dlogits computed in place, then dx and dW, so that no more than one chunk of
// logits [chunk, V] exists at once. W is embedding^T when tied, else lm_head [D, V].
// Mixed precision: the logits chunk and the losses are in stat_dtype(x) (fp32 for bf16 x);
// dlogits are converted to x's dtype for the dx and dW GEMMs (dW accumulates in fp32).
#pragma once
#include "model/backend.h"
#include "model/param.h"

namespace sy {

struct LMHead {
  Param* tied_table = nullptr;  // embedding table [V, D] when tied
  Param weight;                 // lm_head [D, V] when untied
  int64_t chunk_rows = 1024;

  Tensor logits;   // [chunk_rows, V] in stat_dtype(x), reused per chunk
  Tensor dlogits;  // [chunk_rows, V] in x's dtype, only when that differs from logits' dtype
  Tensor losses;   // [T] in stat_dtype(x)
  Tensor dx;      // [T, D]

  int64_t vocab() const;
  // logits[rows, V] = x[rows, D] @ W, with W the tied table transposed or lm_head.
  void project(Backend& backend, const Tensor& logits, const Tensor& x) const;
  // x: the final normalised hidden states [T, D]; targets i32 [T]. Returns the summed
  // cross-entropy over the T positions (caller divides). With compute_grad, dx (overwritten) and
  // the weight gradient (accumulated) are for the loss sum_t ce_t * grad_scale.
  double forward_backward(Backend& backend, const Tensor& x, const Tensor& targets,
                          bool compute_grad, double grad_scale);
};

}  // namespace sy
