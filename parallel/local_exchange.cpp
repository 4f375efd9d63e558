#include "parallel/local_exchange.h"

namespace sy {

ExchangePlan LocalExchange::plan(const std::vector<int64_t>& send_rows_per_expert) {
  ExchangePlan plan;
  plan.send_rows_per_expert = send_rows_per_expert;
  plan.recv_rows = send_rows_per_expert;
  plan.rows_per_local_expert = send_rows_per_expert;
  for (int64_t rows : send_rows_per_expert) plan.rows_sent += rows;
  plan.rows_received = plan.rows_sent;
  return plan;
}

void LocalExchange::dispatch(const ExchangePlan& plan, const Tensor& received,
                             const Tensor& sent) {
  if (plan.rows_sent > 0) backend_.copy(received, sent);
}

void LocalExchange::combine(const ExchangePlan& plan, const Tensor& returned,
                            const Tensor& expert_rows) {
  if (plan.rows_sent > 0) backend_.copy(returned, expert_rows);
}

}  // namespace sy
