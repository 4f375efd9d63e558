// Permute and unpermute on the CPU: gather token rows into expert order for the experts' GEMMs,
// and combine the experts' rows back into token order weighted by the gates; the backwards of
// both. slot_row < 0 marks a dropped assignment. Contract: model/backend.h.
#include <algorithm>
#include <cstring>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
void permute_rows(T* x_perm, const T* x, const int32_t* slot_row, int64_t N, int64_t D, int64_t K) {
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0)
        std::memcpy(x_perm + r * D, x + t * D, D * sizeof(T));
}

template <class T>
void permute_rows_backward(T* dx, const T* dx_perm, const int32_t* slot_row, int64_t N,
                           int64_t D, int64_t K) {
  std::fill(dx, dx + N * D, T(0));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0) add(dx + t * D, dx_perm + r * D, D, T(1));
}

template <class T>
void unpermute_combine(T* out, const T* y_perm, const T* gates, const int32_t* slot_row,
                       int64_t N, int64_t D, int64_t K) {
  std::fill(out, out + N * D, T(0));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0)
        add(out + t * D, y_perm + r * D, D, gates[t * K + k]);
}

template <class T>
void unpermute_combine_backward(T* dy_perm, T* dgates, const T* dout, const T* y_perm,
                                const T* gates, const int32_t* slot_row, int64_t N, int64_t D,
                                int64_t K) {
  for (int64_t t = 0; t < N; ++t) {
    const T* g = dout + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = slot_row[t * K + k];
      if (r < 0) {
        dgates[t * K + k] = T(0);
        continue;
      }
      const T gate = gates[t * K + k];
      T* dy = dy_perm + r * D;
      const T* y = y_perm + r * D;
      for (int64_t j = 0; j < D; ++j) dy[j] = gate * g[j];
      dgates[t * K + k] = static_cast<T>(dot(g, y, D));
    }
  }
}

}  // namespace
}  // namespace cpu

void CpuBackend::permute_rows_impl(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                                   int64_t K) {
  const OpCheck c(*this, "permute_rows");
  const DType dt = cpu::host_float(c, x, "x");
  const int64_t N = x.dim(0), D = x.dim(1), R = x_perm.dim(0);
  cpu::index_range(c, slot_row, N * K, -1, R, "slot_row");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::permute_rows(x_perm.ptr<T>(), x.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
  });
}

void CpuBackend::permute_rows_backward_impl(const Tensor& dx, const Tensor& dx_perm,
                                            const Tensor& slot_row, int64_t K) {
  const OpCheck c(*this, "permute_rows_backward");
  const DType dt = cpu::host_float(c, dx, "dx");
  const int64_t N = dx.dim(0), D = dx.dim(1), R = dx_perm.dim(0);
  cpu::index_range(c, slot_row, N * K, -1, R, "slot_row");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::permute_rows_backward(dx.ptr<T>(), dx_perm.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
  });
}

namespace {

// The sizes of unpermute_combine and its backward (x: out or dout [N, D], y_perm [R, D], gates
// [N, K]), after what the CPU checks: f32 or f64 data, slot_row in [-1, R).
struct CombineSizes {
  DType dt;
  int64_t N, D, R, K;
};

CombineSizes check_combine(const OpCheck& c, const Tensor& x, const char* x_name,
                           const Tensor& y_perm, const Tensor& gates, const Tensor& slot_row) {
  const CombineSizes s{cpu::host_float(c, x, x_name), x.dim(0), x.dim(1), y_perm.dim(0),
                       gates.dim(1)};
  cpu::index_range(c, slot_row, s.N * s.K, -1, s.R, "slot_row");
  return s;
}

}  // namespace

void CpuBackend::unpermute_combine_impl(const Tensor& out, const Tensor& y_perm,
                                        const Tensor& gates, const Tensor& slot_row) {
  const CombineSizes s =
      check_combine(OpCheck(*this, "unpermute_combine"), out, "out", y_perm, gates, slot_row);
  cpu::dispatch_float(s.dt, [&]<class T>(T) {
    cpu::unpermute_combine(out.ptr<T>(), y_perm.ptr<T>(), gates.ptr<T>(), slot_row.ptr<int32_t>(),
                           s.N, s.D, s.K);
  });
}

void CpuBackend::unpermute_combine_backward_impl(const Tensor& dy_perm, const Tensor& dgates,
                                                 const Tensor& dout, const Tensor& y_perm,
                                                 const Tensor& gates, const Tensor& slot_row) {
  const OpCheck c(*this, "unpermute_combine_backward");
  const CombineSizes s = check_combine(c, dout, "dout", y_perm, gates, slot_row);
  const int32_t* rows = slot_row.ptr<int32_t>();
  const int64_t kept = std::count_if(rows, rows + s.N * s.K, [](int32_t r) { return r >= 0; });
  if (kept != s.R)
    c.fail("dy_perm has " + std::to_string(s.R) + " rows but slot_row keeps " +
           std::to_string(kept) + " assignments: every row must be a kept assignment's");
  cpu::dispatch_float(s.dt, [&]<class T>(T) {
    cpu::unpermute_combine_backward(dy_perm.ptr<T>(), dgates.ptr<T>(), dout.ptr<T>(),
                                    y_perm.ptr<T>(), gates.ptr<T>(), rows, s.N, s.D, s.K);
  });
}

}  // namespace sy
