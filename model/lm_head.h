// LM head and cross-entropy, fused: logits = x @ W for one chunk of rows at a time and the loss
// (in training also dlogits) computed from each chunk, so that no more than one chunk of logits
// [chunk, V] exists at once. In training the dlogits of all T rows are kept and dx and dW are one
// GEMM each over all rows: a weight-gradient GEMM per chunk reads and writes the whole fp32
// [V, D] gradient once per chunk (bench/lm_head_bench, T 8192, V 32768 on an H200: 2.27 ms for
// the per-chunk dW GEMMs of 1024 rows, 1.58 ms for one over all rows). The plan depends on the
// shapes only, never on free memory: how dW's sum over rows is split decides its bits, and a
// resumed run must repeat them. W is embedding^T when tied, else lm_head [D, V].
// Mixed precision: the logits chunk and the losses are in stat_dtype(x) (fp32 for bf16 x);
// dlogits are in x's dtype for the dx and dW GEMMs (dW accumulates in fp32). Where those dtypes
// are the same (fp32, fp64), the chunks of logits are the dlogits buffer's rows, overwritten in
// place by their gradient.
#pragma once
#include "model/backend.h"
#include "model/param.h"

namespace sy {

struct LMHead {
  Param* tied_table = nullptr;  // embedding table [V, D] when tied
  Param weight;                 // lm_head [D, V] when untied
  // Rows of logits at a time (bench/lm_head_bench: a 512-row fp32 chunk stays mostly in L2).
  static constexpr int64_t kChunkRows = 512;
  int64_t chunk_rows = kChunkRows;

  Tensor logits;  // [chunk_rows, V] in stat_dtype(x), reused per chunk (not with in-place dlogits)
  Tensor losses;  // [T] in stat_dtype(x)
  Tensor dx;      // [T, D]

  int64_t vocab() const;
  // logits[rows, V] = x[rows, D] @ W, with W the tied table transposed or lm_head.
  void project(Backend& backend, const Tensor& logits, const Tensor& x) const;
  // x: the final normalised hidden states [T, D]; targets i32 [T]. Returns the summed
  // cross-entropy over the T positions (caller divides). With compute_grad, dx (overwritten) and
  // the weight gradient (accumulated) are for the loss sum_t ce_t * grad_scale; the dlogits
  // [T, V] in x's dtype are a block taken for the call.
  double forward_backward(Backend& backend, const Tensor& x, const Tensor& targets,
                          bool compute_grad, double grad_scale);
  // The same in two halves: enqueue the work, then read the summed loss (a host synchronisation)
  // from `losses`, which holds it until the next call. The Transformer reads it only after the
  // layers' backward is enqueued, so that the GPU does not wait on the host in between.
  void enqueue(Backend& backend, const Tensor& x, const Tensor& targets, bool compute_grad,
               double grad_scale);
  double loss_sum(Backend& backend) const;

 private:
  // dx = dlogits W^T and the weight gradient += x^T dlogits (as W's layout needs), over all rows.
  void backward(Backend& backend, const Tensor& x, const Tensor& dlogits);
};

}  // namespace sy
