// Sampling text from a trained model, so that a user can see what it learned. Every rank runs
// the same forwards (the expert all-to-alls need the whole EP group) with the same random
// stream, so they draw the same tokens; the caller prints on rank 0.
#pragma once
#include <cstdint>
#include <string>

#include "data/prepare.h"
#include "model/transformer.h"

namespace sy {

struct GenerateOptions {
  std::string prompt;
  int64_t tokens = 200;       // new tokens to sample
  double temperature = 0.8;   // 0: greedy (the most likely token each time)
  uint64_t seed = 0;
};

// The prompt followed by the sampled continuation. The context is the last seq_len tokens.
std::string generate(Transformer& model, const Tokenizer& tokenizer,
                     const GenerateOptions& options);

}  // namespace sy
