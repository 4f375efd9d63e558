#include "model/attention.h"

#include <stdexcept>

#include "model/buffers.h"

namespace sy {

bool Attention::uses_flash(const Backend& backend) const {
  if (kernel == "flash") return true;
  if (kernel == "reference") return false;
  if (kernel == "auto") return backend.device() != Device::cpu;
  throw std::runtime_error("attention: unknown kernel \"" + kernel +
                           "\" (expected auto, flash or reference)");
}

const Tensor& Attention::forward(Backend& backend, const Tensor& x, AttentionShape shape) {
  const DType dtype = x.dtype();
  const Shape td = x.shape();
  for (Tensor* buffer : {&q, &k, &v, &context, &out}) ensure(backend, *buffer, td, dtype);
  const bool flash = uses_flash(backend);
  if (flash) {
    probs = Tensor();  // never [B, H, S, S] with flash
    ensure(backend, lse, {shape.batch, shape.heads, shape.seq}, stat_dtype(dtype));
  } else {
    lse = Tensor();
    ensure(backend, probs, {shape.batch, shape.heads, shape.seq, shape.seq}, dtype);
  }

  backend.gemm(q, x, false, wq.compute_value(), false, 1.0, 0.0);
  backend.gemm(k, x, false, wk.compute_value(), false, 1.0, 0.0);
  backend.gemm(v, x, false, wv.compute_value(), false, 1.0, 0.0);
  backend.rope_forward(q, shape.batch, shape.seq, shape.heads);
  backend.rope_forward(k, shape.batch, shape.seq, shape.heads);
  if (flash)
    backend.flash_attention_forward(context, lse, q, k, v, shape.batch, shape.seq, shape.heads);
  else
    backend.attention_forward(context, probs, q, k, v, shape.batch, shape.seq, shape.heads);
  backend.gemm(out, context, false, wo.compute_value(), false, 1.0, 0.0);
  return out;
}

const Tensor& Attention::backward(Backend& backend, const Tensor& dout, const Tensor& x,
                                  AttentionShape shape) {
  const DType dtype = x.dtype();
  const Shape td = x.shape();
  for (Tensor* buffer : {&dcontext, &dq, &dk, &dv, &dx}) ensure(backend, *buffer, td, dtype);

  // out = context @ wo
  backend.gemm(dcontext, dout, false, wo.compute_value(), true, 1.0, 0.0);
  backend.gemm(wo.grad, context, true, dout, false, 1.0, 1.0);

  if (lse.defined())  // the forward ran flash (out = context)
    backend.flash_attention_backward(dq, dk, dv, dcontext, q, k, v, context, lse, shape.batch,
                                     shape.seq, shape.heads);
  else
    backend.attention_backward(dq, dk, dv, dcontext, q, k, v, probs, shape.batch, shape.seq,
                               shape.heads);
  // The rotation is orthogonal: its backward rotates the gradient back.
  backend.rope_backward(dq, shape.batch, shape.seq, shape.heads);
  backend.rope_backward(dk, shape.batch, shape.seq, shape.heads);

  backend.gemm(wq.grad, x, true, dq, false, 1.0, 1.0);
  backend.gemm(wk.grad, x, true, dk, false, 1.0, 1.0);
  backend.gemm(wv.grad, x, true, dv, false, 1.0, 1.0);
  backend.gemm(dx, dq, false, wq.compute_value(), true, 1.0, 0.0);
  backend.gemm(dx, dk, false, wk.compute_value(), true, 1.0, 1.0);
  backend.gemm(dx, dv, false, wv.compute_value(), true, 1.0, 1.0);
  return dx;
}

}  // namespace sy
