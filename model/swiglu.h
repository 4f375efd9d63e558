// SwiGLU feed-forward: ffn(u) = (silu(u @ w1) * (u @ w3)) @ w2. The dense FFN is one such block
// over all tokens; each expert is one over its segment of dispatched rows (model/moe/experts).
#pragma once
#include <string>

#include "model/backend.h"
#include "model/buffers.h"
#include "model/param.h"

namespace sy {

// Weights of one SwiGLU block: w1, w3 [D, F], w2 [F, D] (views into stacked expert tensors work).
struct SwigluWeights {
  Tensor w1, w3, w2;
};

// Saved activations and backward scratch of one SwiGLU block over N rows, all [N, F] views.
struct SwigluActivations {
  Tensor h1, h3;             // u@w1, u@w3: saved for backward
  Tensor hidden;             // silu(h1)*h3: scratch, rebuilt by backward over dhidden (or saved)
  Tensor dhidden, dh1, dh3;  // backward only (undefined in a forward's view): hidden, h1, h3
  // hidden is saved from forward (swiglu_buffers' keep_hidden): backward reads it for w2's
  // gradient first and then writes dhidden over it, instead of rebuilding it.
  bool hidden_saved = false;
};

// out[N, D] = ffn(u[N, D]); `acts` must hold [N, F] buffers (see swiglu_activations_view).
void swiglu_forward(Backend& backend, const Tensor& out, const Tensor& u, const SwigluWeights& w,
                    SwigluActivations& acts);
// du[N, D] (overwritten); grads.w1/w3/w2 accumulate.
void swiglu_backward(Backend& backend, const Tensor& du, const Tensor& dout, const Tensor& u,
                     const SwigluWeights& w, const SwigluWeights& grads, SwigluActivations& acts,
                     double grad_beta = 1.0);

// The beta for a block's three weight gradients: 0 only while all three are known zero.
inline double take_grad_beta(Param& w1, Param& w3, Param& w2) {
  const double b1 = w1.take_grad_beta(), b3 = w3.take_grad_beta(), b2 = w2.take_grad_beta();
  return b1 == 0.0 && b3 == 0.0 && b2 == 0.0 ? 0.0 : 1.0;
}

// Rows [begin, end) of every defined buffer of `acts`.
SwigluActivations swiglu_rows(const SwigluActivations& acts, int64_t begin, int64_t end);
// [rows, F] views: h1, h3 from slots "<name>.h1", "<name>.h3" of `saved`; hidden from `scratch`
// (a slot shared by every SwiGLU), or with `keep_hidden` from "<name>.hidden" of `saved`; with
// `grads`, also dhidden, dh1, dh3 as hidden, h1, h3 themselves (backward overwrites them in
// place). `reserve`: the most rows a call can bring (see ensure_rows).
SwigluActivations swiglu_buffers(Backend& backend, Workspace& saved, Workspace& scratch,
                                 const std::string& name, int64_t rows, int64_t hidden, DType dtype,
                                 int64_t reserve, bool grads, bool keep_hidden);

// The dense FFN layer.
struct DenseFFN {
  Param w1, w3, w2;
  // The prefix of its workspace slots ("<name>.out", "<name>.du", "<name>.h1", ...): a MoE
  // layer's shared expert is a DenseFFN beside the experts, whose layer already holds "ffn.out"
  // and "ffn.du".
  std::string name = "ffn";
  // Shared scratch (the Transformer's); null: a private one. out, du and the backward buffers
  // come from it.
  Workspace* workspace = nullptr;
  // train.recompute layer: h1, h3 live in `workspace` too, and the caller reruns
  // forward on the same u before backward.
  bool recompute = false;
  // train.recompute none: hidden is saved from forward too, not rebuilt by backward.
  bool keep_hidden = false;
  SwigluActivations acts;  // views, [T, F]
  Tensor out, du;          // views, [T, D]

  const Tensor& forward(Backend& backend, const Tensor& u);
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& u);
  // Drops h1 and h3 once backward has read them (Attention::release_saved).
  void release_saved();

 private:
  Workspace own_;
  Workspace& scratch() { return workspace ? *workspace : own_; }
  Workspace& saved() { return recompute && workspace ? *workspace : own_; }
};

}  // namespace sy
