// Multi-head causal self-attention with rotary position embedding (SPEC.md section 1).
// q = x@wq, k = x@wk, v = x@wv; rotary on q and k; softmax(q k^T / sqrt(Dh)) v per head; @ wo.
// Two kernels compute the softmax part (model.attention_kernel, docs/config.md): `reference`
// saves probs [B, H, S, S] (attention_forward/backward); `flash` saves only lse [B, H, S] and
// recomputes the probabilities in backward (flash_attention_forward/backward). `auto` is flash
// on a device and reference on the CPU, whose BLAS path it keeps bit for bit.
#pragma once
#include <string>

#include "model/backend.h"
#include "model/param.h"

namespace sy {

struct AttentionShape {
  int64_t batch;    // B
  int64_t seq;      // S
  int64_t heads;    // H
};

struct Attention {
  Param wq, wk, wv, wo;  // [D, D]
  std::string kernel = "auto";  // auto | flash | reference (ModelConfig::attention_kernel)

  // Saved activations, [T, D] unless noted.
  Tensor q, k, v;        // after rotary (q, k)
  Tensor probs;          // [B, H, S, S], reference kernel only
  Tensor lse;            // [B, H, S] stat dtype, flash kernel only
  Tensor context;        // heads concatenated, before wo
  Tensor out;
  // Backward scratch.
  Tensor dcontext, dq, dk, dv, dx;

  // x: the normalised input [T, D]. Returns out [T, D].
  const Tensor& forward(Backend& backend, const Tensor& x, AttentionShape shape);
  // Returns dx [T, D] (overwritten); weight gradients accumulate.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& x,
                         AttentionShape shape);
  // Whether this layer runs the flash kernel on `backend` (resolves `auto`); throws on an
  // unknown kernel name.
  bool uses_flash(const Backend& backend) const;
};

}  // namespace sy
