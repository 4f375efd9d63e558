// Our checkpoint tensors as transformers' Llama, Mixtral, OLMoE, Qwen3 and Qwen3-MoE name and lay
// them out (docs/export.md, "The mapping"): one table, walked forwards by export and backwards by
// import.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

// One tensor of transformers' state dict and where it lives in our checkpoint.
struct HfTensor {
  std::string name;            // transformers' name: "model.layers.0.self_attn.q_proj.weight"
  std::string dataset;         // ours: "/model/layers/0/attn/wq"
  int64_t expert = -1;         // >= 0: slice [expert] of a stacked [E, ...] dataset
  std::vector<int64_t> shape;  // ours, of the slice: [in, out] for a matrix, [D] for a gain
  bool transpose = false;      // ours y = x @ W [in, out] <-> torch.nn.Linear's [out, in]
  // Where transformers 5's fused expert layout holds the same values (what save_pretrained
  // writes with save_original_format=False): elements [fused_first, + numel) of the tensor
  // fused_name of shape fused_shape, laid out as hf_shape(). Empty: only the name above.
  // Experts: mlp.experts.gate_up_proj [E, 2F, D] (each expert's gate rows, then its up rows) and
  // mlp.experts.down_proj [E, D, F]; Mixtral's router is mlp.gate.weight there.
  std::string fused_name;
  std::vector<int64_t> fused_shape;
  int64_t fused_first = 0;

  std::vector<int64_t> hf_shape() const {
    return transpose ? std::vector<int64_t>{shape[1], shape[0]} : shape;
  }
};

// The transformers models export writes and import reads: Llama (dense), Mixtral (MoE in every
// layer), OLMoE (MoE in every layer, QK-norm over the whole projections, an optional top-k
// renormalisation), Qwen3 (dense, per-head QK-norm) and Qwen3-MoE (Qwen3 with MoE layers, any
// of them dense by mlp_only_layers); and, read only, Mistral (Llama's layout; without a sliding
// window it computes what Llama does, so export writes Llama).
enum class HfArchitecture { llama, mixtral, olmoe, qwen3, qwen3_moe, mistral };
const char* hf_class_name(HfArchitecture architecture);  // "LlamaForCausalLM", ...
const char* hf_model_type(HfArchitecture architecture);  // "llama", ...
const char* hf_display_name(HfArchitecture architecture);  // "Llama", "Qwen3-MoE", ...
bool hf_has_experts(HfArchitecture architecture);        // mixtral, olmoe, qwen3_moe
QkNorm hf_qk_norm(HfArchitecture architecture);          // the model.qk_norm it implies
// The architecture our model of `config` exports as: with model.qk_norm per_head qwen3 (dense)
// or qwen3_moe; else llama without MoE layers, olmoe with model.qk_norm full, else mixtral
// (hf_export_problem says what none of them can express).
HfArchitecture hf_architecture_of(const Config& config);

// Every tensor of `architecture`'s model of `config`, in transformers' order: embedding; per
// layer the norms, attention (with q_norm, k_norm where it has them), FFN (an MoE layer's router,
// then per expert gate, up, down: the order of our params w1, w3, w2); final norm; the LM head
// when untied. Which layers are MoE: moe_layer_mask(config).
std::vector<HfTensor> hf_tensors(const Config& config, HfArchitecture architecture);

// The dataset's full shape in our checkpoint: the slice's, with [E] in front for an expert.
std::vector<int64_t> hf_dataset_shape(const HfTensor& tensor, const Config& config);

// [rows, cols] row-major -> [cols, rows] row-major.
std::vector<float> transposed(const std::vector<float>& values, int64_t rows, int64_t cols);

}  // namespace sy
