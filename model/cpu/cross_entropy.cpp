// Cross-entropy on the CPU: per row the loss m + log(sum exp(logits - m)) - logits[target], the
// sum in double, and optionally its gradient written over the logits. Contract: model/backend.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
void cross_entropy(T* losses, T* logits, const int32_t* targets, int64_t N, int64_t V,
                   bool compute_grad, T grad_scale) {
  std::vector<T> scratch(compute_grad ? 0 : V);
  for (int64_t t = 0; t < N; ++t) {
    T* row = logits + t * V;
    const int64_t target = targets[t];
    if (target == kIgnoreTarget) {  // not trained: no loss, no gradient
      losses[t] = T(0);
      if (compute_grad) std::fill_n(row, V, T(0));
      continue;
    }
    const T target_logit = row[target];
    const T m = max_of(row, V);
    T* e = compute_grad ? row : scratch.data();  // exp(logits - m), in place for the gradient
    if (!compute_grad) std::copy(row, row + V, e);
    const double sum = exp_shifted(e, V, m);
    losses[t] = static_cast<T>(static_cast<double>(m) + std::log(sum) - target_logit);
    if (compute_grad) {
      scale(row, V, static_cast<T>(grad_scale / sum));
      row[target] -= grad_scale;
    }
  }
}

}  // namespace
}  // namespace cpu

void CpuBackend::cross_entropy_impl(const Tensor& losses, const Tensor& logits,
                                    const Tensor& targets, bool compute_grad, double grad_scale) {
  const OpCheck c(*this, "cross_entropy");
  const DType dt = cpu::host_float(c, logits, "logits");
  const int64_t N = logits.dim(0), V = logits.dim(1);
  cpu::index_range(c, targets, N, kIgnoreTarget, V, "targets");  // kIgnoreTarget is -1
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::cross_entropy(losses.ptr<T>(), logits.ptr<T>(), targets.ptr<int32_t>(), N, V,
                       compute_grad, static_cast<T>(grad_scale));
  });
}

}  // namespace sy
