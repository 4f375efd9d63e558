// switchyard export: a checkpoint as a Hugging Face transformers model folder (docs/export.md).
// An MoE model becomes MixtralForCausalLM, a dense one LlamaForCausalLM: config.json,
// model.safetensors (every tensor, one file, fp32 or bf16) and, when the model was trained with a
// SentencePiece tokenizer, tokenizer.model and tokenizer_config.json. The mapping is exact: the
// exported model computes our function (rotate-half rotary with theta 10000, RMSNorm eps 1e-5,
// softmax router with the top-k renormalised); what the format cannot express is refused.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

// A checkpoint that cannot be exported (or a folder that cannot be written). what() is one line.
struct ExportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ExportOptions {
  std::string checkpoint;      // a checkpoint file (resolve a folder or `latest` first: cli.h)
  std::string output;          // the folder to write; created when missing
  std::string format = "hf";   // the only format
  std::string dtype = "bf16";  // bf16 | fp32: the tensors' dtype in model.safetensors
  bool overwrite = false;      // allow a non-empty output folder
};

struct ExportResult {
  std::string architecture;         // "MixtralForCausalLM" | "LlamaForCausalLM"
  std::vector<std::string> files;   // written, in order (paths)
  int64_t tensors = 0;              // in model.safetensors
  int64_t parameters = 0;           // values in model.safetensors
  int64_t safetensors_bytes = 0;
  std::vector<std::string> notes;   // for the user: the tokenizer, what was left out
};

// "" when transformers' Mixtral (num_experts > 0) or Llama (dense) can express the model of
// `config`, else one line naming the config key that prevents it and why
// ("moe.router_score: sigmoid: ...").
std::string hf_export_problem(const Config& config);

// Reads the checkpoint (its config attribute gives the model) and writes the folder. Throws
// ExportError with one line: the refusal, a bad checkpoint, or an output folder that is not
// empty (without overwrite). Each file goes to <name>.tmp and is renamed into place.
ExportResult export_checkpoint(const ExportOptions& options);

}  // namespace sy
