// The all-to-all token dispatcher: the TokenExchange of an expert-parallel group of P ranks.
//
// dispatch: each rank's kept rows, grouped by global expert, go to the ranks owning those
//   experts (counts first, then one all-to-all of the rows); what arrives in (source rank,
//   local expert) order is regrouped to (local expert, source rank), so that each local expert
//   runs on one contiguous segment.
// combine: the exact reverse, so each row returns to the slot it left from.
// Backward uses the same two movements with the roles swapped (see model/moe/moe_layer.cpp).
#pragma once
#include "model/backend.h"
#include "model/moe/token_exchange.h"
#include "parallel/communicator.h"

namespace sy {

class AllToAllDispatcher final : public TokenExchange {
 public:
  // `world` (all ranks) serves sum_over_world; without it the dispatcher refuses that call.
  AllToAllDispatcher(Backend& backend, Communicator& expert_parallel_group, int64_t num_experts,
                     Communicator* world = nullptr);

  int64_t num_experts() const override { return num_experts_; }
  int64_t first_local_expert() const override { return group_.rank() * num_local_; }
  int64_t num_local_experts() const override { return num_local_; }
  bool moves_rows() const override { return group_.size() > 1; }

  ExchangePlan plan(const std::vector<int64_t>& send_rows_per_expert) override;
  void dispatch(const ExchangePlan& plan, const Tensor& received, const Tensor& sent) override;
  void combine(const ExchangePlan& plan, const Tensor& returned,
               const Tensor& expert_rows) override;
  void sum_over_world(std::vector<int64_t>& counts) override;

  // Bytes this rank sent in all-to-alls since construction (for benchmarks).
  int64_t bytes_sent() const { return bytes_sent_; }

 private:
  // Element counts per peer of the rows this rank sends, and of those it receives.
  std::vector<int64_t> send_counts(const ExchangePlan& plan, int64_t width) const;
  std::vector<int64_t> recv_counts(const ExchangePlan& plan, int64_t width) const;
  // Copies row blocks between (source rank, local expert) order and (local expert, source rank)
  // order; `to_expert_major` picks the direction.
  void regroup(const ExchangePlan& plan, const Tensor& source_major, const Tensor& expert_major,
               bool to_expert_major);

  Backend& backend_;
  Communicator& group_;
  Communicator* world_;
  int64_t num_experts_;
  int64_t num_local_;
  Tensor staging_;  // [rows_received, D] in source-major order, grow-only
  int64_t bytes_sent_ = 0;
};

}  // namespace sy
