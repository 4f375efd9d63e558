// Tasks run on a pool of threads, their results taken in the order they were submitted: what
// prepare-data uses to parse and encode text on every core while the token file is written in
// input order, so that it does not depend on the thread count.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace sy {

// One thread submits tasks; `threads` workers run them, each taking the oldest not yet taken;
// the submitting thread hands each result to `take`, oldest first, inside submit() and finish().
// A task that throws has its exception rethrown, in order, where its result would have been
// taken, so the first failure in submission order is the one reported, as on one thread.
// At most `max_cost` of submitted cost waits untaken (but always one task, whatever its cost):
// submit() takes results until the new task fits, which bounds the memory of what is queued.
// The destructor, or a failure thrown, lets running tasks end and drops the others.
template <class Result>
class OrderedTasks {
 public:
  OrderedTasks(int threads, int64_t max_cost, std::function<void(Result&)> take)
      : max_cost_(max_cost), take_(std::move(take)) {
    for (int t = 0; t < std::max(threads, 1); t++)
      workers_.emplace_back([this](std::stop_token stop) { work(stop); });
  }
  // The workers (declared last) are stopped and joined first, before the queue they read.
  ~OrderedTasks() = default;
  OrderedTasks(const OrderedTasks&) = delete;
  OrderedTasks& operator=(const OrderedTasks&) = delete;

  void submit(int64_t cost, std::function<Result()> task) {
    std::unique_lock lock(mutex_);
    while (!queue_.empty() && queue_.front().done) take_front(lock);
    while (!queue_.empty() && queued_cost_ + cost > max_cost_) take_front(lock);
    queue_.push_back({std::move(task), cost, false, std::nullopt, nullptr});
    queued_cost_ += cost;
    lock.unlock();
    work_ready_.notify_one();
  }
  // Runs produce(), which submits tasks (reading the input they work on), then takes every
  // result. When produce() itself fails, the results submitted before are taken first: a task's
  // earlier failure is then the one thrown, as on one thread. Returns what produce() returns.
  template <class Produce>
  auto submit_all(Produce produce) {
    try {
      auto produced = produce();
      finish();
      return produced;
    } catch (...) {
      finish();  // throws the failure of a task before the one that stopped produce(), if any
      throw;
    }
  }
  // Takes every result that is left; nothing once a failure has been thrown, so that a caller
  // may finish() on its way out of any failure and the first one stays the one reported.
  void finish() {
    if (failed_) return;
    std::unique_lock lock(mutex_);
    while (!queue_.empty()) take_front(lock);
  }

 private:
  struct Slot {
    std::function<Result()> task;
    int64_t cost = 0;
    bool done = false;
    std::optional<Result> result;
    std::exception_ptr error;
  };

  void work(std::stop_token stop) {
    std::unique_lock lock(mutex_);
    while (true) {
      // With stop requested, wait() returns the predicate's value: work left does not keep a
      // stopped worker going.
      work_ready_.wait(lock, stop, [&] { return next_untaken_ < queue_.size(); });
      if (stop.stop_requested()) return;
      Slot& slot = queue_[next_untaken_++];  // a deque's push_back keeps references valid
      lock.unlock();
      try {
        slot.result.emplace(slot.task());
      } catch (...) {
        slot.error = std::current_exception();
      }
      slot.task = nullptr;  // what it captured (the input) is freed now
      lock.lock();
      slot.done = true;
      result_ready_.notify_all();
    }
  }

  // Takes the oldest result, waiting for it. A failure stops the workers before it leaves, so
  // that no task runs on after its caller has unwound what the tasks refer to.
  void take_front(std::unique_lock<std::mutex>& lock) {
    result_ready_.wait(lock, [&] { return queue_.front().done; });
    Slot slot = std::move(queue_.front());
    queue_.pop_front();
    next_untaken_--;  // the front was taken by a worker, so the index moves with the queue
    queued_cost_ -= slot.cost;
    lock.unlock();  // the workers go on while the result is taken
    try {
      if (slot.error) std::rethrow_exception(slot.error);
      take_(*slot.result);
    } catch (...) {
      failed_ = true;
      for (std::jthread& worker : workers_) worker.request_stop();
      for (std::jthread& worker : workers_) worker.join();
      throw;
    }
    lock.lock();
  }

  int64_t max_cost_;
  std::function<void(Result&)> take_;
  std::mutex mutex_;
  std::condition_variable_any work_ready_;
  std::condition_variable result_ready_;
  std::deque<Slot> queue_;
  size_t next_untaken_ = 0;  // index in queue_ of the oldest task no worker has taken
  int64_t queued_cost_ = 0;
  bool failed_ = false;  // a task or take_ threw (only the submitting thread reads it)
  std::vector<std::jthread> workers_;  // last: joined first
};

}  // namespace sy
