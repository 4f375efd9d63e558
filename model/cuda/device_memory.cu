// The CUDA backend's device memory (contract in device_memory.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>

#include "model/cuda/device_memory.h"

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

// SY_CUDA_ALLOCATOR=caching: a free list keyed by block size, fed by cudaMalloc.
class CachingAllocator final : public DeviceAllocator {
 public:
  explicit CachingAllocator(const Context& ctx) : device_(ctx.device), rank_(ctx.rank) {}
  ~CachingAllocator() override {
    for (auto& [size, p] : free_) cudaFree(p);  // errors ignored: the process may be exiting
  }

  void* allocate(size_t bytes, size_t* block) override {
    const size_t want = block_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    // Best fit among cached blocks, wasting at most a quarter.
    auto it = free_.lower_bound(want);
    if (it != free_.end() && it->first <= want + want / 4) {
      *block = it->first;
      void* p = it->second;
      free_.erase(it);
      in_use_ += *block;
      peak_in_use_ = std::max(peak_in_use_, in_use_);
      return p;
    }
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, want);
    if (status == cudaErrorMemoryAllocation) {  // give the cache back to the driver and retry
      cudaGetLastError();
      for (auto& [size, q] : free_) {
        cudaFree(q);
        reserved_ -= size;
      }
      free_.clear();
      status = cudaMalloc(&p, want);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      throw_out_of_memory(rank_, device_, "cudaMalloc", want, status, reserved_);
    }
    *block = want;
    reserved_ += want;
    in_use_ += want;
    peak_reserved_ = std::max(peak_reserved_, reserved_);
    peak_in_use_ = std::max(peak_in_use_, in_use_);
    ++device_allocations_;
    return p;
  }

  void release(void* p, size_t block) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(block, p);
    in_use_ -= block;
  }

  size_t peak_reserved() const override { return peak_reserved_; }
  size_t reserved() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return reserved_;
  }
  int64_t device_allocations() const override { return device_allocations_; }

 private:
  int device_, rank_;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t reserved_ = 0, peak_reserved_ = 0, in_use_ = 0, peak_in_use_ = 0;
  int64_t device_allocations_ = 0;
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
  const char* env = std::getenv("SY_CUDA_ALLOCATOR");
  const std::string name = env ? env : "";
  if (name.empty() || name == "caching") return std::make_shared<CachingAllocator>(ctx);
  if (name == "async") return std::make_shared<AsyncPoolAllocator>(ctx);
  fail(ctx, "init", "SY_CUDA_ALLOCATOR must be caching or async, got '" + name + "'");
}

Tensor alloc_tensor(const std::shared_ptr<DeviceAllocator>& allocator, const Shape& shape,
                    DType dtype) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  size_t block = 0;
  void* data = allocator->allocate(bytes, &block);
  std::shared_ptr<void> buffer(data, [allocator, block](void* p) { allocator->release(p, block); });
  return Tensor(std::move(buffer), data, shape, dtype, Device::cuda);
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

}  // namespace sy::cuda
