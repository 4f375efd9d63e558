#include "model/rmsnorm.h"

#include "model/buffers.h"

namespace sy {

const Tensor& RMSNorm::forward(Backend& backend, const Tensor& x) {
  out = (recompute ? scratch() : own_).get(backend, name + ".out", x.shape(), x.dtype());
  ensure(backend, rstd, {x.dim(0)}, stat_dtype(x.dtype()));
  backend.rmsnorm_forward(out, rstd, x, gain.value);
  return out;
}

void RMSNorm::release_saved() {
  out = Tensor();
  own_ = Workspace();
}

const Tensor& RMSNorm::backward(Backend& backend, const Tensor& dout, const Tensor& x) {
  dx = scratch().get(backend, "norm.dx", x.shape(), x.dtype());
  if (gain.take_grad_needs_clear()) backend.fill(gain.grad, 0.0);
  backend.rmsnorm_backward(dx, gain.grad, dout, x, gain.value, rstd);  // dgain +=
  return dx;
}

}  // namespace sy
