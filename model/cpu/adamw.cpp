// The optimizer ops on the CPU: AdamW (torch semantics, SPEC.md section 4) and SGD, and the fused
// optimizer pass as the per-tensor ops it stands for (backend.h): Backend's default
// grad_norm_squares and fused_adamw_step. The CPU backend runs these, so they are the reference
// that a device's multi-tensor pass is tested against (tests/test_optim.cpp,
// tests/test_cuda_optim.cpp).
#include <cmath>
#include <stdexcept>
#include <string>

#include "model/backend.h"
#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

// torch.optim.AdamW, single-tensor path, operation by operation: scalars computed in double (as
// Python does) and cast to T, as torch does for a scalar argument of a T tensor op.
//   param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1);
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
//   denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps); param.addcdiv_(exp_avg, denom, -lr / bc1)
template <class T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const T decay = static_cast<T>(1.0 - lr * weight_decay);
  const T w1 = static_cast<T>(1.0 - beta1);
  const T b2 = static_cast<T>(beta2);
  const T w2 = static_cast<T>(1.0 - beta2);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T eps_t = static_cast<T>(eps);
  const T neg_step_size = static_cast<T>(-(lr / bc1));
  const bool lerp_low = std::abs(w1) < T(0.5);
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    const T gi = g[i];
    // torch's lerp: self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
    m[i] = lerp_low ? m[i] + w1 * (gi - m[i]) : gi - (gi - m[i]) * (T(1) - w1);
    v[i] = v[i] * b2 + w2 * gi * gi;
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps_t;
    p[i] = p[i] + neg_step_size * m[i] / denom;
  }
}

template <class T>
void sgd_update(T* p, const T* g, int64_t n, T lr) {
  for (int64_t i = 0; i < n; ++i) p[i] -= lr * g[i];
}

}  // namespace
}  // namespace cpu

void CpuBackend::adamw_update_impl(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                                   const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                                   double eps, double weight_decay, int64_t step) {
  cpu::dispatch_float(param.dtype(), [&]<class T>(T) {
    cpu::adamw_update(param.ptr<T>(), grad.ptr<T>(), exp_avg.ptr<T>(), exp_avg_sq.ptr<T>(),
                      param.numel(), lr, beta1, beta2, eps, weight_decay, step);
  });
}

void CpuBackend::sgd_update_impl(const Tensor& param, const Tensor& grad, double lr) {
  cpu::dispatch_float(param.dtype(), [&]<class T>(T) {
    cpu::sgd_update(param.ptr<T>(), grad.ptr<T>(), param.numel(), static_cast<T>(lr));
  });
}

namespace {
// The gradient as the norm and the update read it: itself, or, for a bf16 one or one whose value
// is its bf16 rounding (Param::bf16_grad), that rounding in the master dtype (a new tensor).
Tensor grad_value(Backend& backend, const Param& param) {
  const bool narrow = param.grad.dtype() == DType::bf16;
  if (!narrow && !param.bf16_grad) return param.grad;
  Tensor rounded = param.grad;
  if (!narrow) {
    rounded = backend.alloc(param.grad.shape(), DType::bf16);
    backend.copy(rounded, param.grad);
  }
  Tensor wide = backend.alloc(param.grad.shape(), host_dtype(param.value.dtype()));
  backend.copy(wide, rounded);
  return wide;
}
}  // namespace

void Backend::grad_norm_squares(std::span<Param* const> params, double& shared, double& expert) {
  std::vector<Tensor> grads;
  grads.reserve(params.size());
  for (const Param* param : params) grads.push_back(grad_value(*this, *param));
  std::vector<double> sums(params.size());
  sum_squares_many(grads, sums);  // one host synchronisation on a device
  shared = 0.0;
  expert = 0.0;
  for (size_t i = 0; i < params.size(); ++i) (params[i]->is_expert ? expert : shared) += sums[i];
}

void Backend::fused_adamw_step(std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                               std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp) {
  if (exp_avgs.size() != params.size() || exp_avg_sqs.size() != params.size())
    throw std::invalid_argument("fused_adamw_step: " + std::to_string(params.size()) +
                                " params but " + std::to_string(exp_avgs.size()) + " exp_avg and " +
                                std::to_string(exp_avg_sqs.size()) + " exp_avg_sq tensors");
  for (size_t i = 0; i < params.size(); ++i) {
    Param& param = *params[i];
    const Tensor grad = grad_value(*this, param);
    const bool widened = grad.data() != param.grad.data();
    if (hp.grad_scale != 1.0) scale(grad, hp.grad_scale);
    adamw_update(param.value, grad, exp_avgs[i], exp_avg_sqs[i], hp.lr, hp.beta1, hp.beta2, hp.eps,
                 param.decay ? hp.weight_decay : 0.0, hp.step);
    if (param.compute.defined() && param.compute.data() != param.value.data())
      copy(param.compute, param.value);
    if (hp.zero_grads) fill(param.grad, 0.0);
    else if (widened && hp.grad_scale != 1.0 && !hp.discard_grads) copy(param.grad, grad);
  }
}

}  // namespace sy
