// The all-to-all token dispatcher: the TokenExchange of an expert-parallel group of P ranks.
//
// dispatch: each rank's kept rows, grouped by global expert, go to the ranks owning those
//   experts (counts first, then one block-wise all-to-all of the rows). Each (source rank,
//   local expert) block lands straight in its place in (local expert, source rank) order, so
//   that each local expert runs on one contiguous segment: no staging buffer, no copies around
//   the exchange (Communicator::all_to_all_blocks).
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
  struct Blocks {
    std::vector<PeerBlock> by_expert;   // in the sent (and returned) rows
    std::vector<PeerBlock> into_local;  // in the received (and expert) rows
  };
  // The (peer, local expert) blocks of a plan, in elements of rows `width` wide.
  Blocks blocks(const ExchangePlan& plan, int64_t width) const;
  void count_sent(const std::vector<PeerBlock>& sent, DType dtype);

  Backend& backend_;
  Communicator& group_;
  Communicator* world_;
  int64_t num_experts_;
  int64_t num_local_;
  int64_t bytes_sent_ = 0;
};

}  // namespace sy
