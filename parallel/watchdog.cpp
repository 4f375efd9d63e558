#include "parallel/watchdog.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <stdexcept>

namespace sy {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string format_seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", seconds);
  return text;
}

}  // namespace

Watchdog::Watchdog(double timeout_s, int world_rank)
    : timeout_s_(timeout_s), world_rank_(world_rank) {
  if (!(timeout_s > 0)) throw std::invalid_argument("Watchdog: timeout_s must be > 0");
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::arm(const char* op, const char* group) {
  // Names first, start last: the thread reads the start, then the names, then the start again.
  op_.store(op, std::memory_order_relaxed);
  group_.store(group, std::memory_order_relaxed);
  armed_since_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::disarm() { armed_since_ns_.store(0, std::memory_order_release); }

int Watchdog::add_poller(std::function<std::string()> poll, std::function<void()> abort) {
  std::lock_guard<std::mutex> lock(mutex_);
  pollers_.push_back({next_poller_id_, std::move(poll), std::move(abort)});
  return next_poller_id_++;
}

void Watchdog::remove_poller(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  pollers_.erase(std::remove_if(pollers_.begin(), pollers_.end(),
                                [id](const Poller& p) { return p.id == id; }),
                 pollers_.end());
}

std::string Watchdog::check_armed() const {
  const int64_t since = armed_since_ns_.load(std::memory_order_acquire);
  if (since == 0 || static_cast<double>(now_ns() - since) * 1e-9 < timeout_s_) return "";
  const char* op = op_.load(std::memory_order_relaxed);
  const char* group = group_.load(std::memory_order_relaxed);
  // Finished (or replaced by the next call) while we read the names: not stalled.
  if (armed_since_ns_.load(std::memory_order_acquire) != since) return "";
  return std::string(op ? op : "a collective") + " (" + (group ? group : "?") +
         ") did not complete within " + format_seconds(timeout_s_) +
         " s; a rank is stalled or dead (parallel.timeout_s)";
}

void Watchdog::run() {
  // A tick of 1/20 of the timeout (50 ms .. 1 s): the job ends at most 5% after the timeout.
  const auto tick = std::chrono::duration<double>(std::clamp(timeout_s_ / 20, 0.05, 1.0));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, tick, [this] { return stop_; })) {
    std::string problem = check_armed();
    for (size_t i = 0; i < pollers_.size() && problem.empty(); ++i) problem = pollers_[i].poll();
    if (problem.empty()) continue;
    lock.unlock();
    fire(problem);
  }
}

void Watchdog::fire(const std::string& problem) {
  std::fprintf(stderr,
               "switchyard: error: rank %d: %s; ending the job with status %d\n",
               world_rank_, problem.c_str(), kExitCollectiveTimeout);
  std::fflush(stderr);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Poller& poller : pollers_)
      if (poller.abort) poller.abort();
  }
  // From this thread while the training thread sits in MPI (MPI_Init_thread asked for
  // MPI_THREAD_FUNNELED): Open MPI's MPI_Abort only asks the local daemon to kill the job, which
  // it does; should it ever return, leave anyway, so that mpirun sees a rank die and ends the job
  // itself.
  MPI_Abort(MPI_COMM_WORLD, kExitCollectiveTimeout);
  _exit(kExitCollectiveTimeout);
}

}  // namespace sy
