// Timing on one GPU for the benches under bench/: CUDA events recorded on a stream around a
// call, and the median of repeated runs. Host code only (cuda_runtime API), so .cpp and .cu
// benches share it. Errors throw std::runtime_error("<call>: <CUDA message>"); the benches catch
// it in main and print it after their name.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sy::bench {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// The middle element of v (the upper of the two middle ones for an even count).
inline double median(std::vector<double> v) {
  if (v.empty()) throw std::runtime_error("median of no values");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A start/stop event pair, reused for every timing.
class EventTimer {
 public:
  EventTimer() {
    check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
    if (cudaError_t status = cudaEventCreate(&stop_); status != cudaSuccess) {
      cudaEventDestroy(start_);
      check_cuda(status, "cudaEventCreate");
    }
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Milliseconds of GPU time between events recorded on `stream` before and after f() (f may
  // synchronise the host; it waits for the stop event).
  template <class F>
  float time_ms(cudaStream_t stream, F&& f) {
    check_cuda(cudaEventRecord(start_, stream), "cudaEventRecord");
    f();
    check_cuda(cudaEventRecord(stop_, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Median milliseconds of `iters` timed runs of f on `stream`, after `warmup` untimed ones.
template <class F>
double median_ms(cudaStream_t stream, int warmup, int iters, F&& f) {
  for (int i = 0; i < warmup; ++i) f();
  check_cuda(cudaStreamSynchronize(stream), "warm-up");
  EventTimer timer;
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) ms.push_back(timer.time_ms(stream, f));
  return median(ms);
}

}  // namespace sy::bench
