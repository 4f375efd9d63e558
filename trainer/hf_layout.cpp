#include "trainer/hf_layout.h"

#include <algorithm>
#include <utility>

namespace sy {

namespace {
struct HfNames {
  const char* class_name;
  const char* model_type;
  const char* display;  // for messages
};
// Indexed by HfArchitecture.
constexpr HfNames kHfNames[] = {{"LlamaForCausalLM", "llama", "Llama"},
                                {"MixtralForCausalLM", "mixtral", "Mixtral"},
                                {"OlmoeForCausalLM", "olmoe", "OLMoE"},
                                {"Qwen3ForCausalLM", "qwen3", "Qwen3"},
                                {"Qwen3MoeForCausalLM", "qwen3_moe", "Qwen3-MoE"},
                                {"MistralForCausalLM", "mistral", "Mistral"}};
}  // namespace

const char* hf_class_name(HfArchitecture architecture) {
  return kHfNames[static_cast<int>(architecture)].class_name;
}

const char* hf_model_type(HfArchitecture architecture) {
  return kHfNames[static_cast<int>(architecture)].model_type;
}

const char* hf_display_name(HfArchitecture architecture) {
  return kHfNames[static_cast<int>(architecture)].display;
}

bool hf_has_experts(HfArchitecture architecture) {
  return architecture == HfArchitecture::mixtral || architecture == HfArchitecture::olmoe ||
         architecture == HfArchitecture::qwen3_moe;
}

QkNorm hf_qk_norm(HfArchitecture architecture) {
  switch (architecture) {
    case HfArchitecture::olmoe:
      return QkNorm::full;
    case HfArchitecture::qwen3:
    case HfArchitecture::qwen3_moe:
      return QkNorm::per_head;
    case HfArchitecture::llama:
    case HfArchitecture::mixtral:
    case HfArchitecture::mistral:
      break;
  }
  return QkNorm::none;
}

HfArchitecture hf_architecture_of(const Config& config) {
  const std::vector<bool> mask = moe_layer_mask(config);
  const bool moe = std::find(mask.begin(), mask.end(), true) != mask.end();
  switch (config.model.qk_norm) {
    case QkNorm::per_head:
      return moe ? HfArchitecture::qwen3_moe : HfArchitecture::qwen3;
    case QkNorm::full:
      return moe ? HfArchitecture::olmoe : HfArchitecture::llama;
    case QkNorm::none:
      break;
  }
  return moe ? HfArchitecture::mixtral : HfArchitecture::llama;
}

std::vector<HfTensor> hf_tensors(const Config& config, HfArchitecture architecture) {
  const ModelConfig& m = config.model;
  const int64_t D = m.d_model, V = m.vocab_size;
  const std::vector<bool> moe_layers = moe_layer_mask(config);
  std::vector<HfTensor> plan;
  auto add = [&](std::string name, std::string dataset, std::vector<int64_t> shape, bool transpose,
                 int64_t expert = -1) -> HfTensor& {
    plan.push_back(
        {std::move(name), "/model/" + dataset, expert, std::move(shape), transpose, {}, {}, 0});
    return plan.back();
  };
  // Both tables are [V, D]: the embedding as we store it, and logits = h @ embedding^T.
  add("model.embed_tokens.weight", "embedding", {V, D}, false);
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const std::string ours = "layers/" + std::to_string(l) + "/";
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    add(hf + "input_layernorm.weight", ours + "attn_norm", {D}, false);
    // Our rotary is the rotate-half form (pairs i, i + Dh/2 within each head, head h in columns
    // [h*Dh, (h+1)*Dh)), which is transformers' apply_rotary_pos_emb: q and k need no row
    // permutation, only the transpose.
    add(hf + "self_attn.q_proj.weight", ours + "attn/wq", {D, m.q_width()}, true);
    add(hf + "self_attn.k_proj.weight", ours + "attn/wk", {D, m.kv_width()}, true);
    add(hf + "self_attn.v_proj.weight", ours + "attn/wv", {D, m.kv_width()}, true);
    add(hf + "self_attn.o_proj.weight", ours + "attn/wo", {m.q_width(), D}, true);
    // Before rotary: OLMoE's over the whole projections, Qwen3's over each head.
    if (const QkNorm qk_norm = hf_qk_norm(architecture); qk_norm != QkNorm::none) {
      const bool per_head = qk_norm == QkNorm::per_head;
      add(hf + "self_attn.q_norm.weight", ours + "attn/q_norm",
          {per_head ? m.head_width() : m.q_width()}, false);
      add(hf + "self_attn.k_norm.weight", ours + "attn/k_norm",
          {per_head ? m.head_width() : m.kv_width()}, false);
    }
    add(hf + "post_attention_layernorm.weight", ours + "ffn_norm", {D}, false);
    if (hf_has_experts(architecture) && moe_layers[l]) {
      const int64_t E = config.moe.num_experts, F = config.moe.expert_hidden;
      // Mixtral: block_sparse_moe.gate, experts.{e}.w1/w3/w2; OLMoE, Qwen3-MoE: mlp.gate,
      // experts.{e}.gate_proj/up_proj/down_proj (the dense FFN's names).
      const bool mixtral = architecture == HfArchitecture::mixtral;
      const std::string block = hf + (mixtral ? "block_sparse_moe." : "mlp.");
      const char* const names[3] = {mixtral ? "w1" : "gate_proj", mixtral ? "w3" : "up_proj",
                                    mixtral ? "w2" : "down_proj"};
      auto fused = [](HfTensor& tensor, std::string name, std::vector<int64_t> shape,
                      int64_t first) {
        tensor.fused_name = std::move(name);
        tensor.fused_shape = std::move(shape);
        tensor.fused_first = first;
      };
      HfTensor& router = add(block + "gate.weight", ours + "moe/router", {D, E}, true);
      fused(router, hf + "mlp.gate.weight", router.hf_shape(), 0);
      const std::string gate_up = hf + "mlp.experts.gate_up_proj",
                        down = hf + "mlp.experts.down_proj";
      for (int64_t e = 0; e < E; ++e) {
        const std::string expert = block + "experts." + std::to_string(e) + ".";
        fused(add(expert + names[0] + ".weight", ours + "moe/experts/w1", {D, F}, true, e), gate_up,
              {E, 2 * F, D}, e * 2 * F * D);
        fused(add(expert + names[1] + ".weight", ours + "moe/experts/w3", {D, F}, true, e), gate_up,
              {E, 2 * F, D}, e * 2 * F * D + F * D);
        fused(add(expert + names[2] + ".weight", ours + "moe/experts/w2", {F, D}, true, e), down,
              {E, D, F}, e * D * F);
      }
    } else {
      const int64_t F = m.ffn_hidden;
      add(hf + "mlp.gate_proj.weight", ours + "ffn/w1", {D, F}, true);
      add(hf + "mlp.up_proj.weight", ours + "ffn/w3", {D, F}, true);
      add(hf + "mlp.down_proj.weight", ours + "ffn/w2", {F, D}, true);
    }
  }
  add("model.norm.weight", "final_norm", {D}, false);
  if (!m.tie_embeddings) add("lm_head.weight", "lm_head", {D, V}, true);
  return plan;
}

std::vector<int64_t> hf_dataset_shape(const HfTensor& tensor, const Config& config) {
  std::vector<int64_t> shape = tensor.shape;
  if (tensor.expert >= 0) shape.insert(shape.begin(), config.moe.num_experts);
  return shape;
}

std::vector<float> transposed(const std::vector<float>& values, int64_t rows, int64_t cols) {
  std::vector<float> out(values.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = values[i * cols + j];
  return out;
}

}  // namespace sy
