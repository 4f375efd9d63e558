// Optimizers, LR schedule and clipping against hand-computed values (SPEC.md section 4).
// The AdamW numbers come from torch.optim.AdamW's single-tensor algorithm replayed in double
// precision (Python, step by step):
//   p *= 1 - lr*wd;  m += (g - m)*(1 - b1);  v = v*b2 + (1 - b2)*g*g
//   p -= lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps)
// Params are fp32, so values are compared to 1e-6.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numbers>
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#include "model/rng.h"
#include "optim/clip.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"

namespace sy {
namespace {

constexpr double kTol = 1e-6;

Tensor make_tensor(Backend& backend, const Shape& shape, const std::vector<double>& values) {
  Tensor t = backend.alloc(shape, DType::f32);
  backend.write(t, std::span<const double>(values));
  return t;
}

Param make_param(Backend& backend, const std::string& path, const Shape& shape,
                 const std::vector<double>& values) {
  Param param;
  param.path = path;
  param.value = make_tensor(backend, shape, values);
  param.grad = backend.zeros(shape, DType::f32);
  param.decay = shape.size() >= 2;
  return param;
}

void expect_near(const std::vector<double>& actual, const std::vector<double>& expected,
                 const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], kTol) << what << "[" << i << "]";
}

OptimizerSettings adamw_config() {
  OptimizerSettings settings;
  settings.kind = OptimizerKind::adamw;
  settings.beta1 = 0.9;
  settings.beta2 = 0.95;
  settings.eps = 1e-8;
  settings.weight_decay = 0.1;
  return settings;
}

// Three steps with changing grads and lr; one grad entry is 0 on the first step.
const std::vector<double> kLrs = {0.01, 0.02, 0.005};
const std::vector<std::vector<double>> kGradW = {
    {0.1, -0.2, 0.3, 0.0}, {-0.05, 0.4, 0.1, 0.2}, {0.2, 0.1, -0.3, 0.05}};
const std::vector<std::vector<double>> kGradB = {
    {0.5, -0.1, 0.0}, {0.2, 0.2, -1.0}, {-0.4, 0.3, 0.01}};

void run_adamw_steps(Backend& backend, Optimizer& optimizer, Param& w, Param& b, int first,
                     int last) {
  std::vector<Param*> params = {&w, &b};
  for (int s = first; s < last; ++s) {
    backend.write(w.grad, std::span<const double>(kGradW[s]));
    backend.write(b.grad, std::span<const double>(kGradB[s]));
    optimizer.step(backend, params, kLrs[s]);
  }
}

TEST(AdamW, MatchesTorchThreeSteps) {
  auto backend = make_cpu_backend();
  Param w = make_param(*backend, "layers/0/attn/wq", {2, 2}, {0.5, -1.0, 0.25, 2.0});
  Param b = make_param(*backend, "final_norm", {3}, {0.1, -0.3, 1.5});  // 1-D: no decay
  auto optimizer = make_optimizer(adamw_config());
  EXPECT_TRUE(optimizer->state_tensors().empty());  // moments come with the first step

  run_adamw_steps(*backend, *optimizer, w, b, 0, 3);
  EXPECT_EQ(optimizer->step_count(), 3);

  expect_near(backend->read(w.value),
              {0.4796683114884602, -0.9958786863839105, 0.22131854234990478, 1.9747538053786922},
              "w");
  expect_near(backend->read(b.value), {0.07097686249804401, -0.30062629785185896, 1.517544439673444},
              "b");

  const auto state = optimizer->state_tensors();
  ASSERT_EQ(state.size(), 4u);
  EXPECT_EQ(state[0].first, "exp_avg/layers/0/attn/wq");
  EXPECT_EQ(state[1].first, "exp_avg_sq/layers/0/attn/wq");
  EXPECT_EQ(state[2].first, "exp_avg/final_norm");
  EXPECT_EQ(state[3].first, "exp_avg_sq/final_norm");
  EXPECT_EQ(state[0].second.shape(), (Shape{2, 2}));
  EXPECT_EQ(state[0].second.dtype(), DType::f32);
  expect_near(backend->read(state[0].second), {0.0236, 0.0298, 0.0033, 0.023}, "exp_avg w");
  expect_near(backend->read(state[1].second), {0.00257, 0.009905, 0.00903625, 0.002025},
              "exp_avg_sq w");
  expect_near(backend->read(state[2].second), {0.0185, 0.0399, -0.089}, "exp_avg b");
  expect_near(backend->read(state[3].second), {0.02118125, 0.00685125, 0.047505}, "exp_avg_sq b");
}

