#include "model/lm_head.h"

#include "model/buffers.h"

namespace sy {

int64_t LMHead::vocab() const {
  return tied_table ? tied_table->value.dim(0) : weight.value.dim(1);
}

void LMHead::project(Backend& backend, const Tensor& logits, const Tensor& x) const {
  if (tied_table)
    backend.gemm(logits, x, false, tied_table->compute_value(), true, 1.0, 0.0);
  else
    backend.gemm(logits, x, false, weight.compute_value(), false, 1.0, 0.0);
}

double LMHead::forward_backward(Backend& backend, const Tensor& x, const Tensor& targets,
                                bool compute_grad, double grad_scale) {
  const int64_t T = x.dim(0), V = vocab();
  const DType dtype = x.dtype(), stat = stat_dtype(dtype);
  const Tensor& w = tied_table ? tied_table->compute_value() : weight.compute_value();
  ensure(backend, losses, {T}, stat);
  if (compute_grad) ensure(backend, dx, x.shape(), dtype);
  const int64_t chunk = std::min<int64_t>(chunk_rows, T);
  Tensor& logits_storage = logits;
  for (int64_t begin = 0; begin < T; begin += chunk) {
    const int64_t end = std::min(T, begin + chunk);
    const Tensor x_chunk = x.rows(begin, end);
    const Tensor logits_chunk = ensure_rows(backend, logits_storage, end - begin, V, stat);
    project(backend, logits_chunk, x_chunk);

    // The GEMMs take the gradient in x's dtype: in place over the logits when that is theirs,
    // else written straight into a buffer of x's dtype.
    Tensor dlogits_chunk = logits_chunk;
    if (compute_grad && stat != dtype) {
      dlogits_chunk = ensure_rows(backend, dlogits, end - begin, V, dtype);
      backend.cross_entropy_into(losses.rows(begin, end), logits_chunk, targets.rows(begin, end),
                                 grad_scale, dlogits_chunk);
    } else {
      backend.cross_entropy(losses.rows(begin, end), logits_chunk, targets.rows(begin, end),
                            compute_grad, grad_scale);
    }
    if (!compute_grad) continue;
    const Tensor dx_chunk = dx.rows(begin, end);
    if (tied_table) {
      backend.gemm(dx_chunk, dlogits_chunk, false, w, false, 1.0, 0.0);
      backend.gemm(tied_table->grad, dlogits_chunk, true, x_chunk, false, 1.0,
                   tied_table->take_grad_beta());
    } else {
      backend.gemm(dx_chunk, dlogits_chunk, false, w, true, 1.0, 0.0);
      backend.gemm(weight.grad, x_chunk, true, dlogits_chunk, false, 1.0, weight.take_grad_beta());
    }
  }
  double loss_sum = 0.0;
  for (double loss : backend.read(losses)) loss_sum += loss;
  return loss_sum;
}

}  // namespace sy
