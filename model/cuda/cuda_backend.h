// The CUDA backend: every Backend op on one NVIDIA GPU, in f32, bf16 and f64 (docs/cuda.md).
// Built only when CMake finds nvcc (SY_HAVE_CUDA is then defined for the code that picks a
// backend); this header needs no CUDA headers.
#pragma once
#include <memory>

#include "model/backend.h"

namespace sy {

// How many CUDA devices this process sees (0 when there is no driver or no device; never
// throws). Tests skip on 0.
int cuda_device_count();

// A backend on device `device` (0-based, < cuda_device_count()), with its own stream, cuBLAS
// handle and caching allocator. Throws std::runtime_error naming the device and the rank when no
// such device is visible or the device cannot be initialised.
std::unique_ptr<Backend> make_cuda_backend(int device);

// How many times `backend` (a CUDA backend) has taken memory from the driver (cudaMalloc); a
// training step that repeats its shapes must not change it. -1 for other backends.
int64_t cuda_device_allocations(const Backend& backend);

// The device a rank should use: the node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, 0 when unset)
// modulo the number of visible devices. Throws when no device is visible.
int cuda_device_for_local_rank();

}  // namespace sy
