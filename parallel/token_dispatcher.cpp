#include "parallel/token_dispatcher.h"

#include <stdexcept>

#include "model/buffers.h"

namespace sy {

AllToAllDispatcher::AllToAllDispatcher(Backend& backend, Communicator& expert_parallel_group,
                                       int64_t num_experts, Communicator* world)
    : backend_(backend), group_(expert_parallel_group), world_(world), num_experts_(num_experts) {
  const int64_t P = group_.size();
  if (num_experts % P != 0)
    throw std::runtime_error("moe.num_experts: " + std::to_string(num_experts) +
                             " is not divisible by parallel.expert_parallel (" +
                             std::to_string(P) + ")");
  num_local_ = num_experts / P;
}

ExchangePlan AllToAllDispatcher::plan(const std::vector<int64_t>& send_rows_per_expert) {
  if (static_cast<int64_t>(send_rows_per_expert.size()) != num_experts_)
    throw std::runtime_error("dispatcher: expected counts for " + std::to_string(num_experts_) +
                             " experts");
  ExchangePlan plan;
  plan.send_rows_per_expert = send_rows_per_expert;
  // Peer q's experts are the q-th block of E/P counts: the counts go to their owners.
  {
    // The one host synchronisation of a layer: its region holds the wait for the slowest peer.
    const auto region = backend_.profile_region("exchange counts");
    plan.recv_rows = group_.all_to_all_host(send_rows_per_expert, num_local_);
  }
  plan.rows_per_local_expert.assign(num_local_, 0);
  for (int64_t q = 0; q < group_.size(); ++q)
    for (int64_t j = 0; j < num_local_; ++j)
      plan.rows_per_local_expert[j] += plan.recv_rows[q * num_local_ + j];
  for (int64_t rows : send_rows_per_expert) plan.rows_sent += rows;
  for (int64_t rows : plan.rows_per_local_expert) plan.rows_received += rows;
  return plan;
}

void AllToAllDispatcher::sum_over_world(std::vector<int64_t>& counts) {
  if (!world_) throw std::logic_error("dispatcher: sum_over_world needs the world communicator");
  world_->all_reduce_host(counts, ReduceOp::sum);
}

std::vector<int64_t> AllToAllDispatcher::send_counts(const ExchangePlan& plan,
                                                     int64_t width) const {
  std::vector<int64_t> counts(group_.size(), 0);
  for (int64_t q = 0; q < group_.size(); ++q)
    for (int64_t j = 0; j < num_local_; ++j)
      counts[q] += plan.send_rows_per_expert[q * num_local_ + j] * width;
  return counts;
}

std::vector<int64_t> AllToAllDispatcher::recv_counts(const ExchangePlan& plan,
                                                     int64_t width) const {
  std::vector<int64_t> counts(group_.size(), 0);
  for (int64_t q = 0; q < group_.size(); ++q)
    for (int64_t j = 0; j < num_local_; ++j)
      counts[q] += plan.recv_rows[q * num_local_ + j] * width;
  return counts;
}

void AllToAllDispatcher::regroup(const ExchangePlan& plan, const Tensor& source_major,
                                 const Tensor& expert_major, bool to_expert_major) {
  const int64_t P = group_.size();
  // Row offset of block (q, j) in source-major order.
  std::vector<int64_t> source_offset(P * num_local_);
  int64_t offset = 0;
  for (int64_t q = 0; q < P; ++q)
    for (int64_t j = 0; j < num_local_; ++j) {
      source_offset[q * num_local_ + j] = offset;
      offset += plan.recv_rows[q * num_local_ + j];
    }
  int64_t expert_offset = 0;
  for (int64_t j = 0; j < num_local_; ++j)
    for (int64_t q = 0; q < P; ++q) {
      const int64_t rows = plan.recv_rows[q * num_local_ + j];
      if (rows == 0) continue;
      const int64_t begin = source_offset[q * num_local_ + j];
      const Tensor source_block = source_major.rows(begin, begin + rows);
      const Tensor expert_block = expert_major.rows(expert_offset, expert_offset + rows);
      if (to_expert_major)
        backend_.copy(expert_block, source_block);
      else
        backend_.copy(source_block, expert_block);
      expert_offset += rows;
    }
}

void AllToAllDispatcher::dispatch(const ExchangePlan& plan, const Tensor& received,
                                  const Tensor& sent) {
  const int64_t D = received.dim(1);
  expect_shape(sent, {plan.rows_sent, D}, "dispatch: sent rows");
  expect_shape(received, {plan.rows_received, D}, "dispatch: received rows");
  const Tensor arrived = ensure_rows(backend_, staging_, plan.rows_received, D, sent.dtype(),
                                      plan.max_rows_received);
  const std::vector<int64_t> counts = send_counts(plan, D);
  {
    const auto region = backend_.profile_region("all_to_all dispatch");
    group_.all_to_all_v(sent, counts, arrived, recv_counts(plan, D));
  }
  for (int64_t q = 0; q < group_.size(); ++q)
    if (q != group_.rank()) bytes_sent_ += counts[q] * static_cast<int64_t>(dtype_size(sent.dtype()));
  regroup(plan, arrived, received, true);
}

void AllToAllDispatcher::combine(const ExchangePlan& plan, const Tensor& returned,
                                 const Tensor& expert_rows) {
  const int64_t D = returned.dim(1);
  expect_shape(returned, {plan.rows_sent, D}, "combine: returned rows");
  expect_shape(expert_rows, {plan.rows_received, D}, "combine: expert rows");
  const Tensor leaving = ensure_rows(backend_, staging_, plan.rows_received, D, returned.dtype(),
                                      plan.max_rows_received);
  regroup(plan, leaving, expert_rows, false);
  const std::vector<int64_t> counts = recv_counts(plan, D);
  {
    const auto region = backend_.profile_region("all_to_all combine");
    group_.all_to_all_v(leaving, counts, returned, send_counts(plan, D));
  }
  for (int64_t q = 0; q < group_.size(); ++q)
    if (q != group_.rank()) bytes_sent_ += counts[q] * static_cast<int64_t>(dtype_size(returned.dtype()));
}

}  // namespace sy
