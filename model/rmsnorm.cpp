#include "model/rmsnorm.h"

#include "model/buffers.h"

namespace sy {

Tensor& RMSNorm::output(Backend& backend, const Tensor& x) {
  out = (recompute ? scratch() : own_).get(backend, name + ".out", x.shape(), x.dtype());
  ensure(backend, rstd, {x.dim(0)}, stat_dtype(x.dtype()));
  return out;
}

const Tensor& RMSNorm::forward(Backend& backend, const Tensor& x) {
  backend.rmsnorm_forward(output(backend, x), rstd, x, gain.value, eps);
  return out;
}

const Tensor& RMSNorm::forward_sum(Backend& backend, const Tensor& sum, const Tensor& a,
                                   const Tensor& b) {
  backend.add_rmsnorm_forward(sum, output(backend, sum), rstd, a, b, gain.value, eps);
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

void RMSNorm::backward_into(Backend& backend, const Tensor& dx_out, const Tensor& dout,
                            const Tensor& x, bool accumulate) {
  if (gain.take_grad_needs_clear()) backend.fill(gain.grad, 0.0);
  backend.rmsnorm_backward(dx_out, gain.grad, dout, x, gain.value, rstd, accumulate);
}

}  // namespace sy
