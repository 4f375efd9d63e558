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
                     const SwigluWeights& w, const SwigluWeights& grads, SwigluActivations& acts,
                     double grad_beta) {
  if (acts.hidden_saved) {
    // w2's gradient reads the forward's hidden before dhidden overwrites it.
    backend.gemm(grads.w2, acts.hidden, true, dout, false, 1.0, grad_beta);
    backend.gemm(acts.dhidden, dout, false, w.w2, true, 1.0, 0.0);
    backend.swiglu_backward(acts.dh1, acts.dh3, acts.dhidden, acts.h1, acts.h3);
  } else {
    backend.gemm(acts.dhidden, dout, false, w.w2, true, 1.0, 0.0);
    // dh1, dh3 overwrite h1, h3; hidden is rebuilt here for w2's gradient (see swiglu_buffers).
    backend.swiglu_backward(acts.dh1, acts.dh3, acts.dhidden, acts.h1, acts.h3, acts.hidden);
    backend.gemm(grads.w2, acts.hidden, true, dout, false, 1.0, grad_beta);
  }
  backend.gemm(grads.w1, u, true, acts.dh1, false, 1.0, grad_beta);
  backend.gemm(grads.w3, u, true, acts.dh3, false, 1.0, grad_beta);
  backend.gemm(du, acts.dh1, false, w.w1, true, 1.0, 0.0);
  backend.gemm(du, acts.dh3, false, w.w3, true, 1.0, 1.0);
}

SwigluActivations swiglu_rows(const SwigluActivations& acts, int64_t begin, int64_t end) {
  auto rows = [&](const Tensor& t) { return t.defined() ? t.rows(begin, end) : Tensor(); };
  return {rows(acts.h1),  rows(acts.h3),  rows(acts.hidden), rows(acts.dhidden),
          rows(acts.dh1), rows(acts.dh3), acts.hidden_saved};
}

SwigluActivations swiglu_buffers(Backend& backend, Workspace& saved, Workspace& scratch,
                                 const std::string& name, int64_t rows, int64_t hidden, DType dtype,
                                 int64_t reserve, bool grads, bool keep_hidden) {
  // By default only h1 and h3 are kept per layer. hidden = silu(h1) * h3 is dead once the
  // forward's w2 GEMM has read it, and backward rebuilds it bitwise (Backend::swiglu_backward)
  // for w2's gradient, over dhidden, which that op reads for the last time: one scratch slot for
  // both. Kept, it costs [rows, F] a layer and spares backward that write. dh1 and dh3 are
  // written over h1 and h3, read for the last time there too.
  SwigluActivations view;
  view.h1 = saved.rows(backend, name + ".h1", rows, hidden, dtype, reserve);
  view.h3 = saved.rows(backend, name + ".h3", rows, hidden, dtype, reserve);
  view.hidden = keep_hidden ? saved.rows(backend, name + ".hidden", rows, hidden, dtype, reserve)
                            : scratch.rows(backend, "swiglu.hidden", rows, hidden, dtype, reserve);
  view.hidden_saved = keep_hidden;
  if (grads) {
    view.dhidden = view.hidden;
    view.dh1 = view.h1;
    view.dh3 = view.h3;
  }
  return view;
}

const Tensor& DenseFFN::forward(Backend& backend, const Tensor& u) {
  out = scratch().get(backend, name + ".out", u.shape(), u.dtype());  // the caller adds it
  acts = swiglu_buffers(backend, saved(), scratch(), name, u.dim(0), w1.value.dim(1), u.dtype(), 0,
                        false, keep_hidden);
  swiglu_forward(backend, out, u, {w1.compute_value(), w3.compute_value(), w2.compute_value()},
                 acts);
  return out;
}

void DenseFFN::release_saved() {
  acts = SwigluActivations();
  own_ = Workspace();
}

const Tensor& DenseFFN::backward(Backend& backend, const Tensor& dout, const Tensor& u) {
  du = scratch().get(backend, name + ".du", u.shape(), u.dtype());
  acts = swiglu_buffers(backend, saved(), scratch(), name, u.dim(0), w1.value.dim(1), u.dtype(), 0,
                        true, keep_hidden);
  swiglu_backward(backend, du, dout, u,
                  {w1.compute_value(), w3.compute_value(), w2.compute_value()},
                  {w1.grad, w3.grad, w2.grad}, acts, take_grad_beta(w1, w3, w2));
  return du;
}

}  // namespace sy
