// The token exchange of a world of one (expert_parallel = 1): every expert is local, so dispatch
// and combine are copies. Multi-rank exchanges implement the same interface.
#pragma once
#include "model/backend.h"
#include "model/moe/token_exchange.h"

namespace sy {

class LocalExchange final : public TokenExchange {
 public:
  LocalExchange(Backend& backend, int64_t num_experts)
      : backend_(backend), num_experts_(num_experts) {}

  int64_t num_experts() const override { return num_experts_; }
  int64_t first_local_expert() const override { return 0; }
  int64_t num_local_experts() const override { return num_experts_; }
  bool moves_rows() const override { return false; }

  ExchangePlan plan(const std::vector<int64_t>& send_rows_per_expert) override;
  void dispatch(const ExchangePlan& plan, const Tensor& received, const Tensor& sent) override;
  void combine(const ExchangePlan& plan, const Tensor& returned,
               const Tensor& expert_rows) override;
  void sum_over_world(std::vector<int64_t>&) override {}  // one rank: the sum is its own counts

 private:
  Backend& backend_;
  int64_t num_experts_;
};

}  // namespace sy
