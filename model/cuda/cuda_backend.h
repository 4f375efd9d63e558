// The CUDA backend: every Backend op on one NVIDIA GPU, in f32, bf16 and f64 (docs/cuda.md).
// Built only when CMake finds nvcc (SY_HAVE_CUDA is then defined for the code that picks a
// backend); this header needs no CUDA headers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/backend.h"
#include "model/cuda/device.h"  // cuda_device_count, cuda_device_for_local_rank

namespace sy {

// A backend on device `device` (0-based, < cuda_device_count()), with its own stream, cuBLAS
// handle and allocator (model/cuda/device_memory.h). `rank` is the world rank its errors name
// ("cuda gemm (rank R, device D): ..."); the caller knows it, the backend never asks the
// launcher. Throws std::runtime_error naming the device and the rank when no such device is
// visible or the device cannot be initialised.
std::unique_ptr<Backend> make_cuda_backend(int device, int rank = 0);

// How many times `backend` (a CUDA backend) has taken memory from the driver (cudaMalloc); a
// training step that repeats its shapes must not change it. -1 for other backends.
int64_t cuda_device_allocations(const Backend& backend);

// Which implementation ran `backend`'s latest grouped_gemm / grouped_gemm_wgrad: "sm90", "mma"
// or "cublas" (the per-segment gemm loop); "" before any, and for other backends. Tests use it
// to see whether the kernel that SY_GROUPED_GEMM forces took the case.
std::string cuda_grouped_gemm_kernel(const Backend& backend);

// What ran `backend`'s latest flash_attention_forward / backward: "cudnn", "cudnn
// nondeterministic" (the backward's dQ-accumulating form, after set_deterministic(false)),
// "cudnn documents" (document masking with the documents listed), "flash", or "flash: <reason>"
// when Backend::prefer_cudnn_attention asked for cuDNN and it declined; "" before any, and for
// other backends.
std::string cuda_attention_kernel(const Backend& backend);

// The event-timed op profile (docs/cuda.md; SY_CUDA_PROFILE=events does the same for a whole
// run): from cuda_profile_begin on, every op of `backend` records a CUDA event on its stream
// before and after its work, with no synchronisation; anything recorded before is dropped.
// cuda_profile_report resolves the events and returns the table of the window (per op family:
// calls, total ms, ms per step over `steps`, % of the window's stream time), then closes the
// window. Nothing happens for other backends (the report is "").
void cuda_profile_begin(Backend& backend);
std::string cuda_profile_report(Backend& backend, int64_t steps);

}  // namespace sy
