// RMSNorm on the CPU, forward and backward; the sums of squares in double. Contract:
// model/backend.h.
#include <cmath>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* gain, int64_t N, int64_t D, double eps) {
  for (int64_t t = 0; t < N; ++t) {
    const T* xr = x + t * D;
    T* yr = out + t * D;
    const T r = static_cast<T>(1.0 / std::sqrt(sum_squares(xr, D) / D + eps));
    rstd[t] = r;
    for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * r * gain[j];
  }
}

// y_j = x_j r g_j, r = (mean x^2 + eps)^(-1/2):
//   dx_j = r g_j dy_j - x_j r^3 / D * sum_k dy_k g_k x_k;   dgain_j += sum_t dy_j x_j r.
// accumulate: dx_j += that, the same float addition as add() after the plain form.
template <class T>
void rmsnorm_backward(T* dx, T* dgain, const T* dout, const T* x, const T* gain, const T* rstd,
                      int64_t N, int64_t D, bool accumulate) {
  for (int64_t t = 0; t < N; ++t) {
    const T* xr = x + t * D;
    const T* dyr = dout + t * D;
    T* dxr = dx + t * D;
    const T r = rstd[t];
    double s = 0;
    for (int64_t j = 0; j < D; ++j) s += static_cast<double>(dyr[j]) * gain[j] * xr[j];
    const T c = static_cast<T>(s * r * r * r / D);
    for (int64_t j = 0; j < D; ++j) {
      const T grad = r * gain[j] * dyr[j] - xr[j] * c;
      dxr[j] = accumulate ? dxr[j] + grad : grad;
      dgain[j] += dyr[j] * xr[j] * r;
    }
  }
}

}  // namespace
}  // namespace cpu

void CpuBackend::rmsnorm_forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x,
                                      const Tensor& gain, double eps) {
  const DType dt = cpu::host_float(OpCheck(*this, "rmsnorm_forward"), x, "x");
  const int64_t D = x.dim(-1), N = x.numel() / D;
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::rmsnorm_forward(out.ptr<T>(), rstd.ptr<T>(), x.ptr<T>(), gain.ptr<T>(), N, D, eps);
  });
}

void CpuBackend::rmsnorm_backward_impl(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                                       const Tensor& x, const Tensor& gain, const Tensor& rstd,
                                       bool accumulate) {
  const DType dt = cpu::host_float(OpCheck(*this, "rmsnorm_backward"), x, "x");
  const int64_t D = x.dim(-1), N = x.numel() / D;
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::rmsnorm_backward(dx.ptr<T>(), dgain.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gain.ptr<T>(),
                          rstd.ptr<T>(), N, D, accumulate);
  });
}

}  // namespace sy
