// GEMMs on cuBLAS. Row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T,
// so A and B swap places in the cuBLAS call. f32 runs in true fp32 (CUBLAS_COMPUTE_32F, no TF32);
// bf16 inputs accumulate in fp32 and write C in bf16 or f32; f64 in fp64.
#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw std::runtime_error("cuda gemm: no cuBLAS type for " + std::string(dtype_name(dtype)));
  }
}

struct Scalars {
  cublasComputeType_t compute;
  float alpha_f, beta_f;
  double alpha_d, beta_d;
  const void* alpha() const { return compute == CUBLAS_COMPUTE_64F ? static_cast<const void*>(&alpha_d) : &alpha_f; }
  const void* beta() const { return compute == CUBLAS_COMPUTE_64F ? static_cast<const void*>(&beta_d) : &beta_f; }
};

Scalars scalars(DType ab, double alpha, double beta) {
  const cublasComputeType_t compute = ab == DType::f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  return {compute, static_cast<float>(alpha), static_cast<float>(beta), alpha, beta};
}

}  // namespace

void gemm(Context& ctx, const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B,
          bool trans_b, double alpha, double beta) {
  const int64_t M = C.dim(0), N = C.dim(1);
  const int64_t K = trans_a ? A.dim(0) : A.dim(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A) op(B) is zero: C = beta C (beta 0 clears C, NaN included)
    if (beta == 0.0) fill(ctx, C, 0.0);
    else scale(ctx, C, beta);
    return;
  }
  gemm_strided_batched(ctx, "gemm", trans_a, trans_b, M, N, K, alpha, A.data(),
                       trans_a ? M : K, 0, B.data(), trans_b ? K : N, 0, beta, C.data(), N, 0, 1,
                       A.dtype(), C.dtype());
}

void gemm_strided_batched(Context& ctx, const char* op, bool trans_a, bool trans_b, int64_t M,
                          int64_t N, int64_t K, double alpha, const void* A, int64_t lda,
                          int64_t stride_a, const void* B, int64_t ldb, int64_t stride_b,
                          double beta, void* C, int64_t ldc, int64_t stride_c, int64_t batch,
                          DType ab, DType c) {
  if (M == 0 || N == 0 || batch == 0) return;
  for (int64_t d : {M, N, K, lda, ldb, ldc, batch})
    if (d > INT32_MAX) fail(ctx, op, "dimension " + std::to_string(d) + " too large for cuBLAS");
  const Scalars s = scalars(ab, alpha, beta);
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  if (batch == 1) {
    SY_CUBLAS(ctx, op,
              cublasGemmEx(ctx.cublas, op_b, op_a, m, n, k, s.alpha(), B, cuda_type(ab),
                           static_cast<int>(ldb), A, cuda_type(ab), static_cast<int>(lda),
                           s.beta(), C, cuda_type(c), static_cast<int>(ldc), s.compute,
                           CUBLAS_GEMM_DEFAULT));
  } else {
    SY_CUBLAS(ctx, op,
              cublasGemmStridedBatchedEx(
                  ctx.cublas, op_b, op_a, m, n, k, s.alpha(), B, cuda_type(ab),
                  static_cast<int>(ldb), stride_b, A, cuda_type(ab), static_cast<int>(lda),
                  stride_a, s.beta(), C, cuda_type(c), static_cast<int>(ldc), stride_c,
                  static_cast<int>(batch), s.compute, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace sy::cuda
