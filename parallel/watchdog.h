// The collective watchdog (parallel.timeout_s; README "Running on a cluster"): a stalled rank
// (SIGSTOP, a wedged node, a dead NIC) would otherwise keep every other rank waiting in its next
// collective until the job's wall-time limit. One thread per process, started with the process
// groups, checks a few times a second whether the blocking collective in flight has outlived the
// timeout, and whether a registered poller (the NCCL communicators: asynchronous errors, device
// collectives still running) reports a problem. Either way it prints one line naming the rank and
// the operation, runs the pollers' abort hooks (ncclCommAbort) and ends the whole job with
// MPI_Abort(kExitCollectiveTimeout), which makes mpirun kill every rank.
//
// The communicators arm it before each blocking call and disarm it after: two relaxed atomic
// stores and one steady_clock read, no lock, no thread per call.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sy {

// The exit status of a job that the watchdog ended (documented in the README).
inline constexpr int kExitCollectiveTimeout = 4;

class Watchdog {
 public:
  // timeout_s > 0. `world_rank` names this process in the message.
  Watchdog(double timeout_s, int world_rank);
  ~Watchdog();  // stops and joins the thread
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  double timeout_s() const { return timeout_s_; }

  // Around one blocking call of this process. `op` and `group` must be string literals (or
  // otherwise outlive the call): only the pointers are stored. One call at a time per process,
  // which is how the training thread calls collectives.
  void arm(const char* op, const char* group);
  void disarm();

  // A check run on the watchdog thread at every tick: returns "" when fine, else the problem
  // (it then ends the job). `abort` runs, for every poller, just before MPI_Abort. Returns an id
  // for remove_poller; a poller is removed before what it captures is destroyed.
  int add_poller(std::function<std::string()> poll, std::function<void()> abort);
  void remove_poller(int id);

  // Ends the job as a timeout does, from the calling thread: the line, the abort hooks, MPI_Abort.
  [[noreturn]] void fire(const std::string& problem);

 private:
  struct Poller {
    int id;
    std::function<std::string()> poll;
    std::function<void()> abort;
  };
  void run();
  std::string check_armed() const;

  const double timeout_s_;
  const int world_rank_;
  // The call in flight: its start in steady_clock nanoseconds (0: none), its names.
  std::atomic<int64_t> armed_since_ns_{0};
  std::atomic<const char*> op_{nullptr};
  std::atomic<const char*> group_{nullptr};

  std::mutex mutex_;  // guards pollers_, stop_
  std::condition_variable wake_;
  std::vector<Poller> pollers_;
  int next_poller_id_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// RAII arm/disarm; a null watchdog (parallel.timeout_s: 0, or a communicator built without one)
// costs one branch.
class WatchdogScope {
 public:
  WatchdogScope(Watchdog* watchdog, const char* op, const char* group) : watchdog_(watchdog) {
    if (watchdog_) watchdog_->arm(op, group);
  }
  ~WatchdogScope() {
    if (watchdog_) watchdog_->disarm();
  }
  WatchdogScope(const WatchdogScope&) = delete;
  WatchdogScope& operator=(const WatchdogScope&) = delete;

 private:
  Watchdog* watchdog_;
};

}  // namespace sy
