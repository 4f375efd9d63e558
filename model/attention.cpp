#include "model/attention.h"

#include <stdexcept>
#include <string>

#include "model/buffers.h"

namespace sy {

namespace {
// QK-norm normalises rows as wide as its gain: the whole projection (full) or one head
// (per_head), so a per-head norm is the same op over t viewed as [T*heads, Dh].
Tensor gain_rows(const Tensor& t, const Param& gain) {
  const int64_t width = gain.value.numel();
  return t.reshape({t.numel() / width, width});
}
}  // namespace

bool Attention::uses_flash(const Backend& backend) const {
  switch (kernel) {
    case AttentionKernel::flash:
    case AttentionKernel::cudnn: return true;
    case AttentionKernel::reference: return false;
    case AttentionKernel::automatic: break;
  }
  return backend.device() != Device::cpu;
}

bool Attention::prefers_cudnn(const Backend& backend) const {
  return kernel == AttentionKernel::cudnn ||
         (kernel == AttentionKernel::automatic && backend.device() != Device::cpu);
}

const Tensor& Attention::forward(Backend& backend, const Tensor& x, AttentionShape shape) {
  const DType dtype = x.dtype();
  Workspace& keep = saved();
  allocate(backend, x);
  const bool flash = uses_flash(backend);
  if (flash) {
    probs = Tensor();  // never [B, H, S, S] with flash
    lse = keep.get(backend, "attn.lse", {shape.batch, shape.heads, shape.seq}, stat_dtype(dtype));
  } else {
    lse = Tensor();
    probs = keep.get(backend, "attn.probs", {shape.batch, shape.heads, shape.seq, shape.seq},
                     dtype);
  }
  project(backend, x, shape, 0);
  // `cudnn` (and `auto` on a device): the same flash ops, which the CUDA backend then runs on
  // cuDNN where it can.
  if (flash) backend.prefer_cudnn_attention(prefers_cudnn(backend));
  if (flash)
    backend.flash_attention_forward(context, lse, q, k, v, shape.batch, shape.seq, shape.heads,
                                    shape.doc_start, shape.documents);
  else
    backend.attention_forward(context, probs, q, k, v, shape.batch, shape.seq, shape.heads,
                              shape.doc_start);
  backend.gemm(out, context, false, wo.compute_value(), false, 1.0, 0.0);
  return out;
}

const Tensor& Attention::decode(Backend& backend, const Tensor& x, AttentionShape shape,
                                KVCache& cache, int64_t position) {
  const int64_t T = x.dim(0), end = position + T;
  if (shape.batch != 1 || shape.seq != T || shape.doc_start.defined() || end > cache.k.dim(0))
    throw std::logic_error("Attention::decode: " + std::to_string(T) + " tokens at position " +
                           std::to_string(position) + " for a cache of " +
                           std::to_string(cache.k.dim(0)));
  if (position == 0) {
    forward(backend, x, shape);
    backend.copy(cache.k.rows(0, end), k);
    backend.copy(cache.v.rows(0, end), v);
    return out;
  }
  allocate(backend, x);
  project(backend, x, shape, position);
  backend.copy(cache.k.rows(position, end), k);
  backend.copy(cache.v.rows(position, end), v);
  backend.attention_decode(context, q, cache.k.rows(0, end), cache.v.rows(0, end), shape.heads,
                           position);
  backend.gemm(out, context, false, wo.compute_value(), false, 1.0, 0.0);
  return out;
}

void Attention::allocate(Backend& backend, const Tensor& x) {
  const DType dtype = x.dtype();
  const Shape td = x.shape();
  const Shape heads_shape{td[0], wq.value.dim(1)};  // [T, H*Dh]
  Workspace& keep = saved();
  q = keep.get(backend, "attn.q", heads_shape, dtype);
  k = keep.get(backend, "attn.k", heads_shape, dtype);
  v = keep.get(backend, "attn.v", heads_shape, dtype);
  context = keep.get(backend, "attn.context", heads_shape, dtype);
  out = scratch().get(backend, "attn.out", td, dtype);  // the caller adds it to the residual
}

void Attention::project(Backend& backend, const Tensor& x, AttentionShape shape,
                        int64_t first_position) {
  const DType dtype = x.dtype();
  const Shape td = x.shape();
  const Shape heads_shape{td[0], wq.value.dim(1)};  // [T, H*Dh]
  Workspace& keep = saved();

  // Grouped: k and v of the Hkv heads, repeated to H below. Rotary acts on each head alone, so
  // rotating the repeated heads equals repeating the rotated ones: the kernels below see H heads
  // and need no grouped case of their own.
  const Shape kv_shape{td[0], wk.value.dim(1)};
  const Tensor k_proj =
      grouped(shape) ? (k_kv = scratch().get(backend, "attn.k_kv", kv_shape, dtype)) : k;
  const Tensor v_proj =
      grouped(shape) ? (v_kv = scratch().get(backend, "attn.v_kv", kv_shape, dtype)) : v;
  if (qk_normed()) {
    q_raw = keep.get(backend, "attn.q_raw", heads_shape, dtype);
    k_raw = keep.get(backend, "attn.k_raw", kv_shape, dtype);
    q_rstd = keep.get(backend, "attn.q_rstd", {gain_rows(q, q_norm).dim(0)}, stat_dtype(dtype));
    k_rstd = keep.get(backend, "attn.k_rstd", {gain_rows(k_raw, k_norm).dim(0)}, stat_dtype(dtype));
    backend.gemm(q_raw, x, false, wq.compute_value(), false, 1.0, 0.0);
    backend.gemm(k_raw, x, false, wk.compute_value(), false, 1.0, 0.0);
    backend.rmsnorm_forward(gain_rows(q, q_norm), q_rstd, gain_rows(q_raw, q_norm), q_norm.value,
                            norm_eps);
    backend.rmsnorm_forward(gain_rows(k_proj, k_norm), k_rstd, gain_rows(k_raw, k_norm),
                            k_norm.value, norm_eps);
  } else {
    backend.gemm(q, x, false, wq.compute_value(), false, 1.0, 0.0);
    backend.gemm(k_proj, x, false, wk.compute_value(), false, 1.0, 0.0);
  }
  backend.gemm(v_proj, x, false, wv.compute_value(), false, 1.0, 0.0);
  if (grouped(shape)) {
    backend.repeat_kv_heads(k, k_kv, kv_heads);
    backend.repeat_kv_heads(v, v_kv, kv_heads);
  }
  backend.rope_forward_qk(q, k, shape.batch, shape.seq, shape.heads, rotary, shape.doc_start,
                          first_position);
}

void Attention::release_saved() {
  q = k = v = probs = lse = context = Tensor();
  q_raw = k_raw = q_rstd = k_rstd = Tensor();
  own_ = Workspace();
}

const Tensor& Attention::backward(Backend& backend, const Tensor& dout, const Tensor& x,
                                  AttentionShape shape) {
  const DType dtype = x.dtype();
  const Shape td = x.shape();
  const Shape heads_shape{td[0], wq.value.dim(1)};  // [T, H*Dh]
  Workspace& ws = scratch();
  dcontext = ws.get(backend, "attn.dcontext", heads_shape, dtype);
  dq = ws.get(backend, "attn.dq", heads_shape, dtype);
  dk = ws.get(backend, "attn.dk", heads_shape, dtype);
  dv = ws.get(backend, "attn.dv", heads_shape, dtype);
  dx = ws.get(backend, "attn.dx", td, dtype);

  // out = context @ wo
  backend.gemm(dcontext, dout, false, wo.compute_value(), true, 1.0, 0.0);
  backend.gemm(wo.grad, context, true, dout, false, 1.0, wo.take_grad_beta());

  if (lse.defined()) backend.prefer_cudnn_attention(prefers_cudnn(backend));
  if (lse.defined())  // the forward ran flash (out = context)
    backend.flash_attention_backward(dq, dk, dv, dcontext, q, k, v, context, lse, shape.batch,
                                     shape.seq, shape.heads, shape.doc_start, shape.documents);
  else
    backend.attention_backward(dq, dk, dv, dcontext, q, k, v, probs, shape.batch, shape.seq,
                               shape.heads);
  // The rotation is orthogonal: its backward rotates the gradient back.
  backend.rope_backward_qk(dq, dk, shape.batch, shape.seq, shape.heads, rotary, shape.doc_start);

  // Grouped: each key/value head's gradient is the sum over the query heads it served.
  const Shape kv_shape{td[0], wk.value.dim(1)};
  const Tensor* dq_proj = &dq;
  const Tensor* dk_proj = &dk;
  const Tensor* dv_proj = &dv;
  if (grouped(shape)) {
    dk_kv = ws.get(backend, "attn.dk_kv", kv_shape, dtype);
    dv_kv = ws.get(backend, "attn.dv_kv", kv_shape, dtype);
    backend.repeat_kv_heads_backward(dk_kv, dk, kv_heads);
    backend.repeat_kv_heads_backward(dv_kv, dv, kv_heads);
    dk_proj = &dk_kv;
    dv_proj = &dv_kv;
  }
  if (qk_normed()) {
    dq_raw = ws.get(backend, "attn.dq_raw", heads_shape, dtype);
    dk_raw = ws.get(backend, "attn.dk_raw", kv_shape, dtype);
    norm_backward(backend, dq_raw, q_norm, *dq_proj, q_raw, q_rstd);
    norm_backward(backend, dk_raw, k_norm, *dk_proj, k_raw, k_rstd);
    dq_proj = &dq_raw;
    dk_proj = &dk_raw;
  }
  backend.gemm(wq.grad, x, true, *dq_proj, false, 1.0, wq.take_grad_beta());
  backend.gemm(wk.grad, x, true, *dk_proj, false, 1.0, wk.take_grad_beta());
  backend.gemm(wv.grad, x, true, *dv_proj, false, 1.0, wv.take_grad_beta());
  backend.gemm(dx, *dq_proj, false, wq.compute_value(), true, 1.0, 0.0);
  backend.gemm(dx, *dk_proj, false, wk.compute_value(), true, 1.0, 1.0);
  backend.gemm(dx, *dv_proj, false, wv.compute_value(), true, 1.0, 1.0);
  return dx;
}

void Attention::norm_backward(Backend& backend, const Tensor& dx_raw, Param& gain,
                              const Tensor& dout, const Tensor& raw, const Tensor& rstd) {
  if (gain.take_grad_needs_clear()) backend.fill(gain.grad, 0.0);
  backend.rmsnorm_backward(gain_rows(dx_raw, gain), gain.grad, gain_rows(dout, gain),
                           gain_rows(raw, gain), gain.value, rstd);  // dgain +=
}

}  // namespace sy
