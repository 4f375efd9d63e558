#include "data/permutation.h"

#include <stdexcept>
#include <string>

#include "model/rng.h"

namespace sy {

KeyedPermutation::KeyedPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
  if (n < 1) throw std::runtime_error("permutation of " + std::to_string(n) + " elements");
  int bits = 0;
  while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
  half_bits_ = bits < 2 ? 1 : (bits + 1) / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

uint64_t KeyedPermutation::feistel(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (uint64_t round = 0; round < 4; ++round) {
    const uint64_t mixed = key_combine(key_combine(key_, round), right) & half_mask_;
    const uint64_t next_right = left ^ mixed;
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

uint64_t KeyedPermutation::operator()(uint64_t position) const {
  if (position >= n_)
    throw std::logic_error("permutation: position " + std::to_string(position) + " of " +
                           std::to_string(n_));
  uint64_t x = feistel(position);
  while (x >= n_) x = feistel(x);
  return x;
}

}  // namespace sy
