// train.recompute and the shared backward workspace (model/buffers.h, docs/cuda.md "Memory"):
// rebuilding activations in backward, or taking scratch from one buffer set shared by all layers,
// changes which memory holds a value, never the arithmetic. So every mode must give bitwise the
// loss and the gradients of storing everything, for dense, MoE and mixed models, on both
// attention kernels, across repeated steps (buffers reused). (The bf16 model's fp32 router copy of
// u, made again in backward, is covered on a GPU by tests/test_cuda_model.cpp.)
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "trainer/config.h"

namespace sy {
namespace {

struct Case {
  std::string name;
  bool moe;                 // false: a dense model
  MoeLayers layers;         // moe.layers
  AttentionKernel kernel;   // model.attention_kernel
  double capacity_factor;   // > 0: drops (the routing must be the stored one)
  DType dtype;              // compute (and master) dtype
  int64_t shared_expert_hidden = 0;  // moe.shared_expert_hidden
  int64_t kv_heads = 0;              // model.n_kv_heads
  QkNorm qk_norm = QkNorm::none;     // model.qk_norm
  int64_t head_dim = 0;              // model.head_dim
};

struct Result {
  std::vector<double> losses;
  std::vector<std::vector<double>> grads;  // [param][element], after all steps
};

Result run(const Case& c, Recompute recompute) {
  auto backend = make_cpu_backend();
  Config config;
  config.model = {61, 12, 16, 3, 2, 24, false};  // V, S, D, L, H, F, tie
  config.model.attention_kernel = c.kernel;
  config.model.n_kv_heads = c.kv_heads;
  config.model.qk_norm = c.qk_norm;
  config.model.head_dim = c.head_dim;
  config.moe.num_experts = c.moe ? 4 : 0;
  config.moe.routing.top_k = 2;
  config.moe.expert_hidden = 10;
  config.moe.layers = c.layers;
  config.moe.capacity_factor = c.capacity_factor;
  config.moe.aux_loss_coef = 0.05;
  config.moe.z_loss_coef = 0.01;
  config.moe.shared_expert_hidden = c.shared_expert_hidden;
  TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
  options.dtype = c.dtype;
  options.master_dtype = c.dtype;
  options.recompute = recompute;
  LocalExchange exchange(*backend, 4);
  Transformer model(*backend, options, c.moe ? &exchange : nullptr);
  model.init_parameters(5);
  model.zero_grads();

  const int64_t batch = 2, T = batch * config.model.seq_len;
  Result result;
  for (int step = 0; step < 3; ++step) {  // gradients accumulate over steps of different data
    std::vector<int32_t> inputs(T), targets(T);
    for (int64_t i = 0; i < T; ++i) {
      inputs[i] = static_cast<int32_t>((i * 7 + step * 13 + i * i) % config.model.vocab_size);
      targets[i] = static_cast<int32_t>((i * 5 + step * 3 + 1) % config.model.vocab_size);
    }
    const GroupStats stats = model.forward_backward(inputs, targets, batch, true, 1.0);
    result.losses.push_back(stats.loss);
  }
  for (Param* param : model.params()) result.grads.push_back(backend->read(param->grad));
  return result;
}

class Recomputation : public ::testing::TestWithParam<Case> {};

TEST_P(Recomputation, GivesBitwiseTheStoredLossAndGradients) {
  const Result stored = run(GetParam(), Recompute::none);
  for (Recompute mode : {Recompute::norms, Recompute::attention, Recompute::layer}) {
    const char* name = mode == Recompute::norms       ? "norms"
                       : mode == Recompute::attention ? "attention"
                                                      : "layer";
    const Result rebuilt = run(GetParam(), mode);
    EXPECT_EQ(rebuilt.losses, stored.losses) << "recompute " << name;
    ASSERT_EQ(rebuilt.grads.size(), stored.grads.size());
    for (size_t p = 0; p < stored.grads.size(); ++p)
      EXPECT_EQ(rebuilt.grads[p], stored.grads[p]) << "recompute " << name << ", parameter " << p;
  }
  // The gradients are not trivially equal (all zero).
  double sum = 0;
  for (const auto& grad : stored.grads)
    for (double g : grad) sum += g * g;
  EXPECT_GT(sum, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, Recomputation,
    ::testing::Values(
        Case{"dense_reference", false, {}, AttentionKernel::reference, 0.0, DType::f32},
        Case{"dense_flash", false, {}, AttentionKernel::flash, 0.0, DType::f32},
        Case{"moe_flash", true, {}, AttentionKernel::flash, 0.0, DType::f32},
        Case{"moe_reference_capacity", true, {}, AttentionKernel::reference, 1.0, DType::f32},
        Case{"mixed_flash_capacity", true, MoeLayers::every_nth(2), AttentionKernel::flash, 0.75,
             DType::f32},
        Case{"moe_f64", true, {}, AttentionKernel::flash, 1.0, DType::f64},
        Case{"mixed_shared_expert", true, MoeLayers::every_nth(2), AttentionKernel::flash, 0.75,
             DType::f32, 12},
        Case{"moe_multi_query_qk_norm",
             true,
             {},
             AttentionKernel::flash,
             0.0,
             DType::f32,
             0,
             1,
             QkNorm::full},
        Case{"dense_reference_qk_norm",
             false,
             {},
             AttentionKernel::reference,
             0.0,
             DType::f32,
             0,
             0,
             QkNorm::full},
        Case{"moe_multi_query_per_head_wide",
             true,
             {},
             AttentionKernel::flash,
             0.0,
             DType::f32,
             0,
             1,
             QkNorm::per_head,
             16}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The workspace hands out prefixes of grow-only slots: a smaller request reuses the block, a
// larger one regrows it, names and dtypes are separate slots.
TEST(Workspace, SlotsGrowOnlyAndAreKeyedByNameAndDtype) {
  auto backend = make_cpu_backend();
  Workspace ws;
  const Tensor a = ws.get(*backend, "a", {4, 3}, DType::f32);
  const Tensor a_small = ws.get(*backend, "a", {2, 5}, DType::f32);
  EXPECT_EQ(a_small.data(), a.data());
  EXPECT_EQ(a_small.shape(), (Shape{2, 5}));
  const Tensor a64 = ws.get(*backend, "a", {4, 3}, DType::f64);
  EXPECT_NE(a64.data(), a.data());
  const Tensor b = ws.rows(*backend, "b", 1, 3, DType::f32, /*reserve_rows=*/8);
  EXPECT_EQ(ws.rows(*backend, "b", 8, 3, DType::f32).data(), b.data()) << "reserved, not regrown";
  EXPECT_EQ(ws.bytes(), (12 + 24) * sizeof(float) + 12 * sizeof(double));
  const Tensor a_big = ws.get(*backend, "a", {5, 3}, DType::f32);
  EXPECT_EQ(a_big.numel(), 15);
}

}  // namespace
}  // namespace sy
