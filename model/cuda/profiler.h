// The CUDA backend's per-op profile, chosen by SY_CUDA_PROFILE (docs/cuda.md, Performance):
// (unset or 0: off; a value other than 0, 1, events and nvtx is an error)
//   1: each op waits for the stream before and after it runs, and its time is summed per op name
//     (GEMMs per dtype, transposition and shape), leaving out each name's first call (module
//     loading, cuBLAS heuristics), which is summed apart; the table goes to stderr when the
//     backend is destroyed. For finding where a step's time goes: it serialises the stream, so
//     its totals are not throughput numbers.
//   events (or cuda_profile_begin()): each op records a CUDA event on the stream before and after
//     its work and nothing waits, so the step runs as it would unprofiled (plus two
//     cudaEventRecord calls per op on the host). An op's time is the stream time between its two
//     events: its kernels, plus any gap in which the GPU waited for the host to enqueue them.
//     Times are summed per op family (the name without its shape) and resolved at the report, at
//     destruction, or half at a time once kMaxPending pairs wait (a step's own host
//     synchronisations keep the GPU close behind the host, so the older half is done by then).
//   nvtx: each op is an NVTX range named as in mode 1 (push before it enqueues, pop after), and
//     nothing else: no waits, no table. For `nsys profile --trace=cuda,nvtx`, which puts each
//     op's kernels under its name.
//   0 or unset: nothing.
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model/cuda/common.cuh"

namespace sy::cuda {

class OpProfile {
 public:
  OpProfile();  // reads SY_CUDA_PROFILE
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  bool enabled() const { return mode_ != Mode::off; }
  bool events() const { return mode_ == Mode::events; }
  bool nvtx() const { return mode_ == Mode::nvtx; }

  // Synchronised mode: one op's wall time.
  void add(const std::string& op, double seconds);

  // Events mode: an event recorded on the stream now (nullptr, counted, if that failed; never
  // throws, since scopes record from destructors). The window opens with the first one.
  cudaEvent_t record(const Context& ctx) noexcept;
  void add_events(std::string op, cudaEvent_t start, cudaEvent_t stop, const Context& ctx);

  // Starts a fresh events window: what was recorded so far is dropped.
  void begin(const Context& ctx);
  // A training step ended inside the window (Backend::profile_step): report() divides by the
  // steps counted when its caller gives none.
  void count_step() {
    if (window_start_) ++steps_seen_;
  }

  // Events mode: resolves every pair, returns the table of the window (per op family: calls,
  // total ms, ms per step, % of the window's stream time) and closes the window; profiling
  // goes back to what SY_CUDA_PROFILE asks for. "" outside events mode.
  std::string report(const Context& ctx, const std::string& backend, int64_t steps);

  // At destruction: the synchronised table, or the events window still open, to stderr.
  void print(const Context& ctx, const std::string& backend);

 private:
  enum class Mode { off, synchronised, events, nvtx };
  struct Pending {
    std::string op;
    cudaEvent_t start, stop;
  };
  static constexpr size_t kMaxPending = 16384;

  cudaEvent_t record_new(const Context& ctx) noexcept;
  void release(const Pending& p);
  // Sums the first `count` pending pairs into totals_ (waiting for the last of them).
  void resolve(const Context& ctx, size_t count);

  Mode env_mode_ = Mode::off, mode_ = Mode::off;
  std::map<std::string, std::pair<double, int64_t>> totals_;
  std::set<std::string> seen_;
  double first_calls_ = 0;
  std::vector<cudaEvent_t> pool_;
  std::vector<Pending> pending_;
  cudaEvent_t window_start_ = nullptr;
  int64_t steps_seen_ = 0;  // Backend::profile_step calls since the window opened
  int64_t failures_ = 0;
};

// One op's profile, from its construction to its destruction (SY_PROFILE below).
class ProfileScope {
 public:
  ProfileScope(OpProfile& profile, const Context& ctx, std::string op)
      : profile_(profile.enabled() ? &profile : nullptr), ctx_(ctx), op_(std::move(op)) {
    if (profile_) start();
  }
  ~ProfileScope() {
    if (profile_) stop();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  void start();
  void stop() noexcept;

  OpProfile* profile_;
  const Context& ctx_;
  std::string op_;
  std::chrono::steady_clock::time_point start_;
  cudaEvent_t start_event_ = nullptr;
  bool pushed_ = false;  // an NVTX range to pop
};

}  // namespace sy::cuda

// In a CudaBackend member: profiles the rest of the enclosing scope as op `name` (a string built
// only when profiling is on).
#define SY_PROFILE(name)                                   \
  const ::sy::cuda::ProfileScope profile_scope_(profile_, ctx_, \
                                                profile_.enabled() ? (name) : std::string())
