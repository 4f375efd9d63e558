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
  if (kernel == "grouped") return true;
  if (kernel == "cublas") return false;
  if (kernel == "auto") return backend.device() == Device::cuda && x.dtype() == DType::bf16;
  throw std::runtime_error("Experts: unknown kernel \"" + kernel +
                           "\" (expected auto, grouped or cublas)");
}

Tensor Experts::forward(Backend& backend, const Tensor& x,
                        const std::vector<int64_t>& rows_per_expert, int64_t max_rows) {
  const int64_t N = x.dim(0), D = x.dim(1), F = w1.value.dim(2);
  Tensor out = ensure_rows(backend, out_storage, N, D, x.dtype(), max_rows);
  SwigluActivations all = ensure_swiglu(backend, acts, N, F, x.dtype(), max_rows);
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
  Tensor dx = ensure_rows(backend, du_storage, N, D, x.dtype(), max_rows);
  SwigluActivations all = ensure_swiglu(backend, acts, N, F, x.dtype(), max_rows);
  if (grouped(backend, x)) {
    if (N == 0) return dx;
    const std::span<const int64_t> rows(rows_per_expert);
    backend.grouped_gemm(all.dhidden, dout, w2.compute_value(), true, rows, false);
    backend.grouped_gemm_wgrad(w2.grad, all.hidden, dout, rows, true);
    backend.swiglu_backward(all.dh1, all.dh3, all.dhidden, all.h1, all.h3);
    backend.grouped_gemm_wgrad(w1.grad, x, all.dh1, rows, true);
    backend.grouped_gemm_wgrad(w3.grad, x, all.dh3, rows, true);
    backend.grouped_gemm(dx, all.dh1, w1.compute_value(), true, rows, false);
    backend.grouped_gemm(dx, all.dh3, w3.compute_value(), true, rows, true);
    return dx;
  }
  int64_t begin = 0;
  for (int64_t j = 0; j < num_local(); ++j) {
    const int64_t end = begin + rows_per_expert[j];
    if (end > begin) {
      SwigluActivations segment = swiglu_rows(all, begin, end);
      swiglu_backward(backend, dx.rows(begin, end), dout.rows(begin, end), x.rows(begin, end),
                      expert_weights(j), expert_grads(j), segment);
    }
    begin = end;
  }
  return dx;
}

}  // namespace sy
