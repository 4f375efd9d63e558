// Optimizers: AdamW (torch.optim.AdamW semantics, SPEC.md section 4) and plain SGD.
// The per-element math lives in the Backend (adamw_update, sgd_update); an optimizer only keeps
// the state and the step count.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#include "trainer/config.h"

namespace sy {

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // One update of every param from its grad, at learning rate `lr`; counts the step.
  virtual void step(Backend& backend, std::vector<Param*>& params, double lr) = 0;

  // Allocates the state of every param now (zeros) if not yet done, so that a checkpoint can be
  // loaded into state_tensors() before the first step.
  virtual void init_state(Backend&, const std::vector<Param*>&) {}

  // The state to checkpoint, named "exp_avg/<path>" and "exp_avg_sq/<path>" (SPEC.md section 6);
  // the tensors are the optimizer's own, so writing into them restores the state.
  virtual std::vector<std::pair<std::string, Tensor>> state_tensors() { return {}; }

  // Steps taken so far (AdamW's bias correction uses step_count() after the increment).
  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t count) { step_count_ = count; }

 protected:
  int64_t step_count_ = 0;
};

// The optimizer named by train.optimizer ("adamw" or "sgd"); throws std::invalid_argument otherwise.
std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& train);

}  // namespace sy
