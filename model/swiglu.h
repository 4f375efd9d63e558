// SwiGLU feed-forward: ffn(u) = (silu(u @ w1) * (u @ w3)) @ w2. The dense FFN is one such block
// over all tokens; each expert is one over its segment of dispatched rows (model/moe/experts).
#pragma once
#include "model/backend.h"
#include "model/param.h"

namespace sy {

// Weights of one SwiGLU block: w1, w3 [D, F], w2 [F, D] (views into stacked expert tensors work).
struct SwigluWeights {
  Tensor w1, w3, w2;
};

// Saved activations and scratch of one SwiGLU block over N rows, all [N, F].
struct SwigluActivations {
  Tensor h1, h3, hidden;  // u@w1, u@w3, silu(h1)*h3
  Tensor dhidden, dh1, dh3;
};

// out[N, D] = ffn(u[N, D]); `acts` must hold [N, F] buffers (see swiglu_activations_view).
void swiglu_forward(Backend& backend, const Tensor& out, const Tensor& u, const SwigluWeights& w,
                    SwigluActivations& acts);
// du[N, D] (overwritten); grads.w1/w3/w2 accumulate.
void swiglu_backward(Backend& backend, const Tensor& du, const Tensor& dout, const Tensor& u,
                     const SwigluWeights& w, const SwigluWeights& grads, SwigluActivations& acts);

// Rows [begin, end) of every buffer of `acts`.
SwigluActivations swiglu_rows(const SwigluActivations& acts, int64_t begin, int64_t end);
// Makes every buffer of `acts` hold at least `rows` rows of width F (allocating `reserve` rows
// when it must grow, see ensure_rows); returns views of `rows` rows.
SwigluActivations ensure_swiglu(Backend& backend, SwigluActivations& storage, int64_t rows,
                                int64_t hidden, DType dtype, int64_t reserve = 0);

// The dense FFN layer.
struct DenseFFN {
  Param w1, w3, w2;
  SwigluActivations acts;
  Tensor out, du;

  const Tensor& forward(Backend& backend, const Tensor& u);
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& u);
};

}  // namespace sy