// Restoring the state and step count into a fresh optimizer continues the same trajectory.
TEST(AdamW, ResumeFromStateTensors) {
  auto backend = make_cpu_backend();
  Param w = make_param(*backend, "w", {2, 2}, {0.5, -1.0, 0.25, 2.0});
  Param b = make_param(*backend, "b", {3}, {0.1, -0.3, 1.5});
  auto first = make_optimizer(adamw_config());
  run_adamw_steps(*backend, *first, w, b, 0, 2);

  auto second = make_optimizer(adamw_config());
  std::vector<Param*> params = {&w, &b};
  second->init_state(*backend, params);
  const auto saved = first->state_tensors();
  const auto restored = second->state_tensors();
  ASSERT_EQ(saved.size(), restored.size());
  for (size_t i = 0; i < saved.size(); ++i) {
    ASSERT_EQ(saved[i].first, restored[i].first);
    backend->copy(restored[i].second, saved[i].second);
  }
  second->set_step_count(first->step_count());
  run_adamw_steps(*backend, *second, w, b, 2, 3);

  expect_near(backend->read(w.value),
              {0.4796683114884602, -0.9958786863839105, 0.22131854234990478, 1.9747538053786922},
              "w");
  expect_near(backend->read(b.value), {0.07097686249804401, -0.30062629785185896, 1.517544439673444},
              "b");
}

TEST(Sgd, PlainSteps) {
  auto backend = make_cpu_backend();
  OptimizerSettings train;
  train.kind = OptimizerKind::sgd;
  train.weight_decay = 0.1;  // SGD ignores it
  Param p = make_param(*backend, "w", {1, 2}, {1.0, -2.0});
  std::vector<Param*> params = {&p};
  auto optimizer = make_optimizer(train);

  backend->write(p.grad, std::span<const double>(std::vector<double>{0.5, 0.25}));
  optimizer->step(*backend, params, 0.1);
  expect_near(backend->read(p.value), {0.95, -2.025}, "after step 1");
  backend->write(p.grad, std::span<const double>(std::vector<double>{-1.0, 2.0}));
  optimizer->step(*backend, params, 0.01);
  expect_near(backend->read(p.value), {0.96, -2.045}, "after step 2");
  EXPECT_EQ(optimizer->step_count(), 2);
  EXPECT_TRUE(optimizer->state_tensors().empty());
}

// A name that is not an optimizer stops at the config (test_config); here, a kind out of range.
TEST(Optimizer, UnknownKind) {
  OptimizerSettings train;
  train.kind = static_cast<OptimizerKind>(7);
  EXPECT_THROW(make_optimizer(train), std::invalid_argument);
}

// ---- LR schedule -----------------------------------------------------------------------------------

TEST(LrSchedule, WarmupThenCosine) {
  LrSchedule train;
  train.lr = 1e-2;
  train.min_lr = 1e-3;
  train.warmup_steps = 5;
  train.steps = 25;
  EXPECT_NEAR(lr_at(train, 0), 2e-3, 1e-15);    // warmup start: lr * 1/5
  EXPECT_NEAR(lr_at(train, 2), 6e-3, 1e-15);
  EXPECT_NEAR(lr_at(train, 4), 1e-2, 1e-15);    // warmup end: peak
  EXPECT_NEAR(lr_at(train, 5), 1e-2, 1e-15);    // cosine start: cos(0)
  EXPECT_NEAR(lr_at(train, 15), 5.5e-3, 1e-15); // halfway: (lr + min_lr) / 2
  EXPECT_NEAR(lr_at(train, 24), 0.0010554024673218806, 1e-15);  // last: min + 0.45*(1+cos(0.95 pi))
  EXPECT_NEAR(lr_at(train, 25), 1e-3, 1e-15);   // past the end: min_lr
  EXPECT_NEAR(lr_at(train, 100), 1e-3, 1e-15);
}

TEST(LrSchedule, NoWarmup) {
  LrSchedule train;
  train.lr = 1e-2;
  train.min_lr = 1e-3;
  train.warmup_steps = 0;
  train.steps = 10;
  EXPECT_NEAR(lr_at(train, 0), 1e-2, 1e-15);
  EXPECT_NEAR(lr_at(train, 5), 5.5e-3, 1e-15);
}

TEST(LrSchedule, AllWarmupKeepsPeak) {
  LrSchedule train;
  train.lr = 1e-2;
  train.min_lr = 1e-3;
  train.warmup_steps = 4;
  train.steps = 4;
  EXPECT_NEAR(lr_at(train, 0), 2.5e-3, 1e-15);
  EXPECT_NEAR(lr_at(train, 3), 1e-2, 1e-15);
  EXPECT_NEAR(lr_at(train, 4), 1e-2, 1e-15);
}

