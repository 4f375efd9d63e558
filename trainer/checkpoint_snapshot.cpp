#include "trainer/checkpoint_snapshot.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace sy {

namespace {

size_t page_bytes() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

size_t round_to_pages(size_t bytes) {
  return (bytes + page_bytes() - 1) / page_bytes() * page_bytes();
}

std::string gigabytes(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GB", static_cast<double>(bytes) / 1e9);
  return text;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// ---- SnapshotArena ------------------------------------------------------------------------------

SnapshotArena::SnapshotArena(std::vector<size_t> dataset_bytes)
    : dataset_bytes_(std::move(dataset_bytes)) {
  size_t offset = 0;
  for (size_t bytes : dataset_bytes_) {
    offsets_.push_back(offset);
    offset += round_to_pages(bytes);
  }
  if (offset == 0) return;
  void* base = ::mmap(nullptr, offset, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED)
    throw std::runtime_error("cannot map " + gigabytes(offset) + " of host memory: " +
                             std::strerror(errno));
  base_ = static_cast<char*>(base);
  mapped_bytes_ = offset;
  // Every byte written once, here (on the preparation's thread) rather than by the first save's
  // copies: the page faults and the kernel's zeroing. Not MAP_POPULATE, nor one byte a page: on
  // the 2-core VM a copy into memory faulted in either way still ran at a twentieth of the speed
  // the next one had (0.47 s against 0.022 s for 256 MiB); after a memset it ran at full speed.
  std::memset(base_, 0, mapped_bytes_);
}

SnapshotArena::~SnapshotArena() {
  locks_.clear();  // unlocked before the pages go
  if (base_) ::munmap(base_, mapped_bytes_);
}

bool SnapshotArena::pin(Backend& backend, std::string* why_not) {
  try {
    for (size_t i = 0; i < dataset_bytes_.size(); ++i) {
      if (dataset_bytes_[i] == 0) continue;
      std::shared_ptr<void> lock =
          backend.pin_host_memory(dataset(i), round_to_pages(dataset_bytes_[i]));
      if (!lock) return false;  // a backend with no use for locked memory (the CPU)
      locks_.push_back(std::move(lock));
    }
  } catch (const std::exception& error) {
    locks_.clear();
    if (why_not) *why_not = error.what();
    return false;
  }
  return !locks_.empty();
}

std::vector<size_t> snapshot_dataset_bytes(const std::vector<CheckpointEntry>& entries,
                                           int ep_size) {
  std::vector<size_t> bytes;
  bytes.reserve(entries.size());
  for (const CheckpointEntry& entry : entries) {
    const Tensor& tensor = entry.tensor;
    const int64_t elements = tensor.numel() * (entry.is_expert ? ep_size : 1);
    bytes.push_back(static_cast<size_t>(elements) * (tensor.dtype() == DType::f64 ? 8 : 4));
  }
  return bytes;
}

// ---- SnapshotMemory -----------------------------------------------------------------------------

void SnapshotMemory::prepare(std::vector<size_t> dataset_bytes, Backend& backend,
                             std::function<void()> before) {
  wait();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    status_ = SnapshotStatus{};
    status_.started = true;
    prepared_.reset();
    error_.clear();
  }
  arena_.reset();  // its memory goes back before the new arena is mapped
  thread_ = std::thread([this, sizes = std::move(dataset_bytes), &backend,
                         before = std::move(before)] {
    const auto start = std::chrono::steady_clock::now();
    std::shared_ptr<SnapshotArena> arena;
    std::string error, why_not;
    bool pinned = false;
    try {
      if (before) before();
      arena = std::make_shared<SnapshotArena>(sizes);
      pinned = arena->pin(backend, &why_not);
    } catch (const std::exception& failure) {
      error = failure.what();
      arena.reset();
    } catch (...) {
      error = "unknown error";
      arena.reset();
    }
    // Locking is an optimisation: its refusal is said once, and the copies stay pageable.
    static std::atomic<bool> said{false};
    if (!why_not.empty() && !said.exchange(true))
      std::fprintf(stderr, "note: checkpoint.async: the snapshot's host memory stays pageable "
                   "(device-to-host copies at a lower speed): %s\n", why_not.c_str());
    std::lock_guard<std::mutex> lock(mutex_);
    prepared_ = std::move(arena);
    error_ = std::move(error);
    status_.finished = true;
    status_.prepare_seconds = seconds_since(start);
    status_.bytes = prepared_ ? prepared_->bytes() : 0;
    status_.pinned = pinned;
  });
}

std::string SnapshotMemory::wait() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

std::shared_ptr<SnapshotArena> SnapshotMemory::take(const std::vector<size_t>& dataset_bytes) {
  if (thread_.joinable()) {
    const auto start = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      status_.save_waiting = !status_.finished;
    }
    thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.save_waiting) {
      status_.save_waiting = false;
      status_.save_waited = true;
      status_.waited_seconds = seconds_since(start);
    }
  }
  std::string error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error = std::exchange(error_, std::string());
    if (prepared_) arena_ = std::move(prepared_);
  }
  if (!error.empty())
    throw std::runtime_error("the snapshot's host memory could not be prepared: " + error);
  if (arena_ && arena_->dataset_bytes() == dataset_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++status_.saves_served;
    return arena_;
  }
  arena_.reset();  // sizes that changed (or none yet): mapped here, on the step's critical path
  arena_ = std::make_shared<SnapshotArena>(dataset_bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  ++status_.saves_allocated;
  return arena_;
}

SnapshotStatus SnapshotMemory::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

}  // namespace sy
