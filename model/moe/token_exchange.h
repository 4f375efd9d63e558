// The seam between routing and the experts. The MoE layer hands over its kept assignments,
// grouped by global expert, and gets back the experts' outputs in the same order; where the
// experts live (this rank or others in the expert-parallel group) is the exchange's business.
// parallel/ implements it over a Communicator; a world of one runs the same code path.
#pragma once
#include <cstdint>
#include <vector>

#include "model/tensor.h"

namespace sy {

// The row counts of one layer's exchange, decided once per forward and reused by backward
// (the gradients travel the same ways back).
struct ExchangePlan {
  std::vector<int64_t> send_rows_per_expert;   // [E] rows this rank sends to each global expert
  std::vector<int64_t> recv_rows;              // [P * E_local] rows from EP peer p for local expert j at p*E_local + j
  std::vector<int64_t> rows_per_local_expert;  // [E_local] rows each local expert runs on
  int64_t rows_sent = 0;
  int64_t rows_received = 0;
  // The most rows this layer can ever receive (set by the MoE layer from T, K, P and the
  // capacity), so that the exchange sizes its buffers once.
  int64_t max_rows_received = 0;
};

class TokenExchange {
 public:
  virtual ~TokenExchange() = default;
  virtual int64_t num_experts() const = 0;         // E, global
  virtual int64_t first_local_expert() const = 0;
  virtual int64_t num_local_experts() const = 0;

  // False when every expert is here (one rank holds them all): dispatch and combine would then
  // only copy the rows in the same order, so the MoE layer hands the experts its own rows and
  // calls neither (plan still runs).
  virtual bool moves_rows() const { return true; }
  // Exchanges the counts: the only host synchronisation of an MoE layer.
  virtual ExchangePlan plan(const std::vector<int64_t>& send_rows_per_expert) = 0;
  // sent [rows_sent, D], grouped by global expert -> received [rows_received, D], grouped by
  // local expert and within one by source rank. Backward of combine uses the same movement.
  virtual void dispatch(const ExchangePlan& plan, const Tensor& received, const Tensor& sent) = 0;
  // The reverse movement: expert_rows [rows_received, D] -> returned [rows_sent, D].
  virtual void combine(const ExchangePlan& plan, const Tensor& returned,
                       const Tensor& expert_rows) = 0;
  // Sums per-expert counts over every rank of the world (the routing groups of one micro-step),
  // in place: global-batch load balancing. Collective.
  virtual void sum_over_world(std::vector<int64_t>& counts) = 0;
};

}  // namespace sy
