// Sampling text from a trained model, so that a user can see what it learned. Every rank runs
// the same forwards (the expert all-to-alls need the whole EP group) with the same random
// stream, so they draw the same tokens; the caller prints on rank 0.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "model/transformer.h"

namespace sy {

struct GenerateOptions {
  std::string prompt;
  int64_t tokens = 200;       // new tokens to sample
  double temperature = 0.8;   // 0: greedy (the most likely token each time)
  uint64_t seed = 0;
  // The prompt as token ids instead (--prompt-ids): for a model whose tokenizer we cannot run
  // (an import of a model with a tokenizer.json only). Non-empty: `prompt` is not used.
  std::vector<int32_t> prompt_ids;
  // What a sampled token is drawn from, in this order (as transformers' generate filters): the
  // top_k most likely tokens (0: all), then the fewest most likely of those whose probabilities
  // after temperature sum to top_p at least (1: all). Greedy decoding ignores both.
  int64_t top_k = 0;
  double top_p = 1.0;
  // Keep each layer's keys and values (Transformer::decode_prompt): a forward of one token per
  // new token while the text fits in seq_len. false (--no-kv-cache): a forward over the whole
  // text every token, as past seq_len.
  bool kv_cache = true;
};

// The prompt followed by the sampled continuation, up to the tokenizer's end-of-sequence token
// if it samples one. The context is the last seq_len tokens. While the text fits in seq_len,
// each token is a forward of that token alone over the keys and values kept (kv_cache); past
// it, a forward over the last seq_len tokens, whose positions move with the window.
std::string generate(Transformer& model, const Tokenizer& tokenizer,
                     const GenerateOptions& options);

// The same over ids: `prompt` followed by the continuation, each token drawn from the first
// `vocab` logits (the ids a tokenizer can decode; model.vocab_size without one). Throws naming
// --prompt-ids when a prompt id is outside [0, model.vocab_size). Stops early after sampling
// stop_id (generate passes the tokenizer's end-of-sequence token; -1: never).
std::vector<int32_t> generate_ids(Transformer& model, std::vector<int32_t> prompt, int64_t vocab,
                                  const GenerateOptions& options, int32_t stop_id = -1);

// "1 2 3" or "1,2,3" (spaces and commas between ids) -> the ids; throws naming --prompt-ids.
std::vector<int32_t> parse_token_ids(const std::string& text);

}  // namespace sy
