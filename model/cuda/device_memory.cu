// The CUDA backend's device memory (contract in device_memory.h).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include "model/cuda/block_pool.h"
#include "model/cuda/device_memory.h"
#include "model/cuda/env_choice.h"

namespace sy::cuda {
namespace {

// "cuda alloc (rank R, device D): cudaMalloc of N bytes failed: ... (H MiB held by this backend,
// F of T MiB free on the device)"
[[noreturn]] void throw_out_of_memory(int rank, int device, const char* call, size_t want,
                                      cudaError_t status, size_t held) {
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaGetLastError();
  throw std::runtime_error(
      "cuda alloc (rank " + std::to_string(rank) + ", device " + std::to_string(device) + "): " +
      call + " of " + std::to_string(want) + " bytes failed: " + cudaGetErrorString(status) +
      " (" + std::to_string(held >> 20) + " MiB held by this backend, " +
      std::to_string(free_bytes >> 20) + " of " + std::to_string(total_bytes >> 20) +
      " MiB free on the device)");
}

// SY_CUDA_ALLOCATOR=caching: blocks of 1 MiB and more from a BlockPool over cudaMalloc'd
// segments (split and merged: block_pool.h); smaller ones from a free list of exact sizes.
class CachingAllocator final : public DeviceAllocator {
 public:
  explicit CachingAllocator(const Context& ctx) : device_(ctx.device), rank_(ctx.rank) {}
  ~CachingAllocator() override {
    // Every tensor is gone (each keeps the allocator alive), so every segment is free but for
    // blocks lost to a bad release. Errors ignored: the process may be exiting.
    for (auto& [size, p] : small_free_) cudaFree(p);
    for (auto& [base, bytes] : pool_.segment_list()) cudaFree(reinterpret_cast<void*>(base));
  }

  void* allocate(size_t bytes, size_t* block) override {
    const size_t want = block_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    *block = want;
    return want < kLarge ? take_small(block) : take_large(block);
  }

  void release(void* p, size_t block) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (block < kLarge) {
      small_free_.emplace(block, p);
      return;
    }
    try {
      pool_.give_back(reinterpret_cast<uintptr_t>(p));
    } catch (const std::exception& error) {  // a bug of ours: the block stays out of use
      if (!reported_bad_release_)
        std::fprintf(stderr, "cuda alloc (rank %d, device %d): release: %s (block leaked)\n", rank_,
                     device_, error.what());
      reported_bad_release_ = true;
    }
  }

  size_t peak_reserved() const override { return peak_reserved_; }
  size_t reserved() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return reserved_;
  }
  int64_t device_allocations() const override { return device_allocations_; }
  size_t largest_cached_block() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_.largest_free_block();
  }

 private:
  // Below this a block is served whole from the exact-size list (router statistics, norms'
  // rstd, ...); from it up, carved from the pool.
  static constexpr size_t kLarge = size_t{1} << 20;
  // A new segment holds at least this much, so that the buffers allocated one after another (a
  // forward's activations) lie side by side and merge, once freed, into blocks large enough for
  // the gradients that backward allocates next (an expert weight's: 256 MiB and more).
  static constexpr size_t kSegment = size_t{1} << 30;

  // Best fit among cached blocks, wasting at most a quarter; *block: the size asked, and then
  // the size of the block given.
  void* take_small(size_t* block) {
    auto it = small_free_.lower_bound(*block);
    if (it != small_free_.end() && it->first <= *block + *block / 4) {
      *block = it->first;
      void* p = it->second;
      small_free_.erase(it);
      return p;
    }
    return device_malloc(*block);
  }

  // Best fit from the pool, else from a new segment; *block as for take_small.
  void* take_large(size_t* block) {
    const size_t want = *block;
    std::optional<uintptr_t> at = pool_.take(want);
    if (!at) {
      size_t segment = std::max(want, kSegment);
      void* base = nullptr;
      try {
        base = device_malloc(segment);
      } catch (const std::runtime_error&) {
        if (segment == want) throw;
        segment = want;  // no room for a whole segment: this block alone
        base = device_malloc(segment);
      }
      pool_.add_segment(reinterpret_cast<uintptr_t>(base), segment);
      at = pool_.take(want);
    }
    *block = pool_.block_bytes(*at);
    return reinterpret_cast<void*>(*at);
  }

  // cudaMalloc; on out-of-memory, gives every cached block and free segment back to the driver
  // and tries once more.
  void* device_malloc(size_t bytes) {
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cache();
      status = cudaMalloc(&p, bytes);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      throw_out_of_memory(rank_, device_, "cudaMalloc", bytes, status, reserved_);
    }
    reserved_ += bytes;
    peak_reserved_ = std::max(peak_reserved_, reserved_);
    ++device_allocations_;
    return p;
  }

  void release_cache() {
    for (auto& [size, q] : small_free_) {
      cudaFree(q);
      reserved_ -= size;
    }
    small_free_.clear();
    for (auto& [base, bytes] : pool_.remove_free_segments()) {
      cudaFree(reinterpret_cast<void*>(base));
      reserved_ -= bytes;
    }
  }

  int device_, rank_;
  std::mutex mutex_;
  std::multimap<size_t, void*> small_free_;
  BlockPool pool_;
  size_t reserved_ = 0, peak_reserved_ = 0;
  int64_t device_allocations_ = 0;
  bool reported_bad_release_ = false;
};

