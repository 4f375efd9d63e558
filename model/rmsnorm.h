// RMSNorm: out = x / sqrt(mean(x^2) + 1e-5) * gain, over the last axis.
#pragma once
#include "model/backend.h"
#include "model/param.h"

namespace sy {

struct RMSNorm {
  Param gain;   // [D], used as the master value (fp32 also in bf16 training)
  Tensor out;   // [T, D]
  Tensor rstd;  // [T] in stat_dtype(x), saved for backward
  Tensor dx;    // [T, D]

  const Tensor& forward(Backend& backend, const Tensor& x);
  // x: the forward input. Returns dx (overwritten); gain.grad accumulates.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& x);
};

}  // namespace sy
