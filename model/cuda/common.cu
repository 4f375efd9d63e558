// The error checks of common.cuh: every CUDA and cuBLAS failure becomes a std::runtime_error that
// names the op, the rank and the device.
#include "model/cuda/common.cuh"

namespace sy::cuda {

std::string where(const Context& ctx, const char* op) {
  return std::string("cuda ") + op + " (rank " + std::to_string(ctx.rank) + ", device " +
         std::to_string(ctx.device) + ")";
}

void fail(const Context& ctx, const char* op, const std::string& message) {
  throw std::runtime_error(where(ctx, op) + ": " + message);
}

void check_cuda(cudaError_t status, const Context& ctx, const char* op, const char* what) {
  if (status == cudaSuccess) return;
  fail(ctx, op, std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                    cudaGetErrorString(status) + ")");
}

void check_cublas(cublasStatus_t status, const Context& ctx, const char* op, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(ctx, op, std::string(what) + " failed: " + cublasGetStatusName(status) + " (" +
                    cublasGetStatusString(status) + ")");
}

void check_launch(const Context& ctx, const char* op) {
  check_cuda(cudaGetLastError(), ctx, op, "kernel launch");
}

int sm_count(Context& ctx, const char* op) {
  int sms = 0;
  SY_CUDA(ctx, op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device));
  return sms > 1 ? sms : 1;
}

}  // namespace sy::cuda
