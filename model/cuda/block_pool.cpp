// The caching allocator's block bookkeeping (contract in block_pool.h).
#include "model/cuda/block_pool.h"

#include <iterator>
#include <stdexcept>
#include <string>

namespace sy::cuda {

void BlockPool::add_segment(uintptr_t base, size_t bytes) {
  if (bytes == 0) return;
  if (!segments_.emplace(base, bytes).second)
    throw std::logic_error("BlockPool: segment at " + std::to_string(base) + " added twice");
  held_ += bytes;
  blocks_.emplace(base, Block{bytes, base, true});
  free_.emplace(bytes, base);
}

std::optional<uintptr_t> BlockPool::take(size_t bytes) {
  // The smallest free block that holds `bytes`; of equal ones, the lowest address.
  const auto fit = free_.lower_bound({bytes, 0});
  if (fit == free_.end()) return std::nullopt;
  const uintptr_t at = fit->second;
  free_.erase(fit);
  Block& block = blocks_.at(at);
  const size_t rest = block.bytes - bytes;
  if (rest > 0 && rest >= granularity_) {  // the rest stays free, right after the taken part
    blocks_.emplace(at + bytes, Block{rest, block.segment, true});
    free_.emplace(rest, at + bytes);
    block.bytes = bytes;
  }
  block.free = false;
  taken_ += block.bytes;
  return at;
}

size_t BlockPool::block_bytes(uintptr_t p) const {
  const auto block = blocks_.find(p);
  if (block == blocks_.end() || block->second.free)
    throw std::logic_error("BlockPool: no block taken at " + std::to_string(p));
  return block->second.bytes;
}

void BlockPool::give_back(uintptr_t p) {
  auto block = blocks_.find(p);
  if (block == blocks_.end() || block->second.free)
    throw std::logic_error("BlockPool: give_back of " + std::to_string(p) +
                           (block == blocks_.end() ? ", not a block" : ", already free"));
  taken_ -= block->second.bytes;
  block->second.free = true;
  merge_with_next(block);
  if (block != blocks_.begin()) {
    const auto previous = std::prev(block);
    if (previous->second.free && previous->second.segment == block->second.segment) {
      free_.erase({previous->second.bytes, previous->first});
      merge_with_next(previous);
      block = previous;
    }
  }
  free_.emplace(block->second.bytes, block->first);
}

void BlockPool::merge_with_next(BlockIt block) {
  const auto next = std::next(block);
  if (next == blocks_.end() || !next->second.free || next->second.segment != block->second.segment)
    return;
  free_.erase({next->second.bytes, next->first});
  block->second.bytes += next->second.bytes;
  blocks_.erase(next);
}

std::vector<std::pair<uintptr_t, size_t>> BlockPool::remove_free_segments() {
  std::vector<std::pair<uintptr_t, size_t>> removed;
  for (auto segment = segments_.begin(); segment != segments_.end();) {
    const auto first = blocks_.find(segment->first);
    if (first->second.free && first->second.bytes == segment->second) {
      free_.erase({first->second.bytes, first->first});
      blocks_.erase(first);
      held_ -= segment->second;
      removed.push_back(*segment);
      segment = segments_.erase(segment);
    } else {
      ++segment;
    }
  }
  return removed;
}

std::vector<std::pair<uintptr_t, size_t>> BlockPool::segment_list() const {
  return {segments_.begin(), segments_.end()};
}

size_t BlockPool::free_bytes() const {
  size_t bytes = 0;
  for (const auto& [size, at] : free_) bytes += size;
  return bytes;
}

}  // namespace sy::cuda
