// train.recompute and the shared workspace on the CUDA backend (docs/cuda.md "Memory"): in bf16
// mixed precision and in fp32, for dense, MoE and mixed models, recomputing gives bitwise the
// loss and gradients of storing.
// First two stored runs are compared with each other: should they differ, a kernel is not
// run-to-run deterministic and the failure is not recomputation's. No step after the first
// takes memory from the driver, in any mode. The peak memory of each mode is printed, not
// checked (the caching allocator's rounding decides small differences at these sizes).
// Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "model/cuda/cuda_backend.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"

namespace sy {
namespace {

struct Case {
  std::string name;
  std::vector<bool> moe_layers;  // all false: dense
  double capacity_factor;
  DType compute;
  int64_t kv_heads = 0;  // model.n_kv_heads
  QkNorm qk_norm = QkNorm::none;  // model.qk_norm
  int64_t head_dim = 0;           // model.head_dim
};

struct Result {
  std::vector<double> losses;
  std::vector<std::vector<double>> grads;  // [param][element], after all steps
  size_t peak_bytes = 0;
  bool allocations_steady = true;  // no cudaMalloc in the third pass
};

Result run(const Case& c, Recompute recompute) {
  auto backend = make_cuda_backend(0);
  TransformerOptions options;
  options.model = {97, 64, 64, static_cast<int64_t>(c.moe_layers.size()), 4, 160, false};
  options.model.n_kv_heads = c.kv_heads;
  options.model.qk_norm = c.qk_norm;
  options.model.head_dim = c.head_dim;
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 2;
  options.moe.expert_hidden = 96;
  options.moe.capacity_factor = c.capacity_factor;
  options.moe.aux_loss_coef = 0.05;
  options.moe.z_loss_coef = 0.01;
  options.moe_layers = c.moe_layers;
  options.dtype = c.compute;
  options.master_dtype = DType::f32;
  options.recompute = recompute;
  bool any_moe = false;
  for (bool moe : c.moe_layers) any_moe = any_moe || moe;
  if (!any_moe) options.moe.num_experts = 0;
  LocalExchange exchange(*backend, 4);
  Transformer model(*backend, options, any_moe ? &exchange : nullptr);
  model.init_parameters(3);
  model.zero_grads();

  const int64_t batch = 3, T = batch * options.model.seq_len;
  Result result;
  int64_t allocations = -1;
  for (int step = 0; step < 3; ++step) {
    std::vector<int32_t> inputs(T), targets(T);
    for (int64_t i = 0; i < T; ++i) {
      inputs[i] = static_cast<int32_t>((i * 7 + step * 13 + i * i * 3) % options.model.vocab_size);
      targets[i] = static_cast<int32_t>((i * 5 + step * 3 + 1) % options.model.vocab_size);
    }
    result.losses.push_back(model.forward_backward(inputs, targets, batch, true, 1.0).loss);
    // Steady from the second pass: the first runs with its gradients released (zero), the later
    // ones accumulate into live gradients and so hold them during the forward too.
    const int64_t now = cuda_device_allocations(*backend);
    if (step > 1 && now != allocations) result.allocations_steady = false;
    allocations = now;
  }
  for (Param* param : model.params()) result.grads.push_back(backend->read(param->grad));
  result.peak_bytes = backend->peak_memory_bytes();
  return result;
}

void expect_bitwise(const Result& got, const Result& want, const std::string& what) {
  EXPECT_EQ(got.losses, want.losses) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size()) << what;
  for (size_t p = 0; p < want.grads.size(); ++p)
    EXPECT_EQ(got.grads[p], want.grads[p]) << what << ", parameter " << p;
}

class CudaRecompute : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_P(CudaRecompute, GivesBitwiseTheStoredLossAndGradients) {
  const Case& c = GetParam();
  const Result stored = run(c, Recompute::none);
  ASSERT_NO_FATAL_FAILURE(expect_bitwise(run(c, Recompute::none), stored,
                                         "two stored runs (kernel determinism, not recompute)"));
  EXPECT_TRUE(stored.allocations_steady) << "recompute none allocated in the third pass";
  std::printf("[ memory   ] %s: peak %zu bytes with recompute none\n", c.name.c_str(),
              stored.peak_bytes);
  for (Recompute mode : {Recompute::norms, Recompute::attention, Recompute::layer}) {
    const char* name = mode == Recompute::norms       ? "norms"
                       : mode == Recompute::attention ? "attention"
                                                      : "layer";
    const Result rebuilt = run(c, mode);
    expect_bitwise(rebuilt, stored, std::string("recompute ") + name);
    EXPECT_TRUE(rebuilt.allocations_steady) << "recompute " << name
                                            << " allocated in the third pass";
    std::printf("[ memory   ] %s: peak %zu bytes with recompute %s\n", c.name.c_str(),
                rebuilt.peak_bytes, name);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, CudaRecompute,
    ::testing::Values(
        Case{"moe_bf16", {true, true, true}, 0.0, DType::bf16},
        Case{"mixed_bf16_capacity", {true, false, true}, 1.0, DType::bf16},
        Case{"dense_bf16", {false, false}, 0.0, DType::bf16},
        Case{"moe_f32_capacity", {true, true}, 1.0, DType::f32},
        Case{"moe_bf16_grouped_qk_norm", {true, true}, 0.0, DType::bf16, 2, QkNorm::full},
        Case{"moe_bf16_grouped_per_head_wide",
             {true, true},
             0.0,
             DType::bf16,
             2,
             QkNorm::per_head,
             32}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace sy