// SY_CUDA_ALLOCATOR=async: the driver's stream-ordered allocator, on a pool of this backend's
// own (so that its reserved memory, and the peak, are this backend's alone).
class AsyncPoolAllocator final : public DeviceAllocator {
 public:
  explicit AsyncPoolAllocator(const Context& ctx)
      : device_(ctx.device), rank_(ctx.rank), stream_(ctx.stream) {
    int supported = 0;
    check_cuda(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device_), ctx,
               "SY_CUDA_ALLOCATOR=async", "cudaDeviceGetAttribute");
    if (!supported)
      fail(ctx, "SY_CUDA_ALLOCATOR=async", "this device or driver has no memory pools");
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device_;
    check_cuda(cudaMemPoolCreate(&pool_, &props), ctx, "SY_CUDA_ALLOCATOR=async",
               "cudaMemPoolCreate");
    // Keep what the pool took, as the caching allocator does (the default threshold, 0, would
    // hand it back to the driver at every synchronisation).
    uint64_t keep = std::numeric_limits<uint64_t>::max();
    check_cuda(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep), ctx,
               "SY_CUDA_ALLOCATOR=async", "cudaMemPoolSetAttribute");
  }
  ~AsyncPoolAllocator() override {
    cudaMemPoolDestroy(pool_);  // freed by the driver once its last block is back
  }

  void* allocate(size_t bytes, size_t* block) override {
    const size_t want = block_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nullptr;
    cudaError_t status = cudaMallocFromPoolAsync(&p, want, pool_, stream_);
    if (status == cudaErrorMemoryAllocation) {  // give the pool's free memory back and retry
      cudaGetLastError();
      cudaStreamSynchronize(stream_);  // the frees enqueued on the stream have happened
      cudaMemPoolTrimTo(pool_, 0);
      status = cudaMallocFromPoolAsync(&p, want, pool_, stream_);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      throw_out_of_memory(rank_, device_, "cudaMallocFromPoolAsync", want, status,
                          pool_attribute(cudaMemPoolAttrReservedMemCurrent));
    }
    if (reinterpret_cast<uintptr_t>(p) % 256 != 0) {
      cudaFreeAsync(p, stream_);
      throw std::runtime_error("cuda alloc (rank " + std::to_string(rank_) + ", device " +
                               std::to_string(device_) +
                               "): cudaMallocFromPoolAsync returned a block not 256-byte aligned");
    }
    const size_t now = pool_attribute(cudaMemPoolAttrReservedMemCurrent);
    if (now > reserved_) ++device_allocations_;
    reserved_ = now;
    *block = want;
    return p;
  }

  void release(void* p, size_t) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    // Stream-ordered; after stream_closing the legacy default stream (nothing of ours pending).
    if (cudaFreeAsync(p, stream_) != cudaSuccess) cudaGetLastError();
  }

  size_t peak_reserved() const override {
    return pool_attribute(cudaMemPoolAttrReservedMemHigh);
  }
  size_t reserved() override { return pool_attribute(cudaMemPoolAttrReservedMemCurrent); }
  int64_t device_allocations() const override { return device_allocations_; }
  void stream_closing() noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    stream_ = nullptr;
  }

 private:
  size_t pool_attribute(cudaMemPoolAttr attribute) const {
    uint64_t value = 0;
    if (cudaMemPoolGetAttribute(pool_, attribute, &value) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return static_cast<size_t>(value);
  }

  int device_, rank_;
  cudaStream_t stream_;
  cudaMemPool_t pool_ = nullptr;
  std::mutex mutex_;
  size_t reserved_ = 0;
  int64_t device_allocations_ = 0;
};

}  // namespace

