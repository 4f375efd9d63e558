#include "model/moe/experts.h"

#include <span>
#include <stdexcept>

#include "model/buffers.h"

namespace sy {

namespace {
Tensor slice(const Tensor& stacked, int64_t j) {
  return stacked.rows(j, j + 1).reshape({stacked.dim(1), stacked.dim(2)});
}
}  // namespace

SwigluWeights Experts::expert_weights(int64_t j) const {
  return {slice(w1.compute_value(), j), slice(w3.compute_value(), j), slice(w2.compute_value(), j)};
}

SwigluWeights Experts::expert_grads(int64_t j) const {
  return {slice(w1.grad, j), slice(w3.grad, j), slice(w2.grad, j)};
}

bool Experts::grouped(const Backend& backend, const Tensor& x) const {
  switch (kernel) {
    case ExpertKernel::grouped: return true;
    case ExpertKernel::cublas: return false;
    case ExpertKernel::automatic: break;
  }
  return backend.device() == Device::cuda && x.dtype() == DType::bf16;
}

void Experts::release_saved() {
  acts = SwigluActivations();
  out_storage = du_storage = Tensor();
  own_ = Workspace();
}

Tensor Experts::forward(Backend& backend, const Tensor& x,
                        const std::vector<int64_t>& rows_per_expert, int64_t max_rows,
                        const Tensor& into) {
  const int64_t N = x.dim(0), D = x.dim(1), F = w1.value.dim(2);
  // The output rows are consumed by the combine right after: scratch, unless the caller keeps them.
  if (into.defined() && (into.shape() != Shape{N, D} || into.dtype() != x.dtype()))
    throw std::runtime_error("Experts::forward: `into` must be [" + std::to_string(N) + ", " +
                             std::to_string(D) + "] of the rows' dtype");
  out_storage = into.defined() ? into
                               : scratch().rows(backend, "experts.out", N, D, x.dtype(), max_rows);
  const Tensor out = out_storage;
  acts = swiglu_buffers(backend, saved(), scratch(), "experts", N, F, x.dtype(), max_rows, false,
                        keep_hidden);
  const SwigluActivations& all = acts;
  if (grouped(backend, x)) {
    if (N == 0) return out;
    const std::span<const int64_t> rows(rows_per_expert);
    backend.grouped_gemm(all.h1, x, w1.compute_value(), false, rows, false);
    backend.grouped_gemm(all.h3, x, w3.compute_value(), false, rows, false);
    backend.swiglu_forward(all.hidden, all.h1, all.h3);
    backend.grouped_gemm(out, all.hidden, w2.compute_value(), false, rows, false);
    return out;
  }
  int64_t begin = 0;
  for (int64_t j = 0; j < num_local(); ++j) {
    const int64_t end = begin + rows_per_expert[j];
    if (end > begin) {
      SwigluActivations segment = swiglu_rows(all, begin, end);
      swiglu_forward(backend, out.rows(begin, end), x.rows(begin, end), expert_weights(j),
                     segment);
    }
    begin = end;
  }
  return out;
}

Tensor Experts::backward(Backend& backend, const Tensor& dout, const Tensor& x,
                         const std::vector<int64_t>& rows_per_expert, int64_t max_rows) {
  const int64_t N = x.dim(0), D = x.dim(1), F = w1.value.dim(2);
  du_storage = scratch().rows(backend, "experts.dx", N, D, x.dtype(), max_rows);
  const Tensor dx = du_storage;
  acts = swiglu_buffers(backend, saved(), scratch(), "experts", N, F, x.dtype(), max_rows, true,
                        keep_hidden);
  const SwigluActivations& all = acts;
  // Every expert's gradient slice is written (an empty segment's block is zeroed by the grouped
  // wgrad, and cleared here for the loop), so the gradients may be written while zero or stale.
  const double grad_beta = take_grad_beta(w1, w3, w2);
  const auto clear_if_written = [&](const SwigluWeights& grads) {
    if (grad_beta == 0.0)
      for (const Tensor& g : {grads.w1, grads.w3, grads.w2}) backend.fill(g, 0.0);
  };
  if (grouped(backend, x)) {
    if (N == 0) {  // no rows on this rank: the gradient of every local expert is zero
      clear_if_written({w1.grad, w3.grad, w2.grad});
      return dx;
    }
    const std::span<const int64_t> rows(rows_per_expert);
    const bool accumulate = grad_beta != 0.0;
    // Written whole (not accumulated), a gradient's sum of squares can come out of the GEMM that
    // writes it, and the gradient norm need not read it again (Param::grad_squares); the op
    // leaves the squares alone when it accumulates.
    const auto wgrad = [&](Param& w, const Tensor& a, const Tensor& b) {
      w.grad_squares_valid =
          backend.grouped_gemm_wgrad(w.grad, a, b, rows, accumulate, &w.grad_squares);
    };
    // A saved hidden is read by w2's gradient before dhidden overwrites it; else the SwiGLU
    // backward rebuilds it over dhidden.
    if (all.hidden_saved) {
      wgrad(w2, all.hidden, dout);
      backend.grouped_gemm(all.dhidden, dout, w2.compute_value(), true, rows, false);
      backend.swiglu_backward(all.dh1, all.dh3, all.dhidden, all.h1, all.h3);
    } else {
      backend.grouped_gemm(all.dhidden, dout, w2.compute_value(), true, rows, false);
      backend.swiglu_backward(all.dh1, all.dh3, all.dhidden, all.h1, all.h3, all.hidden);
      wgrad(w2, all.hidden, dout);
    }
    wgrad(w1, x, all.dh1);
    wgrad(w3, x, all.dh3);
    backend.grouped_gemm_pair(dx, all.dh1, w1.compute_value(), all.dh3, w3.compute_value(), true,
                              rows);
    return dx;
  }
  int64_t begin = 0;
  for (int64_t j = 0; j < num_local(); ++j) {
    const int64_t end = begin + rows_per_expert[j];
    if (end > begin) {
      SwigluActivations segment = swiglu_rows(all, begin, end);
      swiglu_backward(backend, dx.rows(begin, end), dout.rows(begin, end), x.rows(begin, end),
                      expert_weights(j), expert_grads(j), segment, grad_beta);
    } else {
      clear_if_written(expert_grads(j));
    }
    begin = end;
  }
  return dx;
}

}  // namespace sy
