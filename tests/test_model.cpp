// Model assembly: parameter layout, initialisation streams, the model card.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "model/rng.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "trainer/config.h"
#include "trainer/model_card.h"

namespace sy {
namespace {

// An exchange that only states which experts this rank holds (for init tests; never dispatches).
class ShardOnlyExchange final : public TokenExchange {
 public:
  ShardOnlyExchange(int64_t experts, int64_t first, int64_t local)
      : experts_(experts), first_(first), local_(local) {}
  int64_t num_experts() const override { return experts_; }
  int64_t first_local_expert() const override { return first_; }
  int64_t num_local_experts() const override { return local_; }
  ExchangePlan plan(const std::vector<int64_t>&) override { throw std::logic_error("unused"); }
  void dispatch(const ExchangePlan&, const Tensor&, const Tensor&) override {}
  void combine(const ExchangePlan&, const Tensor&, const Tensor&) override {}
  void sum_over_world(std::vector<int64_t>&) override {}

 private:
  int64_t experts_, first_, local_;
};

Config small_config() {
  Config config;
  config.model = {64, 8, 16, 2, 2, 24, true};
  config.moe.num_experts = 4;
  config.moe.routing.top_k = 2;
  config.moe.expert_hidden = 8;
  config.moe.layers = MoeLayers{};
  return config;
}

TransformerOptions options_of(const Config& config) {
  return {config.model, config.moe, moe_layer_mask(config), DType::f32};
}

TEST(Model, ParamPathsFollowTheCheckpointLayout) {
  auto backend = make_cpu_backend();
  Config config = small_config();
  config.model.tie_embeddings = false;
  config.moe.layers = MoeLayers::every_nth(2);
  LocalExchange exchange(*backend, 4);
  Transformer model(*backend, options_of(config), &exchange);
  std::vector<std::string> paths;
  for (Param* p : model.params()) paths.push_back(p->path);
  const std::vector<std::string> expected = {
      "embedding",          "layers/0/attn_norm",     "layers/0/attn/wq",
      "layers/0/attn/wk",   "layers/0/attn/wv",       "layers/0/attn/wo",
      "layers/0/ffn_norm",  "layers/0/ffn/w1",        "layers/0/ffn/w3",
      "layers/0/ffn/w2",    "layers/1/attn_norm",     "layers/1/attn/wq",
      "layers/1/attn/wk",   "layers/1/attn/wv",       "layers/1/attn/wo",
      "layers/1/ffn_norm",  "layers/1/moe/router",    "layers/1/moe/experts/w1",
      "layers/1/moe/experts/w3", "layers/1/moe/experts/w2", "final_norm", "lm_head"};
  EXPECT_EQ(paths, expected);
}

TEST(Model, InitIsIndependentOfTheExpertShard) {
  auto backend = make_cpu_backend();
  const Config config = small_config();
  LocalExchange all(*backend, 4);
  ShardOnlyExchange upper_half(4, 2, 2);
  Transformer full(*backend, options_of(config), &all);
  Transformer shard(*backend, options_of(config), &upper_half);
  full.init_parameters(99);
  shard.init_parameters(99);
  std::vector<Param*> a = full.params(), b = shard.params();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<double> va = backend->read(a[i]->value), vb = backend->read(b[i]->value);
    if (!a[i]->is_expert) {
      EXPECT_EQ(va, vb) << a[i]->path;
      continue;
    }
    // Experts 2 and 3 of the full tensor are the shard's experts 0 and 1.
    const size_t half = va.size() / 2;
    EXPECT_EQ(std::vector<double>(va.begin() + half, va.end()), vb) << a[i]->path;
  }
}

// The threaded fill gives each stream's values as one thread drawing it in order would, however
// the streams are cut into pieces (empty, tiny, and sizes off the piece length among them).
TEST(Rng, FillNormalIsEachStreamDrawnInOrder) {
  const std::vector<int64_t> sizes = {0, 1, (int64_t{1} << 20) + 3, 5, (int64_t{1} << 21) - 1};
  std::vector<std::vector<double>> got(sizes.size());
  std::vector<NormalFill> fills;
  for (size_t s = 0; s < sizes.size(); ++s) {
    got[s].assign(sizes[s], 0.0);
    fills.push_back({1000 + s, got[s].data(), sizes[s]});
  }
  fill_normal(fills, 0.5);
  for (size_t s = 0; s < sizes.size(); ++s) {
    CounterRng rng(1000 + s);
    for (int64_t i = 0; i < sizes[s]; ++i)
      ASSERT_EQ(got[s][i], 0.5 * rng.normal()) << "stream " << s << " value " << i;
  }
}

TEST(Model, InitStatistics) {
  auto backend = make_cpu_backend();
  Config config = small_config();
  config.model.d_model = 64;
  config.model.vocab_size = 256;
  LocalExchange exchange(*backend, 4);
  Transformer model(*backend, options_of(config), &exchange);
  model.init_parameters(1);
  for (Param* p : model.params()) {
    const std::vector<double> v = backend->read(p->value);
    double mean = 0, sq = 0;
    for (double x : v) mean += x, sq += x * x;
    mean /= v.size();
    sq /= v.size();
    if (p->value.ndim() == 1) {
      EXPECT_EQ(mean, 1.0) << p->path;
    } else {
      // Five standard errors of the sample's RMS and mean.
      const double n = static_cast<double>(v.size());
      EXPECT_NEAR(std::sqrt(sq), 0.02, 5 * 0.02 / std::sqrt(2 * n)) << p->path;
      EXPECT_NEAR(mean, 0.0, 5 * 0.02 / std::sqrt(n)) << p->path;
    }
  }
  // Different seeds, different weights.
  Transformer other(*backend, options_of(config), &exchange);
  other.init_parameters(2);
  EXPECT_NE(backend->read(model.params()[0]->value), backend->read(other.params()[0]->value));
}

TEST(ModelCard, CountsMatchTheParameters) {
  auto backend = make_cpu_backend();
  for (const MoeLayers& layers : {MoeLayers{}, MoeLayers::every_nth(2)}) {
    for (bool tie : {true, false}) {
      for (int64_t shared : {0, 6}) {  // moe.shared_expert_hidden: active for every token
        Config config = small_config();
        config.moe.layers = layers;
        config.model.tie_embeddings = tie;
        config.moe.shared_expert_hidden = shared;
        LocalExchange exchange(*backend, 4);
        Transformer model(*backend, options_of(config), &exchange);
        int64_t total = 0, experts = 0;
        for (Param* p : model.params()) {
          total += p->value.numel();
          if (p->is_expert) experts += p->value.numel();
        }
        const ModelCard card = make_model_card(config);
        EXPECT_EQ(card.total_params, total)
            << to_string(layers) << " tie " << tie << " shared " << shared;
        EXPECT_EQ(card.expert_params, experts);
        // top_k of E experts are active per token.
        EXPECT_EQ(card.active_params, total - experts / 2);
        EXPECT_DOUBLE_EQ(card.sparsity, 0.5);
      }
    }
  }
  // Grouped-query attention: wk and wv of n_kv_heads heads; with QK-norm's gains over the whole
  // projections, and per head with heads wider than D / H (head_dim).
  struct Attention {
    int64_t kv_heads;
    QkNorm qk_norm;
    int64_t head_dim;
  };
  for (const Attention c :
       {Attention{1, QkNorm::full, 0}, {2, QkNorm::none, 0}, {1, QkNorm::per_head, 24}}) {
    Config config = small_config();
    config.model.n_kv_heads = c.kv_heads;
    config.model.qk_norm = c.qk_norm;
    config.model.head_dim = c.head_dim;
    LocalExchange exchange(*backend, 4);
    Transformer model(*backend, options_of(config), &exchange);
    int64_t total = 0;
    for (Param* p : model.params()) total += p->value.numel();
    EXPECT_EQ(make_model_card(config).total_params, total)
        << "n_kv_heads " << c.kv_heads << " head_dim " << c.head_dim;
  }
  // Qwen3-30B-A3B's shape (heads of 128 on d_model 2048, 4 key/value heads, per-head QK-norm,
  // 128 experts of 768, top-8, untied): the 30.5B parameters and 3.3B active that Qwen publishes.
  Config qwen = small_config();
  qwen.model = {151936, 4096, 2048, 48, 32, 6144, false};
  qwen.model.n_kv_heads = 4;
  qwen.model.head_dim = 128;
  qwen.model.qk_norm = QkNorm::per_head;
  qwen.moe.num_experts = 128;
  qwen.moe.routing.top_k = 8;
  qwen.moe.expert_hidden = 768;
  EXPECT_EQ(make_model_card(qwen).total_params, 30532122624);
  EXPECT_EQ(make_model_card(qwen).active_params, 3353032704);

  Config dense = small_config();
  dense.moe.num_experts = 0;
  const ModelCard card = make_model_card(dense);
  EXPECT_EQ(card.active_params, card.total_params);
  EXPECT_EQ(card.moe_layers, 0);
}

}  // namespace
}  // namespace sy
