// Token embedding on the CPU: forward gathers rows of the table, backward adds each row of the
// output's gradient into its token's row (in token order). Contract: model/backend.h.
#include <cstring>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t)
    std::memcpy(out + t * D, table + static_cast<int64_t>(tokens[t]) * D, D * sizeof(T));
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t) add(dtable + static_cast<int64_t>(tokens[t]) * D, dout + t * D, D, T(1));
}

}  // namespace
}  // namespace cpu

void CpuBackend::embedding_forward_impl(const Tensor& out, const Tensor& tokens,
                                        const Tensor& table) {
  const OpCheck c(*this, "embedding_forward");
  const DType dt = cpu::host_float(c, table, "table");
  c.dtype(out, dt, "out");
  const int64_t N = tokens.numel(), V = table.dim(0), D = table.dim(1);
  cpu::index_range(c, tokens, N, 0, V, "tokens");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::embedding_forward(out.ptr<T>(), tokens.ptr<int32_t>(), table.ptr<T>(), N, D);
  });
}

void CpuBackend::embedding_backward_impl(const Tensor& dtable, const Tensor& dout,
                                         const Tensor& tokens) {
  const OpCheck c(*this, "embedding_backward");
  const DType dt = dtable.dtype();
  c.dtype(dout, dt, "dout");
  const int64_t N = tokens.numel(), V = dtable.dim(0), D = dtable.dim(1);
  cpu::index_range(c, tokens, N, 0, V, "tokens");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::embedding_backward(dtable.ptr<T>(), dout.ptr<T>(), tokens.ptr<int32_t>(), N, D);
  });
}

}  // namespace sy
