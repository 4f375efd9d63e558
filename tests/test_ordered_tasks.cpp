// OrderedTasks (data/ordered_tasks.h): results taken in submission order whatever the threads,
// the first failure in that order reported, and the queue bounded by cost.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/ordered_tasks.h"

namespace sy {
namespace {

// Tasks that take longer the earlier they were submitted, so that later ones finish first.
std::function<int()> slow_task(int index, int count) {
  return [index, count] {
    std::this_thread::sleep_for(std::chrono::microseconds(50 * (count - index % count)));
    return index * index;
  };
}

TEST(OrderedTasks, ResultsInSubmissionOrderWhateverTheThreads) {
  for (const int threads : {1, 3, 8}) {
    std::vector<int> taken;
    OrderedTasks<int> tasks(threads, 16, [&](int& result) { taken.push_back(result); });
    for (int k = 0; k < 200; k++) tasks.submit(1, slow_task(k, 10));
    tasks.finish();
    ASSERT_EQ(taken.size(), 200u) << threads << " threads";
    for (int k = 0; k < 200; k++) ASSERT_EQ(taken[k], k * k) << threads << " threads";
  }
}

TEST(OrderedTasks, QueuedCostStaysBounded) {
  std::vector<int64_t> costs;  // of the tasks submitted, in order
  size_t taken = 0;
  OrderedTasks<int> tasks(4, 5, [&](int&) { taken++; });
  for (int k = 0; k < 100; k++) {
    costs.push_back(k % 3);
    tasks.submit(costs.back(), slow_task(k, 7));
    int64_t queued = 0;
    for (size_t j = taken; j < costs.size(); j++) queued += costs[j];
    EXPECT_LE(queued, 5) << "after task " << k;
  }
  // A task costlier than the bound waits alone.
  tasks.submit(100, slow_task(0, 1));
  EXPECT_EQ(taken, 100u);
  tasks.finish();
  EXPECT_EQ(taken, 101u);
}

TEST(OrderedTasks, TheFirstFailureInOrderIsReported) {
  std::vector<int> taken;
  OrderedTasks<int> tasks(8, 100, [&](int& result) { taken.push_back(result); });
  for (int k = 0; k < 20; k++)
    tasks.submit(1, [k]() -> int {
      // Task 12 fails at once, task 5 late: 5 is still the one reported.
      std::this_thread::sleep_for(std::chrono::milliseconds(k == 5 ? 50 : 0));
      if (k == 5 || k == 12) throw std::runtime_error("task " + std::to_string(k));
      return k;
    });
  try {
    tasks.finish();
    FAIL() << "no failure";
  } catch (const std::runtime_error& error) {
    EXPECT_STREQ(error.what(), "task 5");
  }
  EXPECT_EQ(taken, (std::vector<int>{0, 1, 2, 3, 4}));
  tasks.finish();  // after a failure, nothing more is taken or thrown
  EXPECT_EQ(taken.size(), 5u);
}

// submit_all: a failure of the reading itself comes after the failures of the tasks before it.
TEST(OrderedTasks, SubmitAllReportsTheFirstFailureInOrder) {
  for (const bool task_fails : {false, true}) {
    std::vector<int> taken;
    OrderedTasks<int> tasks(3, 100, [&](int& result) { taken.push_back(result); });
    try {
      tasks.submit_all([&]() -> int {
        for (int k = 0; k < 10; k++)
          tasks.submit(1, [k, task_fails]() -> int {
            if (task_fails && k == 6) throw std::runtime_error("task 6");
            return k;
          });
        throw std::runtime_error("the input ends early");
      });
      ADD_FAILURE() << "no failure";
    } catch (const std::runtime_error& error) {
      EXPECT_STREQ(error.what(), task_fails ? "task 6" : "the input ends early");
    }
    EXPECT_EQ(taken.size(), task_fails ? 6u : 10u);
  }
  OrderedTasks<int> tasks(2, 100, [](int&) {});
  EXPECT_EQ(tasks.submit_all([&] {
    tasks.submit(1, [] { return 1; });
    return 42;
  }),
            42);
}

TEST(OrderedTasks, AFailingTakeStopsTheWorkers) {
  std::atomic<int> started{0};
  OrderedTasks<int> tasks(2, 1000, [](int& result) {
    if (result == 3) throw std::runtime_error("cannot write 3");
  });
  for (int k = 0; k < 50; k++)
    tasks.submit(1, [&started, k] {
      started++;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return k;
    });
  EXPECT_THROW(tasks.finish(), std::runtime_error);
  // The workers were joined before the failure left finish(): nothing starts after it.
  const int when_thrown = started.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(started.load(), when_thrown);
  EXPECT_LT(when_thrown, 50);
}

TEST(OrderedTasks, DestroyedWithTasksQueued) {
  std::atomic<int> ran{0};
  {
    OrderedTasks<int> tasks(2, 1000, [](int&) {});
    for (int k = 0; k < 100; k++)
      tasks.submit(1, [&ran] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return ran++;
      });
  }  // returns without running all of them, and without a hang
  EXPECT_LT(ran.load(), 100);
}

}  // namespace
}  // namespace sy
