// A trainable parameter: its value, its gradient, and what the optimizer needs to know about it.
#pragma once
#include <string>

#include "model/tensor.h"

namespace sy {

struct Param {
  std::string path;        // checkpoint path under /model, e.g. "layers/0/attn/wq" (SPEC.md section 6)
  // Master weights (fp32; f64 in gradient checks); what the optimizer updates. On a backend that
  // splits bf16 masters (Backend::splits_bf16_masters), a weight with a bf16 compute copy holds
  // its fp32 values as DType::f32_split.
  Tensor value;
  // Same shape as value, in its host dtype (f32 for f32_split), or bf16 for a weight that one
  // GEMM writes whole once a step (TransformerOptions::bf16_grad_storage); accumulated over
  // micro-batches.
  // Undefined while stale in a training step (the Transformer allocates it when backward
  // reaches its layer).
  Tensor grad;
  // What the layers' GEMMs (and the embedding lookup) read. When the compute dtype is the master
  // dtype it is `value` itself (same buffer). In bf16 training it is the high halves of an
  // f32_split value (same buffer: the optimizer's update writes both), or, where the backend
  // does not split, a bf16 copy of value that Transformer::refresh_compute_weights() refreshes
  // after every optimizer step and every load. Norm gains and the router stay fp32 (compute is
  // value). Undefined means "use value".
  Tensor compute;
  bool decay = true;       // AdamW weight decay applies: true iff ndim >= 2 (SPEC.md section 4)
  bool is_expert = false;  // an expert slice: reduced over the expert-data-parallel group only
  // The gradient's value is its bf16 rounding, taken once after every sum
  // (TransformerOptions::bf16_grads): `grad` is bf16 where one GEMM writes it whole, else f32 and
  // rounded where it is read (the gradient norm, the optimizer).
  bool bf16_grad = false;
  // What `grad` holds between backward passes:
  //   live:  this step's gradient so far (ops add into it);
  //   zero:  zeros (Transformer::zero_grads);
  //   stale: nothing of the coming step: the optimizer's pass leaves it unspecified so that it
  //          need not write it (AdamWStep::discard_grads); the next backward overwrites it.
  //          A training forward drops a zero or stale grad's memory, and the backward of its
  //          layer allocates it again, stale (Transformer::release_unwritten_grads).
  // Zero or stale, the first GEMM into the grad may write instead of add (a GEMM with beta 0 does
  // not read C: one read of every weight gradient saved per step, and no zeroing pass); x + 0 ==
  // x, so the values are those of adding into zeros. An op that can only add (a scatter-add, a
  // dgain +=) clears a stale grad first (take_grad_needs_clear).
  enum class GradState { live, zero, stale };
  GradState grad_state = GradState::live;
  // The sum of squares of `grad`, as f64 partials (their sum, in index order), from the op that
  // wrote all of grad in one pass and could sum it on the way (the experts' grouped weight-
  // gradient GEMM on CUDA, Backend::grouped_gemm_wgrad): Backend::grad_norm_squares then reads
  // these instead of grad. Valid while grad_squares_valid; every later change of grad clears it
  // (take_grad_*, the gradients' all-reduce, a test's after-backward hook), and the norm uses it
  // once. The tensor is kept between steps so that its buffer stays the same.
  Tensor grad_squares;
  bool grad_squares_valid = false;

  // The beta for the next GEMM that adds into `grad` (0 while it is zero or stale, else 1); the
  // gradient is live afterwards.
  double take_grad_beta() {
    const double beta = grad_state == GradState::live ? 1.0 : 0.0;
    grad_state = GradState::live;
    grad_squares_valid = false;
    return beta;
  }
  // For an op that can only add into `grad`: true when the caller must clear it first (stale);
  // the gradient is live afterwards.
  bool take_grad_needs_clear() {
    const bool stale = grad_state == GradState::stale;
    grad_state = GradState::live;
    grad_squares_valid = false;
    return stale;
  }

  const Tensor& compute_value() const { return compute.defined() ? compute : value; }
};

}  // namespace sy
