// The CUDA backend's device memory: the allocator behind Backend::alloc, the grow-only scratch
// slots and the pinned staging buffer of Context, and the one device-to-host copy that waits.
//
// The allocator's contract (both kinds, SY_CUDA_ALLOCATOR below):
// - What it caches: every block a tensor gives back (its last owner dropped) stays with the
//   allocator and serves a later request of about its size. Sizes are rounded up to blocks
//   (512-byte multiples below 1 MiB, 1 MiB multiples above), so that a step that repeats its
//   shapes reuses its blocks exactly and takes nothing from the driver after its first run.
// - Stream order: a block given back while kernels on the backend's stream may still read it is
//   handed only to work enqueued later on that same stream, which runs after them. So every user
//   of the memory runs on the backend's one stream (NCCL included), and nothing waits on a free.
// - When memory goes back to the driver: only before an out-of-memory error (everything cached
//   is given back and the request retried once; the error names the bytes asked, held and free)
//   and when the allocator is destroyed (the last tensor of a destroyed backend gone).
// - The peak it reports (Backend::peak_memory_bytes) is the most device memory the allocator held
//   from the driver at once: blocks in use plus blocks cached, the 32 MiB cuBLAS workspace
//   included; device_allocations() counts the times it took memory from the driver.
//
// SY_CUDA_ALLOCATOR=caching (the default; anything else but "async" is refused): our free list,
// fed by cudaMalloc. SY_CUDA_ALLOCATOR=async: a cudaMallocAsync pool of this backend's own
// (cudaMemPoolCreate, release threshold "never", so it keeps what it took as the free list
// does), requests rounded to the same blocks, cudaFreeAsync on the stream; its peak is the pool's
// reserved high-water mark (driver chunks, so it may read above the caching figure) and
// device_allocations() counts the requests that grew the pool. For measuring one against the
// other (docs/cuda.md, Memory); the numbers of a step do not depend on it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "model/cuda/common.cuh"

namespace sy::cuda {

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // A block of at least `bytes` (its size in *block, to give back with it), 256-byte aligned.
  // Throws std::runtime_error naming the rank, the device and the bytes asked, held and free.
  virtual void* allocate(size_t bytes, size_t* block) = 0;
  // Never throws: called from tensors' deleters.
  virtual void release(void* p, size_t block) noexcept = 0;
  // The most device memory held from the driver at once (the contract above).
  virtual size_t peak_reserved() const = 0;
  // Device memory held from the driver now.
  virtual size_t reserved() = 0;
  virtual int64_t device_allocations() const = 0;
  // The backend's stream is about to be destroyed, after a synchronisation: blocks given back
  // from now on (tensors that outlive their backend) go back without it.
  virtual void stream_closing() noexcept {}

  // Block sizes: 512-byte multiples below 1 MiB, 1 MiB multiples above.
  static size_t block_size(size_t bytes);
};

// The allocator SY_CUDA_ALLOCATOR names, for the backend of `ctx` (its device, rank and stream
// are set). Throws on an unknown name.
std::shared_ptr<DeviceAllocator> make_device_allocator(const Context& ctx);

// A tensor on a block of `allocator`, which the tensor keeps alive and gives the block back to.
Tensor alloc_tensor(const std::shared_ptr<DeviceAllocator>& allocator, const Shape& shape,
                    DType dtype);

}  // namespace sy::cuda
