// Stale gradients (model/param.h, Param::GradState): the optimizer's pass does not write the grads
// back, so after a step they hold whatever it left, and the next backward must overwrite every
// element of every gradient. Checked by poisoning the grads with NaN, marking them stale, and
// requiring bitwise the gradients of a backward into zeros: a NaN left anywhere fails. A model's
// forward drops stale grads and its backward allocates them again: there every new tensor is
// NaN-poisoned instead (CpuBackend::poison_new_tensors).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "model/cpu/cpu_backend.h"
#include "model/moe/experts.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "trainer/config.h"

namespace sy {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void write_values(Backend& backend, const Tensor& t, double scale, int seed) {
  std::vector<double> values(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = scale * std::sin(0.37 * static_cast<double>(i) + seed);
  backend.write(t, std::span<const double>(values));
}

// The experts' weight gradients after one backward over rows_per_expert, starting from zeroed
// grads or from NaN-poisoned stale ones.
std::vector<std::vector<double>> experts_grads(ExpertKernel kernel,
                                               const std::vector<int64_t>& rows_per_expert,
                                               bool stale) {
  auto backend = make_cpu_backend();
  const int64_t E = static_cast<int64_t>(rows_per_expert.size()), D = 8, F = 6;
  int64_t N = 0;
  for (int64_t r : rows_per_expert) N += r;
  Experts experts;
  experts.kernel = kernel;
  experts.w1.value = backend->alloc({E, D, F}, DType::f32);
  experts.w3.value = backend->alloc({E, D, F}, DType::f32);
  experts.w2.value = backend->alloc({E, F, D}, DType::f32);
  int seed = 1;
  for (Param* p : {&experts.w1, &experts.w3, &experts.w2}) {
    write_values(*backend, p->value, 0.3, seed++);
    p->grad = backend->alloc(p->value.shape(), DType::f32);
    backend->fill(p->grad, stale ? kNaN : 0.0);
    p->grad_state = stale ? Param::GradState::stale : Param::GradState::zero;
  }
  const Tensor x = backend->alloc({N, D}, DType::f32), dout = backend->alloc({N, D}, DType::f32);
  write_values(*backend, x, 1.0, 7);
  write_values(*backend, dout, 0.5, 8);
  experts.forward(*backend, x, rows_per_expert);
  experts.backward(*backend, dout, x, rows_per_expert);
  std::vector<std::vector<double>> grads;
  for (Param* p : {&experts.w1, &experts.w3, &experts.w2}) grads.push_back(backend->read(p->grad));
  return grads;
}

TEST(StaleGrads, ExpertsOverwriteEveryExpertsGradientIncludingEmptyOnes) {
  for (ExpertKernel kernel : {ExpertKernel::cublas, ExpertKernel::grouped})
    for (const std::vector<int64_t>& rows :
         {std::vector<int64_t>{5, 0, 3}, std::vector<int64_t>{0, 4, 0},
          std::vector<int64_t>{0, 0, 0}}) {
      const auto zero = experts_grads(kernel, rows, false);
      const auto stale = experts_grads(kernel, rows, true);
      for (size_t p = 0; p < zero.size(); ++p)
        EXPECT_EQ(stale[p], zero[p]) << "kernel " << (kernel == ExpertKernel::cublas ? "cublas" : "grouped")
                                     << ", rows " << rows[0] << "," << rows[1] << "," << rows[2]
                                     << ", weight " << p;
    }
}

// Every gradient NaN and marked stale, as the optimizer's pass leaves them.
void make_grads_stale(Backend& backend, Transformer& model) {
  for (Param* p : model.params()) {
    backend.fill(p->grad, kNaN);
    p->grad_state = Param::GradState::stale;
  }
}

// One forward/backward over a fixed batch of two sequences.
void forward_backward_once(Transformer& model, const Config& config) {
  const int64_t batch = 2, T = batch * config.model.seq_len;
  std::vector<int32_t> inputs(T), targets(T);
  for (int64_t i = 0; i < T; ++i) {
    inputs[i] = static_cast<int32_t>((i * 7 + i * i) % config.model.vocab_size);
    targets[i] = static_cast<int32_t>((i * 5 + 1) % config.model.vocab_size);
  }
  model.forward_backward(inputs, targets, batch, true, 1.0);
}

// Every parameter's gradient after one forward/backward of a small model, from zeroed grads or
// from NaN-poisoned stale ones.
std::vector<std::vector<double>> model_grads(const Config& config, bool stale) {
  auto backend = std::make_unique<CpuBackend>();
  backend->poison_new_tensors(stale);
  TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
  LocalExchange exchange(*backend, config.moe.num_experts > 0 ? config.moe.num_experts : 1);
  Transformer model(*backend, options, config.moe.num_experts > 0 ? &exchange : nullptr);
  model.init_parameters(3);
  model.zero_grads();
  if (stale) make_grads_stale(*backend, model);
  forward_backward_once(model, config);
  std::vector<std::vector<double>> grads;
  for (Param* p : model.params()) grads.push_back(backend->read(p->grad));
  return grads;
}

TEST(StaleGrads, ABackwardOverwritesEveryParametersGradient) {
  Config moe;
  moe.model = {61, 12, 16, 2, 2, 24, true};  // V, S, D, L, H, F, tie
  moe.moe.num_experts = 4;
  moe.moe.routing.top_k = 2;
  moe.moe.expert_hidden = 10;
  moe.moe.capacity_factor = 0.5;  // drops
  Config dense = moe;
  dense.moe.num_experts = 0;
  dense.model.tie_embeddings = false;  // the embedding's scatter-add into a stale grad
  for (const Config& config : {moe, dense}) {
    const auto zero = model_grads(config, false);
    const auto stale = model_grads(config, true);
    ASSERT_EQ(stale.size(), zero.size());
    for (size_t p = 0; p < zero.size(); ++p)
      EXPECT_EQ(stale[p], zero[p]) << (config.moe.num_experts ? "moe" : "dense") << ", param " << p;
  }
}

// Transformer::set_grads_finished (the gradient all-reduce started during backward): each
// block's parameters are handed over once, from the last block down, and the gradient each holds
// then is its final one, bitwise, starting from NaN-poisoned stale grads; the embedding, final
// norm and head are not handed over.
TEST(StaleGrads, HandedOverGradientsAreFinal) {
  Config config;
  config.model = {61, 12, 16, 3, 2, 24, true};  // V, S, D, L, H, F, tie
  config.moe.num_experts = 4;
  config.moe.routing.top_k = 1;
  config.moe.expert_hidden = 10;
  config.moe.capacity_factor = 0.25;  // drops: an expert may get no row
  auto backend = std::make_unique<CpuBackend>();
  backend->poison_new_tensors(true);
  TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
  LocalExchange exchange(*backend, config.moe.num_experts);
  Transformer model(*backend, options, &exchange);
  model.init_parameters(3);
  model.zero_grads();
  make_grads_stale(*backend, model);
  std::vector<std::pair<const Param*, std::vector<double>>> handed;
  std::vector<size_t> group_sizes;
  model.set_grads_finished([&](std::span<Param* const> params) {
    group_sizes.push_back(params.size());
    for (Param* p : params) handed.emplace_back(p, backend->read(p->grad));
  });
  forward_backward_once(model, config);
  model.set_grads_finished(nullptr);

  const std::vector<Param*> all = model.params();  // embedding, blocks in order, final norm
  ASSERT_EQ(group_sizes.size(), 3u);
  const size_t per_block = group_sizes[0];
  ASSERT_EQ(handed.size(), 3 * per_block);
  ASSERT_EQ(all.size(), 3 * per_block + 2);
  for (size_t i = 0; i < handed.size(); ++i) {
    const size_t block = 2 - i / per_block;  // the last block first
    EXPECT_EQ(handed[i].first, all[1 + block * per_block + i % per_block]) << "hand-over " << i;
    EXPECT_EQ(handed[i].second, backend->read(handed[i].first->grad)) << handed[i].first->path;
  }
}

}  // namespace
}  // namespace sy
