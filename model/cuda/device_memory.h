// The CUDA backend's device memory: the allocator behind Backend::alloc, the grow-only scratch
// slots and the pinned staging buffer of Context, and the one device-to-host copy that waits.
//
// The allocator's contract (both kinds, SY_CUDA_ALLOCATOR below):
// - What it caches: every block a tensor gives back (its last owner dropped) stays with the
//   allocator and serves later requests. Sizes are rounded up to blocks (512-byte multiples
//   below 1 MiB, 1 MiB multiples above), so that a step that repeats its shapes and its order of
//   requests settles into the same blocks and takes nothing from the driver after its first
//   steps. Memory freed at one size serves requests of other sizes (the training step trades
//   activations for gradients layer by layer: model/transformer.h, the memory plan).
// - Stream order: a block given back while kernels on the backend's stream may still read it is
//   handed only to work enqueued later on that same stream, which runs after them. So every user
//   of the memory runs on the backend's one stream (NCCL included), and nothing waits on a free.
// - When memory goes back to the driver: only before an out-of-memory error (what is cached and
//   can go back is given back, below, and the request retried once; the error names the bytes
//   asked, held and free) and when the allocator is destroyed (the last tensor of a destroyed
//   backend gone).
// - The peak it reports (Backend::peak_memory_bytes) is the most device memory the allocator held
//   from the driver at once: blocks in use plus blocks cached, the 32 MiB cuBLAS workspace
//   included; device_allocations() counts the times it took memory from the driver.
//
// SY_CUDA_ALLOCATOR=caching (the default; anything else but "async" is refused): blocks of 1 MiB
// and more are carved, best fit (the smallest free block that holds them), from segments of at
// least 1 GiB, one cudaMalloc each: the buffers allocated one after another (a layer's
// activations) lie side by side, and once freed merge into blocks that hold larger requests (its
// gradients). A block taken splits, its rest stays free; a block given back merges with its free
// neighbours in the same segment (block_pool.h). A request larger than 1 GiB gets a segment of
// its size, and so does one that finds no room for a whole new 1 GiB segment; the unused rest
// of a segment counts as cached, so the peak reads at least 1 GiB once a 1 MiB block was asked
// for. Blocks under 1 MiB come from a free list of exact sizes (best fit, at most a quarter
// wasted), each its own cudaMalloc. Out of memory, the cached small blocks and every segment
// that is entirely free go back to the driver before the one retry; free blocks inside a
// segment still in use stay. SY_CUDA_ALLOCATOR=async: a cudaMallocAsync pool of this backend's
// own (cudaMemPoolCreate, release threshold "never", so it keeps what it took as the free list
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
  // The largest block it could hand out now without taking memory from the driver; 0 where it
  // cannot tell (async: the driver's pool does not say).
  virtual size_t largest_cached_block() { return 0; }
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
