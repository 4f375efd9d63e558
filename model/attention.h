// Multi-head causal self-attention with rotary position embedding (SPEC.md section 1).
// q = x@wq, k = x@wk, v = x@wv; rotary on q and k; softmax(q k^T / sqrt(Dh)) v per head; @ wo.
// Grouped-query attention (ModelConfig::n_kv_heads): k and v have Hkv heads, query head h reads
// key/value head h / (H / Hkv). QK-norm (ModelConfig::qk_norm): q = rmsnorm(x@wq, q_norm) and
// k = rmsnorm(x@wk, k_norm) before rotary, over the whole projection or over each head (the rows
// are as wide as the gain). The heads' width Dh need not be D / H (ModelConfig::head_dim).
// Two kernels compute the softmax part (model.attention_kernel, docs/config.md): `reference`
// saves probs [B, H, S, S] (attention_forward/backward); `flash` saves only lse [B, H, S] and
// recomputes the probabilities in backward (flash_attention_forward/backward). `cudnn` is flash
// with Backend::prefer_cudnn_attention: CUDA runs it on cuDNN's fused attention where cuDNN takes
// the case (the flash kernels otherwise); the CPU runs flash. `auto` is `cudnn` on a device and
// reference on the CPU, whose BLAS path it keeps bit for bit.
#pragma once
#include <string>

#include "model/backend.h"
#include "model/buffers.h"
#include "model/model_config.h"
#include "model/param.h"

namespace sy {

struct AttentionShape {
  int64_t batch;    // B
  int64_t seq;      // S
  int64_t heads;    // H
  // Document masking (model/backend.h): i32 [B*S] on the backend, or undefined (none), and the
  // same documents listed (undefined offsets: not listed).
  Tensor doc_start = {};
  DocumentList documents = {};
};

// Generation with a key/value cache (Transformer::decode_prompt): one layer's keys (after rotary)
// and values of every position so far, H heads (the grouped heads repeated).
struct KVCache {
  Tensor k, v;  // [capacity, H*Dh]
};

struct Attention {
  Param wq;                                             // [D, H*Dh]
  Param wk, wv;                                         // [D, Hkv*Dh]
  Param wo;                                             // [H*Dh, D]
  AttentionKernel kernel = AttentionKernel::automatic;  // ModelConfig::attention_kernel
  // Hkv (ModelConfig::kv_heads): fewer than the H query heads is grouped-query attention; k and v
  // are projected to Hkv heads and repeated to H (repeat_kv_heads) before rotary, so the kernels
  // below see H heads either way. 0: H.
  int64_t kv_heads = 0;
  Rotary rotary;  // ModelConfig::rotary()
  // QK-norm's gains, q_norm [H*Dh] and k_norm [Hkv*Dh] (full) or both [Dh] (per_head); undefined
  // without it. Their epsilon:
  double norm_eps = kDefaultNormEps;
  Param q_norm, k_norm;

  // Shared scratch (the Transformer's); null: a private one. out and the backward buffers
  // come from it, so they are valid only until the next layer's forward or backward.
  Workspace* workspace = nullptr;
  // train.recompute attention|layer: the saved activations below live in `workspace` too, and
  // the caller reruns forward on the same x right before backward (bitwise the same values).
  bool recompute = false;

  // Saved activations (views), [T, H*Dh] unless noted.
  Tensor q, k, v;        // after rotary (q, k)
  Tensor probs;          // [B, H, S, S], reference kernel only
  Tensor lse;            // [B, H, S] stat dtype, flash kernel only
  Tensor context;        // heads concatenated, before wo
  Tensor out;            // [T, D], scratch
  // Backward scratch.
  Tensor dcontext, dq, dk, dv, dx;  // dx [T, D]
  // Grouped-query attention only: k and v of the Hkv heads, and their gradients (scratch).
  Tensor k_kv, v_kv, dk_kv, dv_kv;
  // QK-norm only: the projections before their norm and the norms' rstd (saved), and the
  // projections' gradients (scratch). rstd: one per normalised row.
  Tensor q_raw, k_raw, q_rstd, k_rstd, dq_raw, dk_raw;

  // x: the normalised input [T, D]. Returns out [T, D].
  const Tensor& forward(Backend& backend, const Tensor& x, AttentionShape shape);
  // Generation, shape B = 1 and S = T: the T tokens of x at positions position .. position+T-1
  // of one sequence. Their keys and values go to `cache` rows position .., and their queries
  // attend over cache rows 0 .. position+T-1 (attention_decode); position 0, the prompt, runs
  // forward's kernels. Returns out [T, D]. Forward only.
  const Tensor& decode(Backend& backend, const Tensor& x, AttentionShape shape, KVCache& cache,
                       int64_t position);
  // Returns dx [T, D] (overwritten); weight gradients accumulate.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& x,
                         AttentionShape shape);
  // Whether this layer runs the flash kernel on `backend` (resolves `auto`).
  bool uses_flash(const Backend& backend) const;
  // Whether it has QK-norm's gains.
  bool qk_normed() const { return q_norm.value.defined(); }
  // Whether it asks `backend` for cuDNN's fused attention (`cudnn`; `auto` on a device).
  bool prefers_cudnn(const Backend& backend) const;
  // Drops the saved activations once backward has read them (the next forward allocates them
  // again), so that their memory serves the gradients and the layers below.
  void release_saved();

 private:
  Workspace own_;
  Workspace& scratch() { return workspace ? *workspace : own_; }
  Workspace& saved() { return recompute && workspace ? *workspace : own_; }
  bool grouped(AttentionShape shape) const { return kv_heads > 0 && kv_heads < shape.heads; }
  // q, k, v, context and out for x's T rows (forward's order of allocation, which the memory
  // plan's measurements were taken with).
  void allocate(Backend& backend, const Tensor& x);
  // q, k and v of x, allocated: projections, QK-norm, the grouped heads' repeat, rotary from
  // first_position.
  void project(Backend& backend, const Tensor& x, AttentionShape shape, int64_t first_position);
  // dx_raw = the gradient of `raw` through norm(raw, gain) given `dout`; gain.grad accumulates.
  void norm_backward(Backend& backend, const Tensor& dx_raw, Param& gain, const Tensor& dout,
                     const Tensor& raw, const Tensor& rstd);
};

}  // namespace sy
