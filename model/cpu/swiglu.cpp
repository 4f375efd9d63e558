// SwiGLU on the CPU: out = silu(a) * b, and its backward (which can recompute the forward's
// output for the next GEMM's weight gradient). Contract: model/backend.h.
#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + exp_fast(-a));
}

template <class T>
void swiglu_forward(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * sigmoid(a[i]) * b[i];
}

// d silu(a)/da = sig(a) (1 + a (1 - sig(a))).
// da, db may alias a, b (every input of element i is read before it is written); hidden, when
// not null, gets the forward's a * sigmoid(a) * b again, in the same order of operations.
template <class T>
void swiglu_backward(T* da, T* db, const T* dout, const T* a, const T* b, T* hidden, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = a[i], y = b[i], g = dout[i];
    const T s = sigmoid(x);
    if (hidden) hidden[i] = x * s * y;
    db[i] = g * x * s;
    da[i] = g * y * s * (T(1) + x * (T(1) - s));
  }
}

}  // namespace
}  // namespace cpu

void CpuBackend::swiglu_forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) {
  const DType dt = cpu::host_float(OpCheck(*this, "swiglu_forward"), a, "a");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::swiglu_forward(out.ptr<T>(), a.ptr<T>(), b.ptr<T>(), a.numel());
  });
}

void CpuBackend::swiglu_backward_impl(const Tensor& da, const Tensor& db, const Tensor& dout,
                                      const Tensor& a, const Tensor& b, const Tensor& hidden) {
  const DType dt = cpu::host_float(OpCheck(*this, "swiglu_backward"), a, "a");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::swiglu_backward(da.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), a.ptr<T>(), b.ptr<T>(),
                         hidden.defined() ? hidden.ptr<T>() : nullptr, a.numel());
  });
}

}  // namespace sy