size_t DeviceAllocator::block_size(size_t bytes) {
  if (bytes <= 512) return 512;
  if (bytes < (size_t{1} << 20)) return (bytes + 511) / 512 * 512;
  return (bytes + (size_t{1} << 20) - 1) >> 20 << 20;
}

std::shared_ptr<DeviceAllocator> make_device_allocator(const Context& ctx) {
  const char* name = env_choice("SY_CUDA_ALLOCATOR", {"caching", "async"});
  if (name && std::strcmp(name, "async") == 0) return std::make_shared<AsyncPoolAllocator>(ctx);
  return std::make_shared<CachingAllocator>(ctx);
}

Tensor alloc_tensor(const std::shared_ptr<DeviceAllocator>& allocator, const Shape& shape,
                    DType dtype) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  size_t block = 0;
  void* data = allocator->allocate(bytes, &block);
  std::shared_ptr<void> buffer(data, [allocator, block](void* p) { allocator->release(p, block); });
  // f32_split: the low halves' plane follows the high halves'.
  const int64_t low_plane = dtype == DType::f32_split ? shape_numel(shape) : 0;
  return Tensor(std::move(buffer), data, shape, dtype, Device::cuda, low_plane);
}

// ---- Context's own memory -------------------------------------------------------------------
void* Context::scratch(int slot, size_t bytes) {
  if (scratch_slots.size() < kNumSlots) scratch_slots.resize(kNumSlots);
  Tensor& t = scratch_slots.at(slot);
  if (!t.defined() || t.nbytes() < bytes) {
    t = Tensor();  // back to the free list first, so that the larger block may reuse it
    t = alloc({static_cast<int64_t>((bytes + 3) / 4)}, DType::i32);
  }
  return t.data();
}

void* Context::pinned_buffer(size_t bytes) {
  if (bytes > pinned_bytes) {
    if (pinned) cudaFreeHost(pinned);
    pinned = nullptr;
    pinned_bytes = 0;
    const size_t size = std::max<size_t>(bytes, 64 << 10);
    check_cuda(cudaMallocHost(&pinned, size), *this, "pinned staging", "cudaMallocHost");
    pinned_bytes = size;
  }
  return pinned;
}

void to_host_sync(Context& ctx, const char* op, void* host, const void* device, size_t bytes) {
  if (bytes == 0) return;
  void* pinned = ctx.pinned_buffer(bytes);
  SY_CUDA(ctx, op, cudaMemcpyAsync(pinned, device, bytes, cudaMemcpyDeviceToHost, ctx.stream));
  SY_CUDA(ctx, op, cudaStreamSynchronize(ctx.stream));
  std::memcpy(host, pinned, bytes);
}

HostCopy::~HostCopy() {  // errors ignored: the process may be exiting
  if (landed_) cudaEventDestroy(landed_);
  if (pinned_) cudaFreeHost(pinned_);
}

void HostCopy::start(Context& ctx, const char* op, const void* device, size_t bytes) {
  if (pending_) fail(ctx, op, "a host copy is already in flight");
  if (bytes > capacity_) {
    if (pinned_) SY_CUDA(ctx, op, cudaFreeHost(pinned_));
    pinned_ = nullptr;
    capacity_ = 0;
    SY_CUDA(ctx, op, cudaMallocHost(&pinned_, bytes));
    capacity_ = bytes;
  }
  if (!landed_) SY_CUDA(ctx, op, cudaEventCreateWithFlags(&landed_, cudaEventDisableTiming));
  if (bytes > 0)
    SY_CUDA(ctx, op, cudaMemcpyAsync(pinned_, device, bytes, cudaMemcpyDeviceToHost, ctx.stream));
  SY_CUDA(ctx, op, cudaEventRecord(landed_, ctx.stream));
  bytes_ = bytes;
  pending_ = true;
}

void HostCopy::finish(Context& ctx, const char* op, void* host) {
  if (!pending_) fail(ctx, op, "no host copy in flight");
  pending_ = false;
  SY_CUDA(ctx, op, cudaEventSynchronize(landed_));
  if (bytes_ > 0) std::memcpy(host, pinned_, bytes_);
}

}  // namespace sy::cuda
