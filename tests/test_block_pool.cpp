// The caching allocator's block bookkeeping (model/cuda/block_pool.h), on plain addresses: splits
// and merges, best fit, whole free segments handed back, misuse refused; a randomised run
// against a reference model; and the training step's pattern (activations traded for gradients
// layer by layer), which must settle after its first cycle and hold less than the old exact-size
// reuse (activations plus gradients).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "model/cuda/block_pool.h"

namespace sy::cuda {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(BlockPool, SplitsOffTheRestWhichStaysFree) {
  BlockPool pool;
  pool.add_segment(1000 * kMiB, 100 * kMiB);
  const uintptr_t a = *pool.take(10 * kMiB), b = *pool.take(20 * kMiB);
  EXPECT_EQ(a, 1000 * kMiB);
  EXPECT_EQ(b, a + 10 * kMiB) << "carved from the rest of the first split";
  EXPECT_EQ(pool.block_bytes(a), 10 * kMiB);
  EXPECT_EQ(pool.block_bytes(b), 20 * kMiB);
  EXPECT_EQ(pool.taken_bytes(), 30 * kMiB);
  EXPECT_EQ(pool.free_bytes(), 70 * kMiB);
  EXPECT_EQ(pool.free_blocks(), 1u);
  EXPECT_EQ(pool.largest_free_block(), 70 * kMiB);
  EXPECT_FALSE(pool.take(71 * kMiB)) << "only 70 MiB are left";
  EXPECT_EQ(*pool.take(70 * kMiB), b + 20 * kMiB);
  EXPECT_EQ(pool.free_blocks(), 0u);
  EXPECT_EQ(pool.largest_free_block(), 0u);
  pool.give_back(a);
  pool.add_segment(2000 * kMiB, 5 * kMiB);
  EXPECT_EQ(pool.largest_free_block(), 10 * kMiB) << "the largest of two free blocks";
}

TEST(BlockPool, RestUnderTheGranularityIsNotSplitOff) {
  BlockPool pool(4 * kMiB);
  pool.add_segment(0, 16 * kMiB);
  const uintptr_t whole = *pool.take(13 * kMiB);
  EXPECT_EQ(pool.block_bytes(whole), 16 * kMiB) << "a 3 MiB rest is under the granularity";
  EXPECT_EQ(pool.taken_bytes(), 16 * kMiB);
  EXPECT_EQ(pool.free_blocks(), 0u);
}

// Four blocks a b c d filling a segment; freeing merges with the free neighbours only.
TEST(BlockPool, MergesWithThePreviousTheNextAndBothNeighbours) {
  BlockPool pool;
  pool.add_segment(0, 40 * kMiB);
  const uintptr_t a = *pool.take(10 * kMiB), b = *pool.take(10 * kMiB), c = *pool.take(10 * kMiB),
                  d = *pool.take(10 * kMiB);
  pool.give_back(a);
  pool.give_back(b);  // with the previous (a)
  EXPECT_EQ(pool.free_blocks(), 1u);
  EXPECT_EQ(*pool.take(20 * kMiB), a) << "a and b merged";
  pool.give_back(a);
  pool.give_back(d);
  pool.give_back(c);  // with both: the whole segment
  EXPECT_EQ(pool.free_blocks(), 1u);
  EXPECT_EQ(*pool.take(40 * kMiB), a);
  pool.give_back(a);

  const uintptr_t e = *pool.take(10 * kMiB), f = *pool.take(10 * kMiB);
  pool.give_back(e);  // e alone: f is taken
  EXPECT_EQ(pool.free_blocks(), 2u);
  pool.give_back(f);  // with the previous (e) and the next (the free rest)
  EXPECT_EQ(pool.free_blocks(), 1u);
  const uintptr_t g = *pool.take(10 * kMiB), h = *pool.take(10 * kMiB);
  pool.give_back(h);  // with the next (the free rest)
  EXPECT_EQ(pool.free_blocks(), 1u);
  EXPECT_EQ(*pool.take(30 * kMiB), h);
  EXPECT_EQ(g, a);
}

TEST(BlockPool, PicksTheSmallestFreeBlockThatFitsAndOfEqualOnesTheLowest) {
  BlockPool pool;
  pool.add_segment(0, 64 * kMiB);
  // a(8) x(1) b(4) y(1) c(8) z(1) rest(41): holes at a, b, c once they are given back.
  const uintptr_t a = *pool.take(8 * kMiB);
  ASSERT_TRUE(pool.take(kMiB));
  const uintptr_t b = *pool.take(4 * kMiB);
  ASSERT_TRUE(pool.take(kMiB));
  const uintptr_t c = *pool.take(8 * kMiB);
  ASSERT_TRUE(pool.take(kMiB));
  for (uintptr_t p : {c, b, a}) pool.give_back(p);
  EXPECT_EQ(*pool.take(3 * kMiB), b) << "the 4 MiB hole, not an 8 MiB one or the 41 MiB rest";
  EXPECT_EQ(*pool.take(8 * kMiB), a) << "two 8 MiB holes: the lower address";
  EXPECT_EQ(*pool.take(6 * kMiB), c);
  EXPECT_EQ(pool.block_bytes(c), 6 * kMiB);
  EXPECT_EQ(*pool.take(kMiB), b + 3 * kMiB) << "the 1 MiB rest of b's hole";
}

TEST(BlockPool, NeverMergesAcrossSegments) {
  BlockPool pool;
  pool.add_segment(0, 10 * kMiB);
  pool.add_segment(10 * kMiB, 10 * kMiB);  // adjacent addresses, another cudaMalloc
  EXPECT_FALSE(pool.take(15 * kMiB)) << "two segments are not one block";
  const uintptr_t first = *pool.take(10 * kMiB), second = *pool.take(10 * kMiB);
  pool.give_back(second);
  pool.give_back(first);
  EXPECT_EQ(pool.free_blocks(), 2u);
  EXPECT_FALSE(pool.take(20 * kMiB));
}

TEST(BlockPool, RemoveFreeSegmentsReturnsOnlyEntirelyFreeOnes) {
  BlockPool pool;
  pool.add_segment(0, 10 * kMiB);
  pool.add_segment(100 * kMiB, 20 * kMiB);
  pool.add_segment(200 * kMiB, 30 * kMiB);
  const uintptr_t in_second = *pool.take(12 * kMiB);  // best fit: the 20 MiB segment
  EXPECT_EQ(in_second, 100 * kMiB);
  const uintptr_t in_first = *pool.take(5 * kMiB);
  pool.give_back(in_first);  // the first is whole again
  using Segments = std::vector<std::pair<uintptr_t, size_t>>;
  EXPECT_EQ(pool.remove_free_segments(), (Segments{{0, 10 * kMiB}, {200 * kMiB, 30 * kMiB}}));
  EXPECT_EQ(pool.held_bytes(), 20 * kMiB);
  EXPECT_EQ(pool.segment_list(), (Segments{{100 * kMiB, 20 * kMiB}}));
  EXPECT_FALSE(pool.take(9 * kMiB)) << "the removed segments serve nothing";
  EXPECT_TRUE(pool.take(8 * kMiB));
  pool.give_back(in_second);
  EXPECT_TRUE(pool.remove_free_segments().empty()) << "the 8 MiB block is still taken";
}

TEST(BlockPool, RefusesADoubleOrForeignFree) {
  BlockPool pool;
  pool.add_segment(0, 4 * kMiB);
  const uintptr_t p = *pool.take(kMiB), q = *pool.take(kMiB);
  pool.give_back(p);
  EXPECT_THROW(pool.give_back(p), std::logic_error);
  EXPECT_THROW(pool.give_back(12345), std::logic_error);
  EXPECT_THROW(pool.give_back(q + kMiB / 2), std::logic_error) << "inside a block";
  EXPECT_THROW(pool.block_bytes(p), std::logic_error) << "freed";
  EXPECT_EQ(pool.taken_bytes(), kMiB) << "the refused frees changed nothing";
  EXPECT_EQ(pool.free_blocks(), 2u);
}

// Thousands of takes and frees against a reference model that knows only the segments and the
// taken blocks: its free blocks are the gaps between taken ones. Blocks never overlap and stay
// inside a segment, each take is the reference's best fit, the free blocks are exactly the gaps
// (fully merged), the bytes add up, and once everything is back each segment is one block.
TEST(BlockPool, RandomisedTakesAndFreesMatchAReferenceModel) {
  std::mt19937_64 rng(7);
  BlockPool pool;
  std::vector<std::pair<uintptr_t, size_t>> segments;  // (base, bytes), ascending
  std::map<uintptr_t, size_t> taken;                   // start -> bytes
  // The reference's free blocks, as (bytes, start), ascending: best fit is the first that fits.
  auto gaps = [&] {
    std::vector<std::pair<size_t, uintptr_t>> free;
    for (const auto& [base, bytes] : segments) {
      uintptr_t at = base;
      for (auto it = taken.lower_bound(base); it != taken.end() && it->first < base + bytes; ++it) {
        if (it->first > at) free.emplace_back(it->first - at, at);
        at = it->first + it->second;
      }
      if (base + bytes > at) free.emplace_back(base + bytes - at, at);
    }
    std::sort(free.begin(), free.end());
    return free;
  };
  uintptr_t next_base = 0;
  size_t segment_bytes = 0;
  for (int i = 0; i < 5000; ++i) {
    if (taken.empty() || rng() % 5 < 3) {
      const size_t bytes = (1 + rng() % 64) * kMiB;
      const auto free = gaps();
      const auto fit = std::lower_bound(free.begin(), free.end(), std::make_pair(bytes, 0ul));
      auto at = pool.take(bytes);
      ASSERT_EQ(at.has_value(), fit != free.end()) << "take " << i;
      if (!at) {
        const size_t segment = std::max(bytes, (128 + rng() % 256) * kMiB);
        next_base += 64 * kMiB * (rng() % 2) + (segments.empty() ? 0 : segments.back().second);
        pool.add_segment(next_base, segment);  // sometimes adjacent to the previous segment
        segments.emplace_back(next_base, segment);
        segment_bytes += segment;
        at = pool.take(bytes);
        ASSERT_EQ(*at, next_base) << "take " << i << ": the new segment is the only fit";
      } else {
        ASSERT_EQ(*at, fit->second) << "take " << i << ": not the best fit";
      }
      const auto after = taken.lower_bound(*at);
      if (after != taken.end()) {
        ASSERT_LE(*at + bytes, after->first) << "overlaps the next block";
      }
      if (after != taken.begin()) {
        const auto before = std::prev(after);
        ASSERT_LE(before->first + before->second, *at) << "overlaps the previous block";
      }
      const bool inside = std::any_of(segments.begin(), segments.end(), [&](const auto& s) {
        return *at >= s.first && *at + bytes <= s.first + s.second;
      });
      ASSERT_TRUE(inside) << "take " << i;
      ASSERT_EQ(pool.block_bytes(*at), bytes);
      taken[*at] = bytes;
    } else {
      auto victim = taken.begin();
      std::advance(victim, static_cast<long>(rng() % taken.size()));
      pool.give_back(victim->first);
      taken.erase(victim);
    }
    size_t taken_bytes = 0;
    for (const auto& [at, bytes] : taken) taken_bytes += bytes;
    ASSERT_EQ(pool.taken_bytes(), taken_bytes);
    ASSERT_EQ(pool.held_bytes(), segment_bytes);
    ASSERT_EQ(pool.free_bytes() + taken_bytes, segment_bytes) << "step " << i;
    ASSERT_EQ(pool.free_blocks(), gaps().size()) << "step " << i << ": a merge was missed";
  }
  EXPECT_GT(segments.size(), 3u);
  for (const auto& [at, bytes] : taken) pool.give_back(at);
  EXPECT_EQ(pool.free_blocks(), segments.size()) << "each segment one free block";
  EXPECT_EQ(pool.remove_free_segments(), segments);
}

// The training step (model/transformer.h, the memory plan), with the caching allocator's rule for
// new segments (at least 1 GiB, added only when no free block fits): 8 layers of activations
// (436 MiB each, in 7 buffers), then backward from the last layer allocates each layer's
// gradients (448 MiB) and frees its activations; the optimizer step frees the gradients.
TEST(BlockPool, TrainingStepPatternSettlesBelowActivationsPlusGradients) {
  const std::vector<size_t> activations{32, 32, 32, 32, 128, 128, 52};  // MiB, one layer
  const std::vector<size_t> gradients{64, 64, 256, 16, 16, 16, 16};     // MiB, one layer
  const size_t layers = 8, segment_bytes = size_t{1} << 30;
  BlockPool pool;
  uintptr_t next_base = 0;
  auto take = [&](size_t mib) {
    if (auto at = pool.take(mib * kMiB)) return *at;
    const size_t segment = std::max(mib * kMiB, segment_bytes);
    next_base += segment + 64 * kMiB;  // gaps: segments are never adjacent by accident
    pool.add_segment(next_base, segment);
    return *pool.take(mib * kMiB);
  };
  size_t held_after_first = 0, peak_taken = 0;
  for (int cycle = 0; cycle < 5; ++cycle) {
    std::vector<std::vector<uintptr_t>> saved(layers), grads(layers);
    for (size_t l = 0; l < layers; ++l)
      for (size_t mib : activations) saved[l].push_back(take(mib));
    for (size_t l = layers; l-- > 0;) {
      for (size_t mib : gradients) grads[l].push_back(take(mib));
      peak_taken = std::max(peak_taken, pool.taken_bytes());
      for (uintptr_t at : saved[l]) pool.give_back(at);
    }
    for (auto& layer : grads)
      for (uintptr_t at : layer) pool.give_back(at);
    if (cycle == 0) held_after_first = pool.held_bytes();
    EXPECT_EQ(pool.held_bytes(), held_after_first) << "cycle " << cycle << " added a segment";
    EXPECT_EQ(pool.free_blocks(), pool.segments()) << "cycle " << cycle;
  }
  size_t activation_mib = 0, gradient_mib = 0;  // one layer's
  for (size_t mib : activations) activation_mib += mib;
  for (size_t mib : gradients) gradient_mib += mib;
  // Exact-size reuse (the old free list) holds every activation and every gradient at once. The
  // plan needs, at layer l's backward, layers 0..l's activations beside layers l..L-1's gradients:
  // at most the larger of all activations plus the last layer's gradients (l = L-1) and all
  // gradients plus the first layer's activations (l = 0).
  const size_t exact_reuse = layers * (activation_mib + gradient_mib) * kMiB;
  size_t plan = 0;
  for (size_t l = 0; l < layers; ++l)
    plan = std::max(plan, ((l + 1) * activation_mib + (layers - l) * gradient_mib) * kMiB);
  std::printf(
      "[ pool     ] held %zu MiB in %zu segments; the plan's peak %zu MiB (activations "
      "and gradients live at once); exact-size reuse %zu MiB (all activations + all gradients)\n",
      pool.held_bytes() / kMiB, pool.segments(), plan / kMiB, exact_reuse / kMiB);
  EXPECT_EQ(peak_taken, plan);
  EXPECT_LT(pool.held_bytes(), exact_reuse);
  EXPECT_LE(pool.held_bytes(), plan + segment_bytes) << "more than one segment's slack";
}

}  // namespace
}  // namespace sy::cuda
