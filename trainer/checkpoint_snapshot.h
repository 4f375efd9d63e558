// checkpoint.async's snapshot memory on world rank 0 (docs/checkpoint.md, "Asynchronous saves"):
// one host arena holding every dataset of a save, kept from one save to the next. A run
// prepares it on a thread of its own before its first step (mapped, every byte written once,
// then page-locked through Backend::pin_host_memory), so that the first save stalls the step no
// longer than the later ones: fresh memory costs page faults and a zero-fill (13.0 s of the
// 1.81B model's first save on the H200 machine, against 1.53 s for the later ones), and only
// locked memory takes the device's copies at the bus's speed. trainer/checkpoint.cpp owns the
// one instance; save_checkpoint takes the memory, the background write reads it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/backend.h"
#include "trainer/checkpoint_format.h"

namespace sy {

// The host memory of one snapshot: dataset i at dataset(i), each on pages of its own (so that
// each can be locked alone). Unlocked and unmapped when the last holder drops it: the snapshot
// memory, and the background write that reads it.
class SnapshotArena {
 public:
  // Maps room for datasets of `dataset_bytes`, in order, and writes every byte once (zeros).
  // Throws std::runtime_error with the system's reason when the host refuses.
  explicit SnapshotArena(std::vector<size_t> dataset_bytes);
  ~SnapshotArena();
  SnapshotArena(const SnapshotArena&) = delete;
  SnapshotArena& operator=(const SnapshotArena&) = delete;

  const std::vector<size_t>& dataset_bytes() const { return dataset_bytes_; }
  char* dataset(size_t i) const { return base_ + offsets_.at(i); }
  size_t bytes() const { return mapped_bytes_; }
  // Locks every dataset's pages through `backend` (a no-op on the CPU). Returns whether they are
  // locked; when the backend refuses one, none stays locked and the reason is in *why_not.
  bool pin(Backend& backend, std::string* why_not);

 private:
  std::vector<size_t> dataset_bytes_;
  std::vector<size_t> offsets_;  // page-aligned
  char* base_ = nullptr;
  size_t mapped_bytes_ = 0;
  std::vector<std::shared_ptr<void>> locks_;  // Backend::pin_host_memory's handles
};

// Bytes of each dataset that a save of `entries` snapshots, in their order: experts [E/P, ...]
// here are [E, ...] in the file (ep_size P); f64 tensors 8 bytes an element, every other 4 (a
// dtype a checkpoint cannot store is refused by the save itself).
std::vector<size_t> snapshot_dataset_bytes(const std::vector<CheckpointEntry>& entries,
                                           int ep_size);

// What the last preparation did, and what the saves after it took (bench_checkpoint reports
// it, tests check it). Reset by each prepare().
struct SnapshotStatus {
  bool started = false;           // a preparation was started
  bool finished = false;          // ... and has ended (ready, or failed)
  double prepare_seconds = 0;     // how long it ran on its thread
  size_t bytes = 0;               // the arena's size
  bool pinned = false;            // its pages are locked (CUDA)
  bool save_waiting = false;      // a save is waiting for the preparation now
  bool save_waited = false;       // a save had to wait for the unfinished preparation
  double waited_seconds = 0;      // how long it waited
  int64_t saves_served = 0;       // saves that used an arena already there
  int64_t saves_allocated = 0;    // saves that had to map one (no preparation, or new sizes)
};

// The one owner of the snapshot's memory and of its preparation thread.
class SnapshotMemory {
 public:
  SnapshotMemory() = default;
  ~SnapshotMemory() { wait(); }  // never leaves the thread running
  SnapshotMemory(const SnapshotMemory&) = delete;
  SnapshotMemory& operator=(const SnapshotMemory&) = delete;

  // Starts preparing an arena for datasets of `dataset_bytes` on a thread: mapped, every byte
  // written once, then locked through backend.pin_host_memory (a refusal is said once per process
  // on stderr; the memory then stays pageable and the saves still work). Drops the arena held
  // so far (a background write still reading it keeps it alive). `backend` must outlive the
  // preparation: take() and wait() join it. `before` (tests only; may be empty) runs first on
  // the preparation's thread.
  void prepare(std::vector<size_t> dataset_bytes, Backend& backend, std::function<void()> before);
  // Joins the preparation, if one runs; returns its error ("" when none). Never throws.
  std::string wait();
  // The memory for a snapshot of datasets of `dataset_bytes`, waiting for the preparation first
  // (its failure is thrown here, as a std::runtime_error). The prepared (or last) arena when its
  // sizes match; else (no preparation, or sizes that changed) one mapped now, on the caller's
  // thread, pageable.
  std::shared_ptr<SnapshotArena> take(const std::vector<size_t>& dataset_bytes);
  SnapshotStatus status() const;

 private:
  std::thread thread_;
  mutable std::mutex mutex_;  // status_, prepared_, error_ (the preparation writes them)
  SnapshotStatus status_;
  std::shared_ptr<SnapshotArena> prepared_;  // the preparation's result, until take()
  std::string error_;                        // the preparation's failure, until take()
  std::shared_ptr<SnapshotArena> arena_;     // what the saves use
};

}  // namespace sy
