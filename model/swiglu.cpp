#include "model/swiglu.h"

#include "model/buffers.h"

namespace sy {

void swiglu_forward(Backend& backend, const Tensor& out, const Tensor& u, const SwigluWeights& w,
                    SwigluActivations& acts) {
  backend.gemm(acts.h1, u, false, w.w1, false, 1.0, 0.0);
  backend.gemm(acts.h3, u, false, w.w3, false, 1.0, 0.0);
  backend.swiglu_forward(acts.hidden, acts.h1, acts.h3);
  backend.gemm(out, acts.hidden, false, w.w2, false, 1.0, 0.0);
}

void swiglu_backward(Backend& backend, const Tensor& du, const Tensor& dout, const Tensor& u,
                     const SwigluWeights& w, const SwigluWeights& grads, SwigluActivations& acts) {
  backend.gemm(acts.dhidden, dout, false, w.w2, true, 1.0, 0.0);
  backend.gemm(grads.w2, acts.hidden, true, dout, false, 1.0, 1.0);
  backend.swiglu_backward(acts.dh1, acts.dh3, acts.dhidden, acts.h1, acts.h3);
  backend.gemm(grads.w1, u, true, acts.dh1, false, 1.0, 1.0);
  backend.gemm(grads.w3, u, true, acts.dh3, false, 1.0, 1.0);
  backend.gemm(du, acts.dh1, false, w.w1, true, 1.0, 0.0);
  backend.gemm(du, acts.dh3, false, w.w3, true, 1.0, 1.0);
}

SwigluActivations swiglu_rows(const SwigluActivations& acts, int64_t begin, int64_t end) {
  return {acts.h1.rows(begin, end),      acts.h3.rows(begin, end),  acts.hidden.rows(begin, end),
          acts.dhidden.rows(begin, end), acts.dh1.rows(begin, end), acts.dh3.rows(begin, end)};
}

SwigluActivations ensure_swiglu(Backend& backend, SwigluActivations& storage, int64_t rows,
                                int64_t hidden, DType dtype, int64_t reserve) {
  SwigluActivations view;
  view.h1 = ensure_rows(backend, storage.h1, rows, hidden, dtype, reserve);
  view.h3 = ensure_rows(backend, storage.h3, rows, hidden, dtype, reserve);
  view.hidden = ensure_rows(backend, storage.hidden, rows, hidden, dtype, reserve);
  view.dhidden = ensure_rows(backend, storage.dhidden, rows, hidden, dtype, reserve);
  view.dh1 = ensure_rows(backend, storage.dh1, rows, hidden, dtype, reserve);
  view.dh3 = ensure_rows(backend, storage.dh3, rows, hidden, dtype, reserve);
  return view;
}

const Tensor& DenseFFN::forward(Backend& backend, const Tensor& u) {
  ensure(backend, out, u.shape(), u.dtype());
  SwigluActivations view = ensure_swiglu(backend, acts, u.dim(0), w1.value.dim(1), u.dtype());
  swiglu_forward(backend, out, u, {w1.compute_value(), w3.compute_value(), w2.compute_value()},
                 view);
  return out;
}

const Tensor& DenseFFN::backward(Backend& backend, const Tensor& dout, const Tensor& u) {
  ensure(backend, du, u.shape(), u.dtype());
  SwigluActivations view = ensure_swiglu(backend, acts, u.dim(0), w1.value.dim(1), u.dtype());
  swiglu_backward(backend, du, dout, u,
                  {w1.compute_value(), w3.compute_value(), w2.compute_value()},
                  {w1.grad, w3.grad, w2.grad}, view);
  return du;
}

}  // namespace sy
