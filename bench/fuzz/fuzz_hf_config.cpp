// libFuzzer: bytes -> DIR/config.json beside a fixed tiny Llama's model.safetensors ->
// `switchyard import` (import_hf): config.json parsed, its limits checked (hf_import_problem),
// mapped to our config and validated, the weights checked against it and, when they fit,
// written as a checkpoint. Every input must end in a checkpoint or an ImportError (the one line
// naming the file that the CLI prints); any other exception, a crash, a sanitizer report or a
// hang is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "trainer/config.h"
#include "trainer/hf_import.h"
#include "trainer/hf_layout.h"
#include "trainer/safetensors.h"

namespace {

namespace fs = std::filesystem;

// The weights' model: vocab 8, d_model 4, one layer, 2 heads, FFN 6, tied.
sy::Config tiny_llama() {
  sy::Config config;
  config.model = {8, 4, 4, 1, 2, 6, true};
  config.moe.num_experts = 0;
  return config;
}

void write_weights(const fs::path& path) {
  const sy::Config config = tiny_llama();
  std::vector<sy::SafetensorsEntry> entries;
  for (const sy::HfTensor& tensor : sy::hf_tensors(config, sy::HfArchitecture::llama))
    entries.push_back({tensor.name, tensor.hf_shape()});
  sy::SafetensorsWriter writer(path.string(), entries, sy::SafetensorsDType::f32);
  for (const sy::SafetensorsEntry& entry : entries) {
    int64_t numel = 1;
    for (const int64_t dim : entry.shape) numel *= dim;
    writer.write_next(std::vector<float>(static_cast<size_t>(numel), 0.5f));
  }
  writer.finish();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

fs::path folder;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  folder = fs::temp_directory_path() / ("sy_fuzz_hf_" + std::to_string(::getpid()));
  fs::create_directories(folder);
  write_weights(folder / "model.safetensors");
  if (const char* dir = sy::fuzz::seed_dir()) {
    const std::string common =
        R"("vocab_size": 8, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 6, "tie_word_embeddings": true, "max_position_embeddings": 4)";
    write_text(fs::path(dir) / "llama.json",
               R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", )" + common + "}");
    write_text(fs::path(dir) / "llama31.json",
               R"({"architectures": ["LlamaForCausalLM"], "num_key_value_heads": 1, )"
               R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  "rope_theta": 500000.0, )" +
                   common + "}");
    write_text(fs::path(dir) / "qwen3_moe.json",
               R"({"architectures": ["Qwen3MoeForCausalLM"], "head_dim": 4, "num_experts": 4,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 3, "mlp_only_layers": [0],
                  "decoder_sparse_step": 1, "norm_topk_prob": true, "use_sliding_window": false,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, )" +
                   common + "}");
    write_text(fs::path(dir) / "mixtral.json",
               R"({"model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 1,
                  "sliding_window": null, )" +
                   common + "}");
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_text(folder / "config.json", std::string(reinterpret_cast<const char*>(data), size));
  try {
    sy::import_hf({folder.string(), (folder / "out.h5").string(), true});
  } catch (const sy::ImportError&) {
  } catch (const std::exception& other) {
    std::fprintf(stderr, "not an ImportError: %s\n", other.what());
    std::abort();
  }
  return 0;
}
