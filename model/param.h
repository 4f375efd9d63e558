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

  const Tensor& compute_value() const { return compute.defined() ? compute : value; }
};

}  // namespace sy
