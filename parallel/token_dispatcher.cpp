#include "parallel/token_dispatcher.h"

#include <stdexcept>

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

// Where each block of rows lies, in elements of rows `width` wide, one block for every peer p and
// local expert j that have rows:
//   by_expert: in this rank's rows grouped by global expert (the sent rows), the rows for
//     expert j of peer p;
//   into_local: in the rows this rank's experts run on (local expert j, then source peer p),
//     the rows from peer p for this rank's expert j.
// Both list blocks in (peer, local expert) order, which is the pairing all_to_all_blocks needs:
// the k-th block this rank sends to p is the k-th block p expects from it.
AllToAllDispatcher::Blocks AllToAllDispatcher::blocks(const ExchangePlan& plan,
                                                      int64_t width) const {
  const int64_t P = group_.size(), L = num_local_;
  Blocks out;
  int64_t sent_offset = 0;
  for (int64_t q = 0; q < P; ++q)
    for (int64_t j = 0; j < L; ++j) {
      const int64_t rows = plan.send_rows_per_expert[q * L + j];
      if (rows > 0)
        out.by_expert.push_back({static_cast<int>(q), sent_offset * width, rows * width});
      sent_offset += rows;
    }
  // Local expert j's segment starts after the earlier experts' rows; within it, peer q's rows
  // follow those of peers 0 .. q-1.
  std::vector<int64_t> expert_start(L, 0);
  for (int64_t j = 1; j < L; ++j)
    expert_start[j] = expert_start[j - 1] + plan.rows_per_local_expert[j - 1];
  for (int64_t q = 0; q < P; ++q)
    for (int64_t j = 0; j < L; ++j) {
      const int64_t rows = plan.recv_rows[q * L + j];
      if (rows > 0)
        out.into_local.push_back({static_cast<int>(q), expert_start[j] * width, rows * width});
      expert_start[j] += rows;
    }
  return out;
}

void AllToAllDispatcher::count_sent(const std::vector<PeerBlock>& sent, DType dtype) {
  for (const PeerBlock& b : sent)
    if (b.peer != group_.rank()) bytes_sent_ += b.count * static_cast<int64_t>(dtype_size(dtype));
}

void AllToAllDispatcher::dispatch(const ExchangePlan& plan, const Tensor& received,
                                  const Tensor& sent) {
  const int64_t D = received.dim(1);
  expect_shape(sent, {plan.rows_sent, D}, "dispatch: sent rows");
  expect_shape(received, {plan.rows_received, D}, "dispatch: received rows");
  const Blocks b = blocks(plan, D);
  {
    const auto region = backend_.profile_region("all_to_all dispatch");
    group_.all_to_all_blocks(sent, b.by_expert, received, b.into_local);
  }
  count_sent(b.by_expert, sent.dtype());
}

void AllToAllDispatcher::combine(const ExchangePlan& plan, const Tensor& returned,
                                 const Tensor& expert_rows) {
  const int64_t D = returned.dim(1);
  expect_shape(returned, {plan.rows_sent, D}, "combine: returned rows");
  expect_shape(expert_rows, {plan.rows_received, D}, "combine: expert rows");
  const Blocks b = blocks(plan, D);
  {
    const auto region = backend_.profile_region("all_to_all combine");
    group_.all_to_all_blocks(expert_rows, b.into_local, returned, b.by_expert);
  }
  count_sent(b.into_local, returned.dtype());
}

}  // namespace sy
