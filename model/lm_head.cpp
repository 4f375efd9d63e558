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
  enqueue(backend, x, targets, compute_grad, grad_scale);
  return loss_sum(backend);
}

double LMHead::loss_sum(Backend& backend) const {
  double sum = 0.0;
  for (double loss : backend.read(losses)) sum += loss;
  return sum;
}

void LMHead::enqueue(Backend& backend, const Tensor& x, const Tensor& targets, bool compute_grad,
                     double grad_scale) {
  const int64_t T = x.dim(0), V = vocab();
  const DType dtype = x.dtype(), stat = stat_dtype(dtype);
  ensure(backend, losses, {T}, stat);
  Tensor dlogits;  // [T, V] in x's dtype, training only
  if (compute_grad) dlogits = backend.alloc({T, V}, dtype);
  const bool in_place = compute_grad && stat == dtype;
  const int64_t chunk = std::min<int64_t>(chunk_rows, T);
  for (int64_t begin = 0; begin < T; begin += chunk) {
    const int64_t end = std::min(T, begin + chunk);
    const Tensor logits_chunk =
        in_place ? dlogits.rows(begin, end) : ensure_rows(backend, logits, end - begin, V, stat);
    project(backend, logits_chunk, x.rows(begin, end));
    if (compute_grad && !in_place)
      backend.cross_entropy_into(losses.rows(begin, end), logits_chunk, targets.rows(begin, end),
                                 grad_scale, dlogits.rows(begin, end));
    else
      backend.cross_entropy(losses.rows(begin, end), logits_chunk, targets.rows(begin, end),
                            compute_grad, grad_scale);
  }
  if (compute_grad) backward(backend, x, dlogits);
}

void LMHead::backward(Backend& backend, const Tensor& x, const Tensor& dlogits) {
  ensure(backend, dx, x.shape(), x.dtype());
  if (tied_table) {
    backend.gemm(dx, dlogits, false, tied_table->compute_value(), false, 1.0, 0.0);
    backend.gemm(tied_table->grad, dlogits, true, x, false, 1.0, tied_table->take_grad_beta());
  } else {
    backend.gemm(dx, dlogits, false, weight.compute_value(), true, 1.0, 0.0);
    backend.gemm(weight.grad, x, true, dlogits, false, 1.0, weight.take_grad_beta());
  }
}

}  // namespace sy
