#include "model/rng.h"

#include <algorithm>
#include <thread>
#include <vector>

#include <cmath>

namespace sy {

uint64_t hash_string(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

double CounterRng::normal() {
  const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

void fill_normal(std::span<const NormalFill> fills, double scale) {
  // Initialising a billion-parameter model on one core takes minutes (~40 ns a value); threads
  // take seconds. Pieces of 2^20 values: a thread's start-up is amortised, and the 64 slices of
  // 2M values of a fine-grained expert tensor spread over every core.
  constexpr int64_t kPiece = int64_t{1} << 20;
  struct Piece {
    const NormalFill* fill;
    int64_t begin, end;
  };
  std::vector<Piece> pieces;
  for (const NormalFill& f : fills)
    for (int64_t begin = 0; begin < f.n; begin += kPiece)
      pieces.push_back({&f, begin, std::min(f.n, begin + kPiece)});
  const auto run = [&](size_t first, size_t stride) {
    for (size_t p = first; p < pieces.size(); p += stride) {
      const Piece& piece = pieces[p];
      // value i uses draws 2i and 2i+1
      CounterRng rng(piece.fill->key, 2 * static_cast<uint64_t>(piece.begin));
      for (int64_t i = piece.begin; i < piece.end; ++i) piece.fill->out[i] = scale * rng.normal();
    }
  };
  const size_t threads =
      std::min<size_t>(pieces.size(), std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1) return run(0, 1);
  std::vector<std::thread> workers;
  for (size_t t = 0; t < threads; ++t) workers.emplace_back(run, t, threads);
  for (std::thread& worker : workers) worker.join();
}

}  // namespace sy
