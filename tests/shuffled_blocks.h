// Test layouts for Communicator::all_to_all_blocks: three blocks between every pair of ranks (a
// rank and itself included), listed in (peer, block) order but placed in the tensor in the
// reverse order with a gap after each, so that nothing is where a plain all_to_all_v would put
// it. Block k between ranks `from` and `to` holds first + from + 2 to + step k elements, the same
// count on both sides.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace sy::test {

struct ShuffledBlocks {
  int64_t first = 1, step = 3, gap = 2;

  int64_t count(int from, int to, int k) const { return first + from + 2 * to + step * k; }

  // This rank's blocks to send (sending) or to receive, and the elements its tensor needs.
  std::vector<PeerBlock> layout(int rank, int size, bool sending, int64_t& numel) const {
    std::vector<PeerBlock> blocks;
    for (int p = 0; p < size; ++p)
      for (int k = 0; k < 3; ++k)
        blocks.push_back({p, 0, sending ? count(rank, p, k) : count(p, rank, k)});
    numel = 0;
    for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) {
      b->offset = numel;
      numel += b->count + gap;
    }
    return blocks;
  }
};

}  // namespace sy::test
