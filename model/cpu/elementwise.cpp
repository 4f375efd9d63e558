// Elementwise ops on the CPU: fill, copy (converting the dtype), y += alpha x, y *= alpha and the
// sum of squares (in double). Contracts: model/backend.h. The loops themselves (convert, add,
// scale, sum_squares) sit in common.h, as other ops reuse them.
#include <cstring>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
void fill(T* x, int64_t n, T value) {
  std::fill(x, x + n, value);
}

}  // namespace
}  // namespace cpu

void CpuBackend::fill_impl(const Tensor& x, double value) {
  cpu::dispatch_any(x.dtype(), [&]<class T>(T) {
    cpu::fill(x.ptr<T>(), x.numel(), static_cast<T>(value));
  });
}

void CpuBackend::copy_impl(const Tensor& dst, const Tensor& src) {
  if (dst.data() == src.data() && dst.dtype() == src.dtype()) return;
  if (dst.dtype() == src.dtype()) {
    std::memmove(dst.data(), src.data(), src.nbytes());
    return;
  }
  cpu::dispatch_any(dst.dtype(), [&]<class D>(D) {
    cpu::dispatch_any(src.dtype(), [&]<class S>(S) {
      cpu::convert(dst.ptr<D>(), src.ptr<S>(), src.numel());
    });
  });
}

void CpuBackend::add_impl(const Tensor& y, const Tensor& x, double alpha) {
  const OpCheck c(*this, "add");
  const DType dt = cpu::host_float(c, y, "y");
  c.dtype(x, dt, "x");  // no converting add on the CPU
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::add(y.ptr<T>(), x.ptr<T>(), y.numel(), static_cast<T>(alpha));
  });
}

void CpuBackend::scale_impl(const Tensor& y, double alpha) {
  const DType dt = cpu::host_float(OpCheck(*this, "scale"), y, "y");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::scale(y.ptr<T>(), y.numel(), static_cast<T>(alpha));
  });
}

double CpuBackend::sum_squares_impl(const Tensor& x) {
  const DType dt = cpu::host_float(OpCheck(*this, "sum_squares"), x, "x");
  return cpu::dispatch_float(dt, [&]<class T>(T) {
    return cpu::sum_squares(x.ptr<T>(), x.numel());
  });
}

}  // namespace sy
