// Device discovery (device.h).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "model/cuda/device.h"

namespace sy {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int cuda_device_for_local_rank(int local_rank, int rank) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(
        "run.backend: cuda: no CUDA device is visible to rank " + std::to_string(rank) +
        (status != cudaSuccess ? std::string(" (") + cudaGetErrorString(status) + ")" : ""));
  }
  if (local_rank < 0)
    throw std::runtime_error("run.backend: cuda: rank " + std::to_string(rank) +
                             " has a negative node-local rank " + std::to_string(local_rank));
  return local_rank % count;
}

}  // namespace sy
