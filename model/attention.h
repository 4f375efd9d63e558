// Multi-head causal self-attention with rotary position embedding (SPEC.md section 1).
// q = x@wq, k = x@wk, v = x@wv; rotary on q and k; softmax(q k^T / sqrt(Dh)) v per head; @ wo.
#pragma once
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

  // Saved activations, [T, D] unless noted.
  Tensor q, k, v;        // after rotary (q, k)
  Tensor probs;          // [B, H, S, S]
  Tensor context;        // heads concatenated, before wo
  Tensor out;
  // Backward scratch.
  Tensor dcontext, dq, dk, dv, dx;

  // x: the normalised input [T, D]. Returns out [T, D].
  const Tensor& forward(Backend& backend, const Tensor& x, AttentionShape shape);
  // Returns dx [T, D] (overwritten); weight gradients accumulate.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& x,
                         AttentionShape shape);
};

}  // namespace sy
