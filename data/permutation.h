// A keyed pseudo-random permutation of [0, n), one element at a time in O(1) memory: epoch
// sampling's order of a split's windows (docs/data.md, "Epochs").
#pragma once
#include <cstdint>

namespace sy {

class KeyedPermutation {
 public:
  // Throws for n < 1.
  KeyedPermutation(uint64_t n, uint64_t key);
  // The element at `position` (< n): a balanced Feistel network of four rounds, keyed by `key`,
  // over the smallest domain of 2^(2h) >= n elements (h >= 1), applied again while the result
  // is >= n ("cycle walking", at most 4 applications on average). Each application is a
  // bijection of the domain, so walking each position out of [n, domain) is a bijection of
  // [0, n).
  uint64_t operator()(uint64_t position) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t feistel(uint64_t x) const;

  uint64_t n_;
  uint64_t key_;
  int half_bits_;
  uint64_t half_mask_;
};

}  // namespace sy
