// The training step's memory plan (Transformer::release_unwritten_grads,
// docs/cuda.md "Memory"): a gradient takes memory only from the backward of its
// layer to the optimizer step, and a block's saved activations only from its
// forward to its backward. Measured on the CPU backend, which counts the bytes
// of live tensors exactly (CpuBackend::live_bytes).
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "model/cpu/cpu_backend.h"
#include "model/transformer.h"
#include "optim/optimizer.h"
#include "parallel/local_exchange.h"
#include "trainer/config.h"

namespace sy {
namespace {

struct Fixture {
  Config config;
  CpuBackend backend;
  std::unique_ptr<LocalExchange> exchange;
  std::unique_ptr<Transformer> model;
  std::vector<int32_t> inputs, targets;
  static constexpr int64_t kBatch = 2;

  explicit Fixture(const Config& c) : config(c) {
    TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
    const bool moe = config.moe.num_experts > 0;
    exchange = std::make_unique<LocalExchange>(backend, moe ? config.moe.num_experts : 1);
    model = std::make_unique<Transformer>(backend, options, moe ? exchange.get() : nullptr);
    model->init_parameters(5);
    const int64_t T = kBatch * config.model.seq_len;
    for (int64_t i = 0; i < T; ++i) {
      inputs.push_back(static_cast<int32_t>((i * 7 + i * i) % config.model.vocab_size));
      targets.push_back(static_cast<int32_t>((i * 5 + 1) % config.model.vocab_size));
    }
  }
  // One micro-batch; returns the most bytes live during it.
  size_t micro_batch(bool compute_grad) {
    backend.reset_peak_live_bytes();
    model->forward_backward(inputs, targets, kBatch, compute_grad, 1.0);
    return backend.peak_live_bytes();
  }
};

Config small_model(int64_t experts) {
  Config c;
  c.model = {97, 32, 32, 4, 4, 128, false};  // V, S, D, L, H, F, tie
  c.moe.num_experts = experts;
  c.moe.routing.top_k = 2;
  c.moe.expert_hidden = 64;
  return c;
}

size_t grad_bytes(const std::vector<Param*>& params) {
  size_t bytes = 0;
  for (const Param* p : params) bytes += p->value.nbytes();
  return bytes;
}

// After an optimizer step the grads are stale: the next micro-batch peaks below
// one that keeps live grads (the second micro-batch of an accumulation) by at
// least the grads of every layer but the ones backward reaches first (the LM
// head, the final norm, the last block).
TEST(MemoryPlan, GradientsTakeMemoryOnlyFromTheirLayersBackward) {
  for (int64_t experts : {0, 4}) {
    Fixture f(small_model(experts));
    std::vector<Param*> params = f.model->params();
    std::unique_ptr<Optimizer> optimizer = make_optimizer(OptimizerSettings{});
    f.micro_batch(true);
    optimizer->step(f.backend, params, 1e-3);
    const size_t peak_after_step = f.micro_batch(true);    // grads released, then acquired
    const size_t peak_accumulating = f.micro_batch(true);  // grads live throughout
    const size_t all = grad_bytes(params);
    size_t last_block = 0;
    for (const Param* p : params)
      if (p->path.starts_with("layers/3/")) last_block += p->value.nbytes();
    const size_t first_reached = last_block + f.model->params().back()->value.nbytes() +
                                 static_cast<size_t>(f.config.model.d_model) * 4;
    EXPECT_GE(peak_accumulating, peak_after_step + (all - first_reached))
        << experts << " experts: grads " << all << " bytes, first reached " << first_reached;
    for (const Param* p : params) {
      EXPECT_TRUE(p->grad.defined()) << p->path;
      EXPECT_EQ(p->grad_state, Param::GradState::live) << p->path;
    }
  }
}

// A training backward gives back every block's saved activations; a forward
// without gradients (evaluation) keeps them, as the next training forward would
// fill them again.
TEST(MemoryPlan, ABlocksSavedActivationsGoBackAfterItsBackward) {
  for (int64_t experts : {0, 4}) {
    Fixture f(small_model(experts));
    f.micro_batch(true);
    const size_t after_training = f.backend.live_bytes();
    f.micro_batch(false);
    const size_t after_evaluation = f.backend.live_bytes();
    const ModelConfig& m = f.config.model;
    const size_t T = Fixture::kBatch * m.seq_len, D = m.d_model, L = m.n_layers;
    // Per block at least: its output, the mid-block residual, q, k, v and the
    // context ([T, D] each); a dense block's h1, h3 ([T, F]) or an MoE block's
    // rows sent and received back.
    const size_t ffn = experts ? 2 * T * 2 * D : 2 * T * m.ffn_hidden;
    const size_t saved = L * (6 * T * D + ffn) * 4;
    EXPECT_GE(after_evaluation, after_training + saved) << experts << " experts";
  }
}

}  // namespace
}  // namespace sy
