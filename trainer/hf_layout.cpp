#include "trainer/hf_layout.h"

#include <algorithm>

namespace sy {

namespace {
struct HfNames {
  const char* class_name;
  const char* model_type;
};
// Indexed by HfArchitecture.
constexpr HfNames kHfNames[] = {{"LlamaForCausalLM", "llama"},
                                {"MixtralForCausalLM", "mixtral"},
                                {"OlmoeForCausalLM", "olmoe"}};
}  // namespace

const char* hf_class_name(HfArchitecture architecture) {
  return kHfNames[static_cast<int>(architecture)].class_name;
}

const char* hf_model_type(HfArchitecture architecture) {
  return kHfNames[static_cast<int>(architecture)].model_type;
}

HfArchitecture hf_architecture_of(const Config& config) {
  const std::vector<bool> mask = moe_layer_mask(config);
  if (std::find(mask.begin(), mask.end(), true) == mask.end()) return HfArchitecture::llama;
  return config.model.qk_norm ? HfArchitecture::olmoe : HfArchitecture::mixtral;
}

std::vector<HfTensor> hf_tensors(const Config& config, HfArchitecture architecture) {
  const bool moe = architecture != HfArchitecture::llama;
  const bool olmoe = architecture == HfArchitecture::olmoe;
  const ModelConfig& m = config.model;
  const int64_t D = m.d_model, V = m.vocab_size;
  std::vector<HfTensor> plan;
  auto add = [&](std::string name, std::string dataset, std::vector<int64_t> shape, bool transpose,
                 int64_t expert = -1) {
    plan.push_back({std::move(name), "/model/" + dataset, expert, std::move(shape), transpose});
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
    add(hf + "self_attn.q_proj.weight", ours + "attn/wq", {D, D}, true);
    const int64_t kv_width = m.kv_heads() * (D / m.n_heads);  // grouped-query: Hkv heads
    add(hf + "self_attn.k_proj.weight", ours + "attn/wk", {D, kv_width}, true);
    add(hf + "self_attn.v_proj.weight", ours + "attn/wv", {D, kv_width}, true);
    add(hf + "self_attn.o_proj.weight", ours + "attn/wo", {D, D}, true);
    if (olmoe) {  // over the whole projection, before rotary
      add(hf + "self_attn.q_norm.weight", ours + "attn/q_norm", {D}, false);
      add(hf + "self_attn.k_norm.weight", ours + "attn/k_norm", {kv_width}, false);
    }
    add(hf + "post_attention_layernorm.weight", ours + "ffn_norm", {D}, false);
    if (moe) {
      const int64_t E = config.moe.num_experts, F = config.moe.expert_hidden;
      // Mixtral: block_sparse_moe.gate, experts.{e}.w1/w3/w2; OLMoE: mlp.gate,
      // experts.{e}.gate_proj/up_proj/down_proj (the dense FFN's names).
      const std::string block = hf + (olmoe ? "mlp." : "block_sparse_moe.");
      const char* const names[3] = {olmoe ? "gate_proj" : "w1", olmoe ? "up_proj" : "w3",
                                    olmoe ? "down_proj" : "w2"};
      add(block + "gate.weight", ours + "moe/router", {D, E}, true);
      for (int64_t e = 0; e < E; ++e) {
        const std::string expert = block + "experts." + std::to_string(e) + ".";
        add(expert + names[0] + ".weight", ours + "moe/experts/w1", {D, F}, true, e);
        add(expert + names[1] + ".weight", ours + "moe/experts/w3", {D, F}, true, e);
        add(expert + names[2] + ".weight", ours + "moe/experts/w2", {F, D}, true, e);
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
