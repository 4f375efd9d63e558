#include "model/moe/experts.h"

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

Tensor Experts::forward(Backend& backend, const Tensor& x,
                        const std::vector<int64_t>& rows_per_expert, int64_t max_rows) {
  const int64_t N = x.dim(0), D = x.dim(1), F = w1.value.dim(2);
  Tensor out = ensure_rows(backend, out_storage, N, D, x.dtype(), max_rows);
  SwigluActivations all = ensure_swiglu(backend, acts, N, F, x.dtype(), max_rows);
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
