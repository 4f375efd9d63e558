#include "optim/optimizer.h"

#include <map>
#include <stdexcept>

namespace sy {

namespace {

void check_param(const Param& param) {
  if (!param.grad.defined()) throw std::runtime_error("optimizer: " + param.path + " has no grad");
  expect_shape(param.grad, param.value.shape(), "optimizer: grad of ", param.path);
}

class AdamW : public Optimizer {
 public:
  explicit AdamW(const OptimizerSettings& settings)
      : beta1_(settings.beta1), beta2_(settings.beta2), eps_(settings.eps),
        weight_decay_(settings.weight_decay) {}

  using Optimizer::step;
  void step(Backend& backend, std::vector<Param*>& params, double lr,
            double grad_scale) override {
    init_state(backend, params);
    ++step_count_;
    std::vector<Tensor> exp_avgs, exp_avg_sqs;
    exp_avgs.reserve(params.size());
    exp_avg_sqs.reserve(params.size());
    for (const Param* param : params) {
      check_param(*param);
      const Moments& moments = moments_.at(param->path);
      exp_avgs.push_back(moments.exp_avg);
      exp_avg_sqs.push_back(moments.exp_avg_sq);
    }
    AdamWStep hp;
    hp.lr = lr;
    hp.beta1 = beta1_;
    hp.beta2 = beta2_;
    hp.eps = eps_;
    hp.weight_decay = weight_decay_;  // the backend applies it where Param::decay
    hp.step = step_count_;
    hp.grad_scale = grad_scale;
    hp.discard_grads = true;  // the next backward overwrites them (Param::GradState::stale)
    backend.fused_adamw_step(params, exp_avgs, exp_avg_sqs, hp);
    for (Param* param : params) param->grad_state = Param::GradState::stale;
  }

  // Moments are keyed by path, so a param seen for the first time later still gets its own.
  void init_state(Backend& backend, const std::vector<Param*>& params) override {
    for (const Param* param : params) {
      auto found = moments_.find(param->path);
      if (found != moments_.end()) {
        expect_shape(found->second.exp_avg, param->value.shape(), "optimizer state of ",
                     param->path);
        continue;
      }
      const Shape& shape = param->value.shape();
      const DType dtype = host_dtype(param->value.dtype());  // f32 beside f32_split masters
      moments_[param->path] = {backend.zeros(shape, dtype), backend.zeros(shape, dtype)};
      order_.push_back(param->path);
    }
  }

  std::vector<std::pair<std::string, Tensor>> state_tensors() override {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& path : order_) {
      const Moments& moments = moments_.at(path);
      tensors.emplace_back("exp_avg/" + path, moments.exp_avg);
      tensors.emplace_back("exp_avg_sq/" + path, moments.exp_avg_sq);
    }
    return tensors;
  }

 private:
  struct Moments {
    Tensor exp_avg;
    Tensor exp_avg_sq;
  };

  double beta1_, beta2_, eps_, weight_decay_;
  std::map<std::string, Moments> moments_;
  std::vector<std::string> order_;  // paths in the order first seen, for a stable checkpoint
};

// Per tensor: SGD is not on a path that needs the fused pass.
class Sgd : public Optimizer {
 public:
  using Optimizer::step;
  void step(Backend& backend, std::vector<Param*>& params, double lr,
            double grad_scale) override {
    ++step_count_;
    for (Param* param : params) {
      check_param(*param);
      if (grad_scale != 1.0) backend.scale(param->grad, grad_scale);
      backend.sgd_update(param->value, param->grad, lr);
      if (param->compute.defined() && param->compute.data() != param->value.data())
        backend.copy(param->compute, param->value);
      backend.fill(param->grad, 0.0);
      param->grad_state = Param::GradState::zero;
    }
  }
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings) {
  switch (settings.kind) {
    case OptimizerKind::adamw: return std::make_unique<AdamW>(settings);
    case OptimizerKind::sgd: return std::make_unique<Sgd>();
  }
  throw std::invalid_argument("make_optimizer: optimizer kind " +
                              std::to_string(static_cast<int>(settings.kind)) + " does not exist");
}

}  // namespace sy
