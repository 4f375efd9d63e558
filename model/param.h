// A trainable parameter: its value, its gradient, and what the optimizer needs to know about it.
#pragma once
#include <string>

#include "model/tensor.h"

namespace sy {

struct Param {
  std::string path;        // checkpoint path under /model, e.g. "layers/0/attn/wq" (SPEC.md section 6)
  Tensor value;            // master weights (fp32; f64 in gradient checks); what the optimizer updates
  Tensor grad;             // same shape and dtype as value; accumulated over micro-batches
  // What the layers' GEMMs (and the embedding lookup) read. When the compute dtype is the master
  // dtype it is `value` itself (same buffer); in bf16 training it is a bf16 copy of value that
  // Transformer::refresh_compute_weights() refreshes after every optimizer step and every load.
  // Norm gains and the router stay fp32 (compute is value). Undefined means "use value".
  Tensor compute;
  bool decay = true;       // AdamW weight decay applies: true iff ndim >= 2 (SPEC.md section 4)
  bool is_expert = false;  // an expert slice: reduced over the expert-data-parallel group only
  // True while `grad` is known to hold zeros (set where grads are cleared: Transformer::zero_grads
  // and the optimizer step). The first backward that adds into it may then write instead (a GEMM
  // with beta 0 does not read C: one read of every weight gradient saved per step); x + 0 == x, so
  // the values are the same either way.
  bool grad_is_zero = false;

  // The beta for the next GEMM that adds into `grad` (0 while it is known zero, else 1); the
  // gradient is no longer known zero afterwards.
  double take_grad_beta() {
    const double beta = grad_is_zero ? 0.0 : 1.0;
    grad_is_zero = false;
    return beta;
  }

  const Tensor& compute_value() const { return compute.defined() ? compute : value; }
};

}  // namespace sy