// The default decay (decay_steps 0) is the formula every earlier run used, to the bit, so that
// their checkpoints resume on the same learning rates.
TEST(LrSchedule, DefaultIsTheWholeRunCosineBitwise) {
  LrSchedule train;
  train.lr = 3e-3;
  train.min_lr = 3e-4;
  train.warmup_steps = 7;
  train.steps = 113;
  for (int64_t s = 7; s < 130; ++s) {
    const double progress = std::min(1.0, static_cast<double>(s - 7) / int64_t{106});
    const double before =
        3e-4 + 0.5 * (3e-3 - 3e-4) * (1.0 + std::cos(std::numbers::pi * progress));
    EXPECT_EQ(lr_at(train, s), before) << s;
  }
}

// Warmup-stable-decay: the peak until the last decay_steps, which decay along the chosen shape.
TEST(LrSchedule, WarmupStableDecay) {
  LrSchedule train;
  train.lr = 1e-2;
  train.min_lr = 1e-3;
  train.warmup_steps = 5;
  train.steps = 45;
  train.decay_steps = 20;  // steps 25..44 decay; 5..24 hold the peak
  for (LrDecay decay : {LrDecay::cosine, LrDecay::linear, LrDecay::one_minus_sqrt}) {
    train.decay = decay;
    EXPECT_NEAR(lr_at(train, 0), 2e-3, 1e-15);
    EXPECT_EQ(lr_at(train, 5), 1e-2);
    EXPECT_EQ(lr_at(train, 24), 1e-2);           // the stable phase's last step
    EXPECT_NEAR(lr_at(train, 25), 1e-2, 1e-15);  // the decay's first step: progress 0
    EXPECT_NEAR(lr_at(train, 45), 1e-3, 1e-15);  // past the end: min_lr
    for (int64_t s = 26; s < 45; ++s) EXPECT_LT(lr_at(train, s), lr_at(train, s - 1)) << s;
  }
  train.decay = LrDecay::linear;
  EXPECT_NEAR(lr_at(train, 35), 5.5e-3, 1e-15);  // halfway: (lr + min_lr) / 2
  EXPECT_NEAR(lr_at(train, 30), 1e-2 - 9e-3 * 0.25, 1e-15);
  train.decay = LrDecay::one_minus_sqrt;
  EXPECT_NEAR(lr_at(train, 30), 1e-2 - 9e-3 * 0.5, 1e-15);  // sqrt(1/4)
  EXPECT_NEAR(lr_at(train, 35), 1e-2 - 9e-3 * std::sqrt(0.5), 1e-15);
  train.decay = LrDecay::cosine;
  EXPECT_NEAR(lr_at(train, 35), 5.5e-3, 1e-15);
}

// A decay longer than the steps after the warmup spans those steps (a shortened run keeps its
// shape): the same as decay_steps 0.
TEST(LrSchedule, DecayLongerThanTheRunSpansIt) {
  LrSchedule whole, longer;
  whole.warmup_steps = longer.warmup_steps = 3;
  whole.steps = longer.steps = 12;
  longer.decay_steps = 1000;
  for (LrDecay decay : {LrDecay::cosine, LrDecay::linear, LrDecay::one_minus_sqrt}) {
    whole.decay = longer.decay = decay;
    for (int64_t s = 0; s < 14; ++s) EXPECT_EQ(lr_at(longer, s), lr_at(whole, s)) << s;
  }
}

// The schedule in words: the phases that exist, with their step ranges.
TEST(LrSchedule, DescribedWithItsPhases) {
  LrSchedule s;  // lr 3e-3, min_lr 3e-4, warmup 50, steps 800, cosine over every step after
  EXPECT_EQ(describe(s),
            "warmup over steps [0, 50) to 0.003, cosine decay over [50, 800) to 0.0003");
  s.decay = LrDecay::one_minus_sqrt;
  s.decay_steps = 160;
  EXPECT_EQ(describe(s),
            "warmup over steps [0, 50) to 0.003, held over [50, 640), 1-sqrt decay "
            "over [640, 800) to 0.0003");
  s.warmup_steps = 0;
  s.decay = LrDecay::linear;
  EXPECT_EQ(describe(s),
            "held at 0.003 over steps [0, 640), linear decay over [640, 800) to 0.0003");
  s.decay_steps = 0;
  EXPECT_EQ(describe(s), "linear decay from 0.003 over steps [0, 800) to 0.0003");
  s.warmup_steps = 900;  // longer than the run: the LR rises throughout
  EXPECT_EQ(describe(s), "warmup over steps [0, 800) to 0.003 (reached at step 900)");
}

