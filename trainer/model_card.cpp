#include "trainer/model_card.h"

#include <cstdio>

namespace sy {

ModelCard make_model_card(const Config& config) {
  const ModelConfig& m = config.model;
  const MoeConfig& moe = config.moe;
  const int64_t D = m.d_model, V = m.vocab_size;
  const std::vector<bool> moe_mask = moe_layer_mask(config);

  ModelCard card;
  const int64_t embedding = V * D, lm_head = m.tie_embeddings ? 0 : D * V;
  int64_t non_expert = embedding + lm_head + D;  // + final_norm
  int64_t active_matmul = D * V;                 // the LM head GEMM, tied or not
  int64_t expert_total = 0, expert_per_rank = 0;
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const int64_t attention = 2 * D * m.q_width() + 2 * D * m.kv_width();  // wq, wo; wk, wv
    const int64_t qk_gains = m.qk_norm == QkNorm::full       ? m.q_width() + m.kv_width()
                             : m.qk_norm == QkNorm::per_head ? 2 * m.head_width()
                                                             : 0;
    const int64_t norms = 2 * D + qk_gains;
    non_expert += attention + norms;
    active_matmul += attention;
    if (!moe_mask[l]) {
      const int64_t dense = 3 * D * m.ffn_hidden;
      non_expert += dense;
      active_matmul += dense;
      continue;
    }
    ++card.moe_layers;
    const int64_t router = D * moe.num_experts, expert = 3 * D * moe.expert_hidden;
    const int64_t shared = 3 * D * moe.shared_expert_hidden;  // every token, every rank
    non_expert += router + shared;
    active_matmul += router + moe.routing.top_k * expert + shared;
    expert_total += moe.num_experts * expert;
    expert_per_rank += moe.num_experts / config.parallel.expert_parallel * expert;
  }
  card.expert_params = expert_total;
  card.total_params = non_expert + expert_total;
  card.active_params = non_expert + card.moe_layers * moe.routing.top_k * 3 * D * moe.expert_hidden;
  card.params_per_rank = non_expert + expert_per_rank;
  card.sparsity = card.moe_layers ? static_cast<double>(moe.routing.top_k) / moe.num_experts : 1.0;
  const double bytes_per_param = config.train.optimizer == OptimizerKind::adamw ? 16.0 : 8.0;
  card.param_optimizer_bytes_per_rank = bytes_per_param * card.params_per_rank;
  // 6 FLOPs per multiply-accumulate weight (forward 2, backward 4), plus causal attention scores
  // and the weighted sum: 2 * 2 * H*Dh * S/2 per token and layer forward, times 3 for training.
  card.train_flops_per_token = 6.0 * active_matmul + 6.0 * m.n_layers * m.q_width() * m.seq_len;
  return card;
}

namespace {
std::string human(double value, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (value >= 1000.0 && i < 5) {
    value /= 1000.0;
    ++i;
  }
  char text[48];
  std::snprintf(text, sizeof text, "%.3g %s%s", value, prefixes[i], unit);
  return text;
}
std::string human_bytes(double bytes) {
  const char* prefixes[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024.0 && i < 4) {
    bytes /= 1024.0;
    ++i;
  }
  char text[48];
  std::snprintf(text, sizeof text, "%.3g %s", bytes, prefixes[i]);
  return text;
}
}  // namespace

std::string format_model_card(const Config& config, const ModelCard& card) {
  const ModelConfig& m = config.model;
  const MoeConfig& moe = config.moe;
  char text[1600];
  std::snprintf(
      text, sizeof text,
      "== model card: %s ==\n"
      "  layers %lld (MoE %lld), d_model %lld, heads %lld x %lld (key/value %lld), seq_len %lld, "
      "vocab %lld\n"
      "  experts %lld x width %lld, top_k %lld, capacity_factor %g%s\n"
      "  total parameters            %lld (%s)\n"
      "  active parameters / token   %lld (%s)\n"
      "  sparsity k/E                %.4g\n"
      "  param + optimizer memory    %s per rank (%lld params on each of %lld EP ranks)\n"
      "  training FLOPs / token      %s\n",
      config.name.c_str(), static_cast<long long>(m.n_layers),
      static_cast<long long>(card.moe_layers), static_cast<long long>(m.d_model),
      static_cast<long long>(m.n_heads), static_cast<long long>(m.head_width()),
      static_cast<long long>(m.kv_heads()), static_cast<long long>(m.seq_len),
      static_cast<long long>(m.vocab_size), static_cast<long long>(moe.num_experts),
      static_cast<long long>(moe.expert_hidden), static_cast<long long>(moe.routing.top_k),
      moe.capacity_factor, moe.capacity_factor <= 0 ? " (dropless)" : "",
      static_cast<long long>(card.total_params), human(card.total_params, "").c_str(),
      static_cast<long long>(card.active_params), human(card.active_params, "").c_str(),
      card.sparsity, human_bytes(card.param_optimizer_bytes_per_rank).c_str(),
      static_cast<long long>(card.params_per_rank),
      static_cast<long long>(config.parallel.expert_parallel),
      human(card.train_flops_per_token, "FLOP").c_str());
  return text;
}

}  // namespace sy
