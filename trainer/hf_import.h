// switchyard import: a Hugging Face transformers model folder (LlamaForCausalLM,
// MixtralForCausalLM or OlmoeForCausalLM: config.json, model.safetensors or its sharded index,
// tokenizer.model) as a step-0 Switchyard checkpoint file, the inverse of switchyard export
// (docs/export.md, "Import"). A Llama becomes a dense model, a Mixtral an MoE model in every
// layer, an OLMoE one with QK-norm too; the weights are copied in fp32 through the tensor table
// export uses (trainer/hf_layout.h). A model our code would compute differently from
// transformers (scaled rotary, biases, a sliding window, clamped q/k/v, ...) is refused before
// anything is written: hf_import.cpp's hf_import_problem holds those limits, in one place.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

// A folder that cannot be imported (or an output that cannot be written). what() is one line
// naming the file, and for config.json the key.
struct ImportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ImportOptions {
  std::string folder;      // a transformers model folder
  std::string output;      // the checkpoint file to write
  bool overwrite = false;  // replace an existing output file
};

struct ImportResult {
  std::string architecture;          // "MixtralForCausalLM" | "LlamaForCausalLM"
  Config config;                     // the checkpoint's config attribute
  std::vector<std::string> weights;  // the safetensors files read
  std::vector<std::string> dtypes;   // the dtypes found in them: "BF16", ...
  int64_t tensors = 0;               // transformers tensors read
  int64_t parameters = 0;            // values written
  std::string tokenizer;             // the tokenizer file stored in the checkpoint, or empty
  std::vector<std::string> notes;    // for the user
};

// Checks everything (config.json, every tensor's presence, shape and dtype, the tokenizer)
// before writing, then writes options.output (via <output>.tmp, renamed into place): the root
// attributes of a step-0 checkpoint and /model/* in fp32, no optimizer state. Throws
// ImportError.
ImportResult import_hf(const ImportOptions& options);

}  // namespace sy
