// Counter-based random numbers: a value is a pure function of (key, counter), so that the initial
// model and every training batch are reproducible from the seed alone, whatever the rank layout.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

namespace sy {

// SplitMix64 finaliser: a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Combines a key with one more word of key material.
inline uint64_t key_combine(uint64_t key, uint64_t word) { return mix64(key ^ mix64(word)); }

// FNV-1a of a string, for keying streams by tensor path.
uint64_t hash_string(std::string_view text);

// A stream: the n-th draw is mix64(key ^ mix64(n)) with the counter n counting up from 0.
class CounterRng {
 public:
  explicit CounterRng(uint64_t key, uint64_t counter = 0) : key_(key), counter_(counter) {}
  uint64_t next_u64() { return key_combine(key_, counter_++); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n): the high word of a 64x64-bit product (Lemire, without rejection;
  // the bias is below n / 2^64).
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
  }
  // Standard normal by Box-Muller; uses two draws per value (the sine branch is not kept, so
  // that value i depends on draws 2i and 2i+1 only).
  double normal();

 private:
  uint64_t key_;
  uint64_t counter_;
};

// One stream's share of a fill: out[i] = scale * normal value i of the stream `key` (draws 2i and
// 2i+1), for i in [0, n).
struct NormalFill {
  uint64_t key;
  double* out;
  int64_t n;
};

// Every fill, cut into pieces that several host threads share, so that many small streams (a
// stacked expert tensor's slices) go as fast as one large one. The values are the same as each
// stream drawn in order on one thread.
void fill_normal(std::span<const NormalFill> fills, double scale);

}  // namespace sy
