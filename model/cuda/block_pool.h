// The bookkeeping of the CUDA caching allocator's blocks (device_memory.h), over plain addresses
// so that it runs, and is tested, without a GPU (tests/test_block_pool.cpp).
//
// Memory comes in segments (one cudaMalloc each). A request takes the smallest free block that
// holds it (ties: the lowest address) and splits off the rest, which stays free (unless it is
// under the split granularity: then the block is taken whole); a block given back merges with
// its free neighbours of the same segment, never across segments (separate cudaMallocs). So
// memory that one size gave back serves requests of other sizes: the training step frees each
// layer's activations as backward allocates that layer's gradients, and the optimizer frees the
// gradients before the next forward allocates activations (model/transformer.h, the memory plan).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

namespace sy::cuda {

class BlockPool {
 public:
  // Requests and segments are expected in multiples of `granularity` (the allocator's 1 MiB
  // blocks); a rest smaller than it is never split off.
  explicit BlockPool(size_t granularity = size_t{1} << 20) : granularity_(granularity) {}

  // Memory just taken from the driver: one free block.
  void add_segment(uintptr_t base, size_t bytes);
  // The start of a block of at least `bytes` (exactly, unless the rest was too small to split:
  // block_bytes), carved from the best-fitting free block; nullopt when none is large enough.
  std::optional<uintptr_t> take(size_t bytes);
  // The size of the taken block at `p`; throws std::logic_error if there is none.
  size_t block_bytes(uintptr_t p) const;
  // Frees the block that `take` returned at `p`, merging it with its free neighbours. Throws
  // std::logic_error for an address that is not a taken block (a double or foreign free).
  void give_back(uintptr_t p);
  // Removes every segment that is one free block and returns them (base, bytes), for the caller
  // to hand back to the driver.
  std::vector<std::pair<uintptr_t, size_t>> remove_free_segments();
  // Every segment (base, bytes), free or not: for the owner's destructor.
  std::vector<std::pair<uintptr_t, size_t>> segment_list() const;

  size_t held_bytes() const { return held_; }    // in segments
  size_t taken_bytes() const { return taken_; }  // in taken blocks
  size_t segments() const { return segments_.size(); }
  size_t free_blocks() const { return free_.size(); }
  size_t free_bytes() const;  // summed over the free blocks (linear: for tests)
  // The largest free block: the most one `take` can hand out without a new segment (0: none).
  size_t largest_free_block() const { return free_.empty() ? 0 : free_.rbegin()->first; }

 private:
  struct Block {
    size_t bytes;
    uintptr_t segment;  // the base of the segment it lies in
    bool free;
  };
  using BlockIt = std::map<uintptr_t, Block>::iterator;
  // Folds the block after `block` (both free) into it when both lie in the same segment.
  void merge_with_next(BlockIt block);

  size_t granularity_;                           // the smallest rest split off
  std::map<uintptr_t, Block> blocks_;            // every block, by address
  std::set<std::pair<size_t, uintptr_t>> free_;  // free blocks by (bytes, address): best fit
  std::map<uintptr_t, size_t> segments_;         // base -> bytes
  size_t held_ = 0, taken_ = 0;
};

}  // namespace sy::cuda
