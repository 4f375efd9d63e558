// The CUDA backend's per-op profile (modes in profiler.h).
#include <nvtx3/nvToolsExt.h>  // header-only (NVTX 3): nothing to link

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "model/cuda/env_choice.h"
#include "model/cuda/profiler.h"

namespace sy::cuda {

namespace {

// (seconds, op) of every op, the slowest first; `sum` gets their total.
std::vector<std::pair<double, std::string>> sorted_totals(
    const std::map<std::string, std::pair<double, int64_t>>& totals, double& sum) {
  std::vector<std::pair<double, std::string>> rows;
  sum = 0;
  for (const auto& [op, entry] : totals) {
    rows.emplace_back(entry.first, op);
    sum += entry.first;
  }
  std::sort(rows.rbegin(), rows.rend());
  return rows;
}

}  // namespace

OpProfile::OpProfile() {
  const char* env = env_choice("SY_CUDA_PROFILE", {"0", "1", "events", "nvtx"});
  const std::string value = env ? env : "";
  env_mode_ = value.empty() || value == "0" ? Mode::off
              : value == "events"           ? Mode::events
              : value == "nvtx"             ? Mode::nvtx
                                            : Mode::synchronised;
  mode_ = env_mode_;
}

OpProfile::~OpProfile() {
  for (const Pending& p : pending_) release(p);
  if (window_start_) cudaEventDestroy(window_start_);
  for (cudaEvent_t event : pool_) cudaEventDestroy(event);
}

void OpProfile::add(const std::string& op, double seconds) {
  if (!seen_.insert(op).second) {
    auto& [total, calls] = totals_[op];
    total += seconds;
    ++calls;
  } else {
    first_calls_ += seconds;
  }
}

cudaEvent_t OpProfile::record(const Context& ctx) noexcept {
  if (!window_start_) window_start_ = record_new(ctx);
  return record_new(ctx);
}

void OpProfile::add_events(std::string op, cudaEvent_t start, cudaEvent_t stop,
                           const Context& ctx) {
  if (!start || !stop) {
    if (start) pool_.push_back(start);
    if (stop) pool_.push_back(stop);
    return;
  }
  pending_.push_back({std::move(op), start, stop});
  if (pending_.size() >= kMaxPending) resolve(ctx, pending_.size() / 2);
}

void OpProfile::begin(const Context& ctx) {
  resolve(ctx, pending_.size());
  mode_ = Mode::events;
  totals_.clear();
  seen_.clear();
  first_calls_ = 0;
  failures_ = 0;
  steps_seen_ = 0;
  if (window_start_) pool_.push_back(window_start_);
  window_start_ = nullptr;
}

std::string OpProfile::report(const Context& ctx, const std::string& backend, int64_t steps) {
  if (!events() || !window_start_) return "";
  if (steps <= 0) steps = steps_seen_;
  steps_seen_ = 0;
  cudaEvent_t window_end = record(ctx);
  resolve(ctx, pending_.size());
  float window_ms = 0;
  if (window_end) {
    check_cuda(cudaEventSynchronize(window_end), ctx, "profile", "cudaEventSynchronize");
    check_cuda(cudaEventElapsedTime(&window_ms, window_start_, window_end), ctx, "profile",
               "cudaEventElapsedTime");
    pool_.push_back(window_end);
  }
  pool_.push_back(window_start_);
  window_start_ = nullptr;
  double sum = 0;
  const std::vector<std::pair<double, std::string>> rows = sorted_totals(totals_, sum);
  const double per = steps > 0 ? static_cast<double>(steps) : 1.0;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "SY_CUDA_PROFILE events %s: window %.3f ms on the stream (%lld steps), %.3f ms "
                "in ops, %.3f ms between ops%s\n",
                backend.c_str(), window_ms, static_cast<long long>(steps), 1e3 * sum,
                window_ms - 1e3 * sum,
                failures_ ? (", " + std::to_string(failures_) + " events lost").c_str() : "");
  out += line;
  std::snprintf(line, sizeof line, "| %-34s | %8s | %10s | %9s | %6s |\n", "op", "calls",
                "total ms", "ms/step", "% step");
  out += line;
  out += "|------------------------------------|----------|------------|-----------|--------|\n";
  for (const auto& [seconds, op] : rows) {
    std::snprintf(line, sizeof line, "| %-34s | %8lld | %10.3f | %9.3f | %6.2f |\n", op.c_str(),
                  static_cast<long long>(totals_.at(op).second), 1e3 * seconds,
                  1e3 * seconds / per, window_ms > 0 ? 100.0 * 1e3 * seconds / window_ms : 0.0);
    out += line;
  }
  totals_.clear();
  mode_ = env_mode_;
  return out;
}

