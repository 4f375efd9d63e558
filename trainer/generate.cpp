#include "trainer/generate.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "model/rng.h"

namespace sy {

namespace {

constexpr uint64_t kSampleDomain = 0x5A3B'1E00'0000'0003ull;  // apart from init and data streams

// The ids of `weights` outside top-k and top-p (GenerateOptions) get weight 0. Ranked by weight,
// ties to the lower id, so that the same logits always keep the same tokens.
void keep_top(std::vector<double>& weights, int64_t top_k, double top_p) {
  const int64_t n = static_cast<int64_t>(weights.size());
  std::vector<int64_t> ranked(n);
  for (int64_t i = 0; i < n; ++i) ranked[i] = i;
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int64_t a, int64_t b) { return weights[a] > weights[b]; });
  int64_t kept = top_k > 0 ? std::min(top_k, n) : n;
  if (top_p < 1.0) {
    double total = 0.0, sum = 0.0;
    for (int64_t r = 0; r < kept; ++r) total += weights[ranked[r]];
    int64_t r = 0;
    while (r < kept && sum < top_p * total) sum += weights[ranked[r++]];
    kept = std::max<int64_t>(r, 1);
  }
  for (int64_t r = kept; r < n; ++r) weights[ranked[r]] = 0.0;
}

// A token from softmax(logits / temperature) over the tokenizer's vocabulary (the model's may be
// larger: ids the tokenizer cannot decode are never drawn), after top-k and top-p.
int32_t sample(const std::vector<double>& logits, int64_t vocab, const GenerateOptions& options,
               double u) {
  const int64_t n = std::min<int64_t>(vocab, static_cast<int64_t>(logits.size()));
  const int64_t best = std::max_element(logits.begin(), logits.begin() + n) - logits.begin();
  if (options.temperature <= 0.0) return static_cast<int32_t>(best);
  std::vector<double> weights(n);
  for (int64_t i = 0; i < n; ++i)
    weights[i] = std::exp((logits[i] - logits[best]) / options.temperature);
  if (options.top_k > 0 || options.top_p < 1.0) keep_top(weights, options.top_k, options.top_p);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += weights[i];
  double threshold = u * total;
  for (int64_t i = 0; i < n; ++i) {
    threshold -= weights[i];
    if (threshold < 0.0) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(best);  // u * total rounded up to the total
}

}  // namespace

std::vector<int32_t> generate_ids(Transformer& model, std::vector<int32_t> prompt, int64_t vocab,
                                  const GenerateOptions& options, int32_t stop_id) {
  if (prompt.empty()) throw std::runtime_error("--prompt: must not be empty");
  if (options.tokens < 0) throw std::runtime_error("--tokens: must be >= 0");
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature))
    throw std::runtime_error("--temperature: must be a finite number >= 0");
  if (options.top_k < 0) throw std::runtime_error("--top-k: must be >= 0");
  if (!(options.top_p > 0.0 && options.top_p <= 1.0))
    throw std::runtime_error("--top-p: must be in (0, 1]");
  const int64_t model_vocab = model.options().model.vocab_size;
  for (const int32_t id : prompt)
    if (id < 0 || id >= model_vocab)
      throw std::runtime_error("--prompt-ids: token " + std::to_string(id) +
                               " is outside the model's vocabulary [0, " +
                               std::to_string(model_vocab) + ")");
  const int64_t S = model.options().model.seq_len;
  std::vector<int32_t> window(S, 0);
  // The window forward: the last S tokens, left-aligned (causal attention ignores the padding
  // after them).
  const auto logits_of_window = [&] {
    const int64_t length = std::min<int64_t>(S, static_cast<int64_t>(prompt.size()));
    std::copy(prompt.end() - length, prompt.end(), window.begin());
    return model.logits_at(window, 1, 0, length - 1);
  };
  // The cache serves while the text fits: past S tokens every position moves with the window,
  // and no kept key is valid any more.
  const auto fits = [&] { return static_cast<int64_t>(prompt.size()) <= S; };
  const bool cached = options.kv_cache && fits();
  CounterRng rng(key_combine(kSampleDomain, options.seed));
  for (int64_t i = 0; i < options.tokens; ++i) {
    const std::vector<double> logits = !cached || !fits() ? logits_of_window()
                                       : i == 0           ? model.decode_prompt(prompt)
                                                          : model.decode_next(prompt.back());
    prompt.push_back(sample(logits, vocab, options, rng.uniform()));
    if (prompt.back() == stop_id) break;
  }
  return prompt;
}

std::string generate(Transformer& model, const Tokenizer& tokenizer,
                     const GenerateOptions& options) {
  if (options.prompt.empty()) throw std::runtime_error("--prompt: must not be empty");
  return tokenizer.decode(generate_ids(model, tokenizer.encode(options.prompt),
                                       tokenizer.vocab_size(), options, tokenizer.eos_id()));
}

std::vector<int32_t> parse_token_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t at = 0;
  while (true) {
    at = text.find_first_not_of(" ,\t\n", at);
    if (at == std::string::npos) break;
    const size_t end = text.find_first_of(" ,\t\n", at);
    const std::string word = text.substr(at, end == std::string::npos ? end : end - at);
    int64_t id = -1;
    const auto [next, error] = std::from_chars(word.data(), word.data() + word.size(), id);
    if (error != std::errc() || next != word.data() + word.size() || id < 0 ||
        id > std::numeric_limits<int32_t>::max())
      throw std::runtime_error("--prompt-ids: \"" + word + "\" is not a token id");
    ids.push_back(static_cast<int32_t>(id));
    at = end;
  }
  if (ids.empty()) throw std::runtime_error("--prompt-ids: no token ids");
  return ids;
}

}  // namespace sy
