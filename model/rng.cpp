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

void fill_normal(uint64_t key, double scale, double* out, int64_t n) {
  const auto fill = [&](int64_t begin, int64_t end) {
    CounterRng rng(key, 2 * static_cast<uint64_t>(begin));  // value i uses draws 2i and 2i+1
    for (int64_t i = begin; i < end; ++i) out[i] = scale * rng.normal();
  };
  // Initialising a billion-parameter model on one core takes minutes; threads take seconds.
  constexpr int64_t kPerThread = int64_t{1} << 22;
  const int64_t threads = std::min<int64_t>(
      (n + kPerThread - 1) / kPerThread, std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1) return fill(0, n);
  std::vector<std::thread> workers;
  const int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t)
    workers.emplace_back(fill, t * chunk, std::min(n, (t + 1) * chunk));
  for (std::thread& worker : workers) worker.join();
}

}  // namespace sy
