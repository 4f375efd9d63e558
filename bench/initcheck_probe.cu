// Which device writes does compute-sanitizer's initcheck see? One buffer is written by a cuBLAS
// GEMM (beta 0: every element), the other by a plain kernel; then one kernel reads each, with a
// synchronisation and a printed line between them, so that the tool's reports fall under the
// buffer they are about:
//   compute-sanitizer --tool initcheck --print-limit 4 build/initcheck_probe [--n 1024]
// A report under "gemm-written" and none under "kernel-written" means the tool does not see the
// GEMM's stores: on Hopper, cuBLAS's kernels store through the TMA, as cuDNN's and our grouped
// GEMM's do. docs/cuda.md ("Sanitizers") reads the model suites' initcheck reports with that in
// mind; launch/gpu_check.sh OUT sanitize runs this first when initcheck is asked for.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "bench/cuda_timing.h"

namespace {

using sy::bench::check_cuda;

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": cuBLAS status " + std::to_string(status));
}

__global__ void fill_kernel(__nv_bfloat16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(0.01f * static_cast<float>(i % 7));
}

// One partial sum a thread (no atomics: the values do not matter, only that every element is read).
__global__ void sum_kernel(const __nv_bfloat16* in, int64_t n, float* partial) {
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  float sum = 0.0f;
  for (int64_t i = first; i < n; i += int64_t(gridDim.x) * blockDim.x)
    sum += __bfloat162float(in[i]);
  partial[first] = sum;
}

constexpr int kBlocks = 64, kThreads = 256;

void read_all(const char* label, const __nv_bfloat16* buffer, int64_t n, float* partial) {
  std::printf("%s\n", label);
  std::fflush(stdout);
  sum_kernel<<<kBlocks, kThreads>>>(buffer, n, partial);
  check_cuda(cudaGetLastError(), "sum_kernel");
  check_cuda(cudaDeviceSynchronize(), "sum_kernel");
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"initcheck_probe: does compute-sanitizer's initcheck see a GEMM's stores?"};
  int n = 1024;
  app.add_option("--n", n, "the square GEMM's size")->check(CLI::Range(16, 16384));
  CLI11_PARSE(app, argc, argv);
  const int64_t elements = int64_t{n} * n;
  __nv_bfloat16 *a = nullptr, *b = nullptr, *gemm_out = nullptr, *kernel_out = nullptr;
  float* partial = nullptr;
  for (__nv_bfloat16** buffer : {&a, &b, &gemm_out, &kernel_out})
    check_cuda(cudaMalloc(buffer, elements * sizeof(__nv_bfloat16)), "cudaMalloc");
  check_cuda(cudaMalloc(&partial, kBlocks * kThreads * sizeof(float)), "cudaMalloc");
  for (__nv_bfloat16* buffer : {a, b, kernel_out})
    fill_kernel<<<kBlocks, kThreads>>>(buffer, elements);
  check_cuda(cudaGetLastError(), "fill_kernel");

  cublasHandle_t handle = nullptr;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  const float one = 1.0f, zero = 0.0f;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                            CUDA_R_16BF, n, &zero, gemm_out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
  check_cuda(cudaDeviceSynchronize(), "cublasGemmEx");

  read_all("kernel-written:", kernel_out, elements, partial);
  read_all("gemm-written:", gemm_out, elements, partial);
  std::printf("done\n");
  check_cublas(cublasDestroy(handle), "cublasDestroy");
  for (void* buffer : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(gemm_out),
                       static_cast<void*>(kernel_out), static_cast<void*>(partial)})
    check_cuda(cudaFree(buffer), "cudaFree");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "initcheck_probe: %s\n", e.what());
  return 1;
}