void OpProfile::print(const Context& ctx, const std::string& backend) {
  if (events()) {
    if (window_start_) std::fputs(report(ctx, backend, 0).c_str(), stderr);
    return;
  }
  if (!enabled() || seen_.empty()) return;
  double sum = 0;
  const std::vector<std::pair<double, std::string>> rows = sorted_totals(totals_, sum);
  std::fprintf(stderr,
               "SY_CUDA_PROFILE %s: %.3f s in ops (synchronised), plus %.3f s in the first "
               "calls of %zu op keys\n",
               backend.c_str(), sum, first_calls_, seen_.size());
  for (const auto& [seconds, op] : rows) {
    if (rows.size() > 60 && seconds < 1e-3 * sum) break;  // the long tail
    std::fprintf(stderr, "  %9.3f ms %6.1f%% %8lld calls  %s\n", 1e3 * seconds,
                 100.0 * seconds / sum, static_cast<long long>(totals_.at(op).second), op.c_str());
  }
}

cudaEvent_t OpProfile::record_new(const Context& ctx) noexcept {
  cudaEvent_t event = nullptr;
  if (!pool_.empty()) {
    event = pool_.back();
    pool_.pop_back();
  } else if (cudaEventCreate(&event) != cudaSuccess) {
    cudaGetLastError();
    ++failures_;
    return nullptr;
  }
  if (cudaEventRecord(event, ctx.stream) != cudaSuccess) {
    cudaGetLastError();
    pool_.push_back(event);
    ++failures_;
    return nullptr;
  }
  return event;
}

void OpProfile::release(const Pending& p) {
  cudaEventDestroy(p.start);
  cudaEventDestroy(p.stop);
}

void OpProfile::resolve(const Context& ctx, size_t count) {
  if (count == 0) return;
  check_cuda(cudaEventSynchronize(pending_[count - 1].stop), ctx, "profile",
             "cudaEventSynchronize");
  for (size_t i = 0; i < count; ++i) {
    Pending& p = pending_[i];
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, p.start, p.stop), ctx, "profile",
               "cudaEventElapsedTime");
    auto& [total, calls] = totals_[p.op.substr(0, p.op.find(" ["))];
    total += 1e-3 * ms;
    ++calls;
    pool_.push_back(p.start);
    pool_.push_back(p.stop);
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(count));
}

// ---- ProfileScope ---------------------------------------------------------------------------
void ProfileScope::start() {
  if (profile_->events()) {
    start_event_ = profile_->record(ctx_);
    return;
  }
  if (profile_->nvtx()) {
    nvtxRangePushA(op_.c_str());
    pushed_ = true;
    return;
  }
  cudaStreamSynchronize(ctx_.stream);
  start_ = std::chrono::steady_clock::now();
}

void ProfileScope::stop() noexcept {
  if (pushed_) {
    nvtxRangePop();
    return;
  }
  if (profile_->events()) {
    // An op that threw enqueued nothing after its start event; its pair still resolves.
    try {
      profile_->add_events(std::move(op_), start_event_, profile_->record(ctx_), ctx_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "SY_CUDA_PROFILE events: %s\n", e.what());
    }
    return;
  }
  cudaStreamSynchronize(ctx_.stream);
  profile_->add(op_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
}

}  // namespace sy::cuda
