// Our checkpoint tensors as transformers' Llama and Mixtral name and lay them out (docs/export.md,
// "The mapping"): one table, walked forwards by export and backwards by import.
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

  std::vector<int64_t> hf_shape() const {
    return transpose ? std::vector<int64_t>{shape[1], shape[0]} : shape;
  }
};

// The transformers models export writes and import reads: Llama (dense), Mixtral (MoE in every
// layer), OLMoE (MoE in every layer, with QK-norm and an optional top-k renormalisation).
enum class HfArchitecture { llama, mixtral, olmoe };
const char* hf_class_name(HfArchitecture architecture);  // "LlamaForCausalLM", ...
const char* hf_model_type(HfArchitecture architecture);  // "llama", ...
// The architecture our model of `config` exports as: llama without MoE layers, else olmoe with
// model.qk_norm, else mixtral (hf_export_problem says what none of them can express).
HfArchitecture hf_architecture_of(const Config& config);

// Every tensor of `architecture`'s model of `config`, in transformers' order: embedding; per
// layer the norms, attention (with OLMoE's q_norm, k_norm), FFN (per expert gate, up, down: the
// order of our params w1, w3, w2); final norm; the LM head when untied.
std::vector<HfTensor> hf_tensors(const Config& config, HfArchitecture architecture);

// The dataset's full shape in our checkpoint: the slice's, with [E] in front for an expert.
std::vector<int64_t> hf_dataset_shape(const HfTensor& tensor, const Config& config);

// [rows, cols] row-major -> [cols, rows] row-major.
std::vector<float> transposed(const std::vector<float>& values, int64_t rows, int64_t cols);

}  // namespace sy