// ---- clipping --------------------------------------------------------------------------------------

struct ClipFixture : testing::Test {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Param shared, expert;
  std::vector<Param*> params;

  void SetUp() override {
    shared = make_param(*backend, "w", {1, 2}, {0.0, 0.0});
    expert = make_param(*backend, "experts/w1", {1}, {0.0});
    expert.is_expert = true;
    backend->write(shared.grad, std::span<const double>(std::vector<double>{3.0, 4.0}));
    backend->write(expert.grad, std::span<const double>(std::vector<double>{12.0}));
    params = {&shared, &expert};
  }
};

TEST_F(ClipFixture, NormSquares) {
  const GradSquares squares = grad_squares(*backend, params);
  EXPECT_DOUBLE_EQ(squares.shared, 25.0);
  EXPECT_DOUBLE_EQ(squares.expert, 144.0);
  EXPECT_DOUBLE_EQ(global_grad_norm_squared(*backend, params), 169.0);
  EXPECT_DOUBLE_EQ(global_grad_norm(*backend, params), 13.0);
  // A finish that stands in for a reduction: two expert-parallel ranks with the same expert grads.
  auto two_ranks = [](const GradSquares& s) { return s.shared + 2.0 * s.expert; };
  EXPECT_DOUBLE_EQ(global_grad_norm(*backend, params, two_ranks), std::sqrt(313.0));
}

TEST_F(ClipFixture, ClipsToMaxNorm) {
  const double norm = global_grad_norm(*backend, params);
  const double factor = clip_gradients(*backend, params, norm, 1.0);
  EXPECT_DOUBLE_EQ(factor, 1.0 / (13.0 + 1e-6));
  expect_near(backend->read(shared.grad), {3.0 * factor, 4.0 * factor}, "shared grad");
  expect_near(backend->read(expert.grad), {12.0 * factor}, "expert grad");
  EXPECT_NEAR(global_grad_norm(*backend, params), 1.0, 1e-6);
}

TEST_F(ClipFixture, NoClipBelowMaxOrWhenOff) {
  EXPECT_EQ(clip_gradients(*backend, params, 13.0, 100.0), 1.0);
  EXPECT_EQ(clip_gradients(*backend, params, 13.0, 0.0), 1.0);  // 0: clipping off
  expect_near(backend->read(shared.grad), {3.0, 4.0}, "shared grad");
  expect_near(backend->read(expert.grad), {12.0}, "expert grad");
}

TEST(ClipFactor, Values) {
  EXPECT_DOUBLE_EQ(clip_factor(13.0, 1.0), 1.0 / (13.0 + 1e-6));
  EXPECT_EQ(clip_factor(13.0, 100.0), 1.0);
  EXPECT_EQ(clip_factor(13.0, 0.0), 1.0);  // clipping off
  EXPECT_EQ(clip_factor(std::nan(""), 1.0), 1.0);  // grads left alone; the caller checks the norm
}

// ---- the fused pass (Backend::fused_adamw_step, grad_norm_squares) --------------------------------
// On the CPU the pass is Backend's default, the per-tensor ops in order; these tests pin the
// optimizer's use of it (decay and expert flags, moments per param, the clip factor, the compute
// copies, the zeroed grads) against those ops called one by one. tests/test_cuda_optim.cpp holds
// the CUDA multi-tensor pass to the same ops.

std::vector<double> normals(uint64_t key, int64_t n, double scale) {
  CounterRng rng(key);
  std::vector<double> v(n);
  for (double& x : v) x = scale * rng.normal();
  return v;
}

// Params of odd sizes with mixed decay and expert flags; every other one has a compute copy of
// its own (a distinct buffer, as in bf16 training).
std::vector<Param> odd_params(Backend& backend) {
  const std::vector<Shape> shapes = {{1}, {3}, {7, 3}, {1023}, {4, 257}, {5, 2, 3}};
  std::vector<Param> params;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const int64_t n = shape_numel(shapes[i]);
    Param p = make_param(backend, "p" + std::to_string(i), shapes[i], normals(100 + i, n, 0.5));
    p.is_expert = i % 3 == 2;
    if (i % 2 == 1) p.compute = backend.zeros(shapes[i], DType::f32);
    params.push_back(std::move(p));
  }
  return params;
}

