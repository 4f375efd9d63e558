// Wall-clock time per MoE stage, for benchmarks. A layer with a timer records a lap after each
// stage; on a device the backend is synchronised first, so a lap covers the stage's own work.
#pragma once
#include <array>
#include <chrono>

#include "model/backend.h"

namespace sy {

enum MoEStage { kRoute, kPermute, kDispatch, kExperts, kCombine, kUnpermute, kNumMoEStages };

inline const char* moe_stage_name(int stage) {
  static const char* names[] = {"route", "permute", "dispatch", "experts", "combine", "unpermute"};
  return names[stage];
}

struct MoEStageTimer {
  Backend* backend = nullptr;
  std::array<double, kNumMoEStages> forward_s{}, backward_s{};

  void start() {
    if (backend) backend->synchronize();
    last_ = std::chrono::steady_clock::now();
  }
  // Adds the time since the last lap to `stage` of the forward or backward pass.
  void lap(MoEStage stage, bool backward) {
    if (backend) backend->synchronize();
    const auto now = std::chrono::steady_clock::now();
    (backward ? backward_s : forward_s)[stage] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  std::chrono::steady_clock::time_point last_;
};

}  // namespace sy
