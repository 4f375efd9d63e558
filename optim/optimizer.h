// Optimizers: AdamW (torch.optim.AdamW semantics, SPEC.md section 4) and plain SGD.
// The per-element math lives in the Backend (fused_adamw_step, sgd_update); an optimizer only
// keeps the state and the step count.
//
// The invariant that the training loops rely on: after Optimizer::step, every param's grad is
// ready for the next backward (stale: the next backward overwrites it, Param::GradState; SGD:
// zero) and every Param::compute copy holds the param's new value. The loops therefore zero the
// grads only before their first step and do not call Transformer::refresh_compute_weights()
// after a step. On CUDA, AdamW does the clip scale, the update and the bf16 refresh in one pass
// over the memory, without writing the grads back (Backend::fused_adamw_step, docs/cuda.md).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/param.h"

namespace sy {

// train.optimizer (YAML adamw | sgd; trainer/config.cpp holds the names).
enum class OptimizerKind { adamw, sgd };

// What an optimizer is built from (the trainer fills it from train.*, trainer/config.h).
struct OptimizerSettings {
  OptimizerKind kind = OptimizerKind::adamw;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // AdamW's decoupled decay, on the params with Param::decay
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // One update of every param from grad * grad_scale at learning rate `lr` (grad_scale: the clip
  // factor of optim/clip.h, applied as clip_gradients would); counts the step. Leaves every grad
  // stale (Param::GradState: the next backward overwrites it) or zero, and every compute copy
  // refreshed (the invariant above).
  virtual void step(Backend& backend, std::vector<Param*>& params, double lr,
                    double grad_scale) = 0;
  // The same with grads that are already clipped, or not to be clipped.
  void step(Backend& backend, std::vector<Param*>& params, double lr) {
    step(backend, params, lr, 1.0);
  }

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

// The optimizer of settings.kind.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings);

}  // namespace sy
