// RMSNorm: out = x / sqrt(mean(x^2) + eps) * gain, over the last axis.
#pragma once
#include <string>

#include "model/backend.h"
#include "model/buffers.h"
#include "model/param.h"

namespace sy {

struct RMSNorm {
  Param gain;   // [D], used as the master value (fp32 also in bf16 training)
  // Shared scratch (the Transformer's); null: a private one. dx comes from it.
  Workspace* workspace = nullptr;
  // train.recompute other than none: `out` lives in `workspace` under "<name>.out" and the
  // caller reruns forward before backward. rstd is always kept (T values).
  bool recompute = false;
  std::string name = "norm";
  double eps = kDefaultNormEps;  // ModelConfig::norm_eps

  Tensor out;   // [T, D] (a view)
  Tensor rstd;  // [T] in stat_dtype(x), saved for backward
  Tensor dx;    // [T, D], scratch

  const Tensor& forward(Backend& backend, const Tensor& x);
  // The residual sum into `sum` (= a + b), then forward(sum), in one op: a device reads a and b
  // once instead of the sum again.
  const Tensor& forward_sum(Backend& backend, const Tensor& sum, const Tensor& a, const Tensor& b);
  // x: the forward input. Returns dx (overwritten); gain.grad accumulates.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& x);
  // The same dx written into `dx_out` (the residual stream's gradient), or with `accumulate`
  // added into it as it is stored.
  void backward_into(Backend& backend, const Tensor& dx_out, const Tensor& dout, const Tensor& x,
                     bool accumulate);
  // Drops `out` once backward no longer needs it (Attention::release_saved).
  void release_saved();

 private:
  Workspace own_;
  Workspace& scratch() { return workspace ? *workspace : own_; }
  Tensor& output(Backend& backend, const Tensor& x);
};

}  // namespace sy
