// GEMM on the CPU: OpenBLAS sgemm/dgemm on row-major operands. Contract: model/backend.h.
#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

// Contiguous operands: A is [M,K] (or [K,M] if trans_a), B is [K,N] (or [N,K]), C is [M,N].
template <class T>
void gemm(T* C, const T* A, bool trans_a, const T* B, bool trans_b, int64_t M, int64_t N,
          int64_t K, T alpha, T beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A) @ op(B) is all zeros; beta == 0 clears C (even NaN), as BLAS does
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == T(0) ? T(0) : beta * C[i];
    return;
  }
  blas_gemm(trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, B, trans_b ? K : N, beta, C, N);
}

}  // namespace
}  // namespace cpu

void CpuBackend::gemm_impl(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B,
                           bool trans_b, double alpha, double beta) {
  const OpCheck c(*this, "gemm");
  const DType dt = cpu::host_float(c, A, "A");  // B and C follow
  const int64_t M = C.dim(0), N = C.dim(1);
  const int64_t K = trans_a ? A.dim(0) : A.dim(1);
  cpu::fits_blas(c, {M, N, K});
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::gemm(C.ptr<T>(), A.ptr<T>(), trans_a, B.ptr<T>(), trans_b, M, N, K,
              static_cast<T>(alpha), static_cast<T>(beta));
  });
}

}  // namespace sy