std::vector<Param*> pointers(std::vector<Param>& params) {
  std::vector<Param*> list;
  for (Param& p : params) list.push_back(&p);
  return list;
}

TEST(FusedPass, AdamWStepEqualsThePerTensorOps) {
  auto backend = make_cpu_backend();
  std::vector<Param> fused = odd_params(*backend), each = odd_params(*backend);
  std::vector<Param*> fused_list = pointers(fused);
  std::vector<Tensor> m, v;  // the per-tensor path's moments
  for (const Param& p : each) {
    m.push_back(backend->zeros(p.value.shape(), DType::f32));
    v.push_back(backend->zeros(p.value.shape(), DType::f32));
  }
  OptimizerSettings train = adamw_config();
  auto optimizer = make_optimizer(train);
  const std::vector<double> factors = {1.0, 0.25, 0.6};  // clip off, then on
  for (int step = 1; step <= 3; ++step) {
    const double lr = 0.01 * step, factor = factors[step - 1];
    for (size_t i = 0; i < fused.size(); ++i) {
      const auto g = normals(1000 * step + i, fused[i].value.numel(), 0.1);
      backend->write(fused[i].grad, std::span<const double>(g));
      backend->write(each[i].grad, std::span<const double>(g));
    }
    optimizer->step(*backend, fused_list, lr, factor);
    for (size_t i = 0; i < each.size(); ++i) {
      Param& p = each[i];
      if (factor != 1.0) backend->scale(p.grad, factor);
      backend->adamw_update(p.value, p.grad, m[i], v[i], lr, train.beta1, train.beta2, train.eps,
                            p.decay ? train.weight_decay : 0.0, step);
      if (p.compute.defined()) backend->copy(p.compute, p.value);
    }
    const auto state = optimizer->state_tensors();
    for (size_t i = 0; i < fused.size(); ++i) {
      const std::string what = fused[i].path + " step " + std::to_string(step);
      EXPECT_EQ(backend->read(fused[i].value), backend->read(each[i].value)) << what;
      EXPECT_EQ(backend->read(state[2 * i].second), backend->read(m[i])) << what;
      EXPECT_EQ(backend->read(state[2 * i + 1].second), backend->read(v[i])) << what;
      if (fused[i].compute.defined()) {
        EXPECT_EQ(backend->read(fused[i].compute), backend->read(fused[i].value)) << what;
      }
      // The grads are left for the next backward to overwrite (tests/test_stale_grads.cpp).
      EXPECT_EQ(fused[i].grad_state, Param::GradState::stale) << what;
    }
  }
}

TEST(FusedPass, GradNormSquaresSplitsByExpert) {
  auto backend = make_cpu_backend();
  std::vector<Param> params = odd_params(*backend);
  double shared = 0, expert = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    backend->write(params[i].grad,
                   std::span<const double>(normals(7 + i, params[i].grad.numel(), 1.0)));
    (params[i].is_expert ? expert : shared) += backend->sum_squares(params[i].grad);
  }
  const GradSquares squares = grad_squares(*backend, pointers(params));
  EXPECT_EQ(squares.shared, shared);
  EXPECT_EQ(squares.expert, expert);
  EXPECT_GT(squares.expert, 0.0);
}

TEST(FusedPass, SgdLeavesGradsZeroAndComputeFresh) {
  auto backend = make_cpu_backend();
  std::vector<Param> params = odd_params(*backend);
  std::vector<Param*> list = pointers(params);
  OptimizerSettings train;
  train.kind = OptimizerKind::sgd;
  auto optimizer = make_optimizer(train);
  std::vector<std::vector<double>> expected;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto g = normals(50 + i, params[i].value.numel(), 1.0);
    backend->write(params[i].grad, std::span<const double>(g));
    auto p = backend->read(params[i].value);
    // In f32, as the backend computes: p -= lr * (g * factor).
    for (size_t j = 0; j < p.size(); ++j) {
      const float scaled = static_cast<float>(g[j]) * 0.5f;
      p[j] = static_cast<float>(p[j]) - 0.1f * scaled;
    }
    expected.push_back(p);
  }
  optimizer->step(*backend, list, 0.1, 0.5);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(backend->read(params[i].value), expected[i]) << params[i].path;
    if (params[i].compute.defined()) {
      EXPECT_EQ(backend->read(params[i].compute), expected[i]) << params[i].path;
    }
    const auto grad = backend->read(params[i].grad);
    EXPECT_EQ(grad, std::vector<double>(grad.size(), 0.0)) << params[i].path;
  }
}

}  // namespace
}  // namespace sy
