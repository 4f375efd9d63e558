// A trainable parameter: its value, its gradient, and what the optimizer needs to know about it.
#pragma once
#include <string>

#include "model/tensor.h"

namespace sy {

struct Param {
  std::string path;        // checkpoint path under /model, e.g. "layers/0/attn/wq" (SPEC.md section 6)
  Tensor value;            // fp32 master weights
  Tensor grad;             // same shape; accumulated over micro-batches
  bool decay = true;       // AdamW weight decay applies: true iff ndim >= 2 (SPEC.md section 4)
  bool is_expert = false;  // an expert slice: reduced over the expert-data-parallel group only
};

}  // namespace sy
