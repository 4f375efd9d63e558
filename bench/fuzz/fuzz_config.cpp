// libFuzzer: config text -> load_config (parse, overrides, validation). Every input must end in a
// Config or a std::exception (the CLI prints its what() as the one error line); a crash, a
// sanitizer report, a hang or any other throw is a finding.
#include <cstdint>
#include <exception>
#include <fstream>
#include <string>

#include "bench/fuzz/fuzz_input.h"
#include "trainer/config.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) {
    // The default config resolved, and a small MoE with overrides-style nesting.
    std::ofstream(std::string(dir) + "/default.yaml") << sy::config_to_yaml(sy::Config{});
    std::ofstream(std::string(dir) + "/tiny.yaml")
        << "model: {vocab_size: 256, seq_len: 16, d_model: 16, n_layers: 2, n_heads: 2}\n"
           "moe: {num_experts: 4, top_k: 2, expert_hidden: 16, layers: [0, 1]}\n"
           "train: {micro_batch_size: 2, steps: 10, recompute: layer}\n"
           "eval: {every: 0, tokens: 0}\n";
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("config", ".yaml", data, size);
  try {
    (void)sy::load_config(path, {"train.steps=7"});
  } catch (const std::exception&) {
  }
  return 0;
}
