// Sampling: logits at a position ignore what follows it (causal), greedy decoding is
// deterministic, sampling is reproducible from its seed, and the text starts with the prompt.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "data/prepare.h"
#include "parallel/local_exchange.h"
#include "tests/sharp_model.h"
#include "trainer/generate.h"

namespace sy {
namespace {

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  std::unique_ptr<LocalExchange> exchange;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> bytes = make_tokenizer("bytes");
  Fixture() {
    exchange = std::make_unique<LocalExchange>(*backend, 4);
    model = test::sharp_model(*backend, *exchange, test::small_byte_moe());
  }
};

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    diff = std::max(diff, std::abs(a[i] - b[i]));
  return diff;
}

TEST(Generate, LogitsAtAPositionIgnoreLaterTokens) {
  Fixture f;
  std::vector<int32_t> a(12), b(12);
  for (int i = 0; i < 12; ++i) a[i] = b[i] = 'a' + i;
  b[7] = 'z';
  b[11] = 'q';
  EXPECT_EQ(f.model->logits_at(a, 1, 0, 6), f.model->logits_at(b, 1, 0, 6));
  EXPECT_NE(f.model->logits_at(a, 1, 0, 7), f.model->logits_at(b, 1, 0, 7));
  EXPECT_THROW(f.model->logits_at(a, 1, 0, 12), std::runtime_error);
}

// generate runs the model at the length of the prompt and the tokens asked for (main.cpp's
// generation_config): the same model at a shorter seq_len gives the same logits at every position
// it holds (within rounding: BLAS may sum the rows of a longer GEMM otherwise), and the same
// tokens, dropless.
TEST(Generate, AShorterModelGeneratesTheSameTokens) {
  Fixture f;
  TransformerOptions options = f.model->options();
  options.model.seq_len = 8;
  Transformer shorter(*f.backend, options, f.exchange.get());
  const std::vector<Param*> from = f.model->params(), to = shorter.params();
  ASSERT_EQ(from.size(), to.size());
  for (size_t k = 0; k < from.size(); ++k) f.backend->copy(to[k]->value, from[k]->value);
  shorter.refresh_compute_weights();
  std::vector<int32_t> window(12, 0), short_window(8, 0);
  for (int i = 0; i < 8; ++i) window[i] = short_window[i] = 'c' + 3 * i;
  for (int position : {0, 3, 7})
    EXPECT_LE(max_abs_diff(shorter.logits_at(short_window, 1, 0, position),
                           f.model->logits_at(window, 1, 0, position)),
              1e-5);
  for (const double temperature : {0.0, 1.5}) {
    const GenerateOptions fits{"the", 5, temperature, 3, {}};
    EXPECT_EQ(generate(shorter, *f.bytes, fits), generate(*f.model, *f.bytes, fits));
  }
}

// A copy of `from` with `options` (the same parameters).
std::unique_ptr<Transformer> copy_model(Fixture& f, Transformer& from, TransformerOptions options) {
  auto model = std::make_unique<Transformer>(*f.backend, options, f.exchange.get());
  const std::vector<Param*> source = from.params(), target = model->params();
  EXPECT_EQ(source.size(), target.size());
  for (size_t k = 0; k < source.size(); ++k) f.backend->copy(target[k]->value, source[k]->value);
  model->refresh_compute_weights();
  return model;
}

// The key/value cache: the prompt's logits, then each next token's, are those of the whole text
// (logits_at) within rounding: 1e-9 in f64, with grouped-query attention, QK-norm per head,
// another rotary base, a shared expert and a capacity factor (a lone token is never dropped, and
// the whole text here drops nothing either). The cache holds seq_len positions.
TEST(Generate, TheCacheGivesTheLogitsOfTheWholeText) {
  Fixture f;
  TransformerOptions plain = f.model->options();
  TransformerOptions variant = plain;
  variant.model.n_heads = 4;
  variant.model.n_kv_heads = 2;
  variant.model.qk_norm = QkNorm::per_head;
  variant.model.rope_theta = 5e5;
  variant.moe.shared_expert_hidden = 8;
  variant.moe.capacity_factor = 8.0;
  for (TransformerOptions options : {plain, variant}) {
    options.dtype = options.master_dtype = DType::f64;
    const std::unique_ptr<Transformer> sharp = test::sharp_model(*f.backend, *f.exchange, options);
    Transformer& model = *sharp;
    const std::vector<int32_t> text = f.bytes->encode("the experts!");  // 12 = seq_len
    std::vector<double> logits = model.decode_prompt(std::span(text).first(5));
    for (int64_t at = 5;; ++at) {
      SCOPED_TRACE(at);
      EXPECT_EQ(model.decoded_tokens(), at);
      std::vector<int32_t> window(text.begin(), text.begin() + at);
      window.resize(12, 0);
      EXPECT_LE(max_abs_diff(logits, model.logits_at(window, 1, 0, at - 1)), 1e-9);
      if (at == 12) break;
      logits = model.decode_next(text[at]);
    }
    EXPECT_THROW(model.decode_next(1), std::runtime_error);  // 12 positions, all taken
    EXPECT_THROW(model.decode_prompt(f.bytes->encode("thirteen byte")), std::runtime_error);
    // A new prompt starts over.
    EXPECT_LE(max_abs_diff(model.decode_prompt(std::span(text).first(3)),
                           model.logits_at(std::vector<int32_t>(text), 1, 0, 2)),
              1e-9);
  }
}

// generate with and without the cache: the same tokens (greedy and sampled), within the model's
// length and past it, where the window moves (prompt 4 + 20 tokens > seq_len 12).
TEST(Generate, TheCacheGeneratesTheTokensOfTheWholeText) {
  Fixture f;
  TransformerOptions options = f.model->options();
  options.dtype = options.master_dtype = DType::f64;
  const std::unique_ptr<Transformer> model = copy_model(f, *f.model, options);
  for (const double temperature : {0.0, 1.0})
    for (const int64_t tokens : {8, 20}) {
      GenerateOptions cached{"the ", tokens, temperature, 3, {}};
      GenerateOptions uncached = cached;
      uncached.kv_cache = false;
      EXPECT_EQ(generate(*model, *f.bytes, cached), generate(*model, *f.bytes, uncached))
          << temperature << " " << tokens;
    }
}

TEST(Generate, GreedyIsDeterministicAndSamplingFollowsTheSeed) {
  Fixture f;
  GenerateOptions greedy{"the experts", 30, 0.0, 1, {}};
  const std::string text = generate(*f.model, *f.bytes, greedy);
  EXPECT_EQ(text.size(), std::string("the experts").size() + 30);  // runs past seq_len 12
  EXPECT_EQ(text.rfind("the experts", 0), 0u);
  greedy.seed = 2;
  EXPECT_EQ(generate(*f.model, *f.bytes, greedy), text) << "greedy ignores the seed";

  GenerateOptions sampled{"the experts", 30, 1.5, 7, {}};
  const std::string first = generate(*f.model, *f.bytes, sampled);
  EXPECT_EQ(generate(*f.model, *f.bytes, sampled), first);
  sampled.seed = 8;
  EXPECT_NE(generate(*f.model, *f.bytes, sampled), first);
}

// --prompt-ids: the same continuation as the text prompt whose ids they are, without a
// tokenizer (drawn from the whole model vocabulary, here the bytes').
TEST(Generate, IdsContinueAsTheirText) {
  Fixture f;
  const GenerateOptions options{"the experts", 20, 0.0, 1, {}};
  const std::string text = generate(*f.model, *f.bytes, options);
  const std::vector<int32_t> ids =
      generate_ids(*f.model, f.bytes->encode("the experts"), 256, options);
  EXPECT_EQ(f.bytes->decode(ids), text);
  // A stop id (generate passes the tokenizer's end-of-sequence token) ends the continuation
  // right after its first sampling; the tokens before it are the same.
  const size_t prompt_length = f.bytes->encode("the experts").size();
  const int32_t stop = ids[prompt_length + 4];
  const size_t first_stop = std::find(ids.begin() + prompt_length, ids.end(), stop) - ids.begin();
  const std::vector<int32_t> stopped =
      generate_ids(*f.model, f.bytes->encode("the experts"), 256, options, stop);
  EXPECT_EQ(stopped, std::vector<int32_t>(ids.begin(), ids.begin() + first_stop + 1));
  EXPECT_EQ(parse_token_ids(" 116,104 101\n"), (std::vector<int32_t>{116, 104, 101}));
  for (const char* bad : {"", " , ", "1 x", "-3", "2147483648", "1.5"})
    EXPECT_THROW(parse_token_ids(bad), std::runtime_error) << bad;
  try {
    generate_ids(*f.model, {1, 256}, 256, options);
    FAIL() << "an id past the vocabulary";
  } catch (const std::runtime_error& error) {
    EXPECT_STREQ(error.what(),
                 "--prompt-ids: token 256 is outside the model's vocabulary [0, 256)");
  }
}

// Calls check(logits, token) for each token of `ids` after the prompt's, with the logits it was
// drawn from (prompt and tokens within the fixture's seq_len 12: no sliding window).
template <typename Check>
void for_each_draw(Fixture& f, const std::vector<int32_t>& ids, size_t prompt_size, Check check) {
  for (size_t at = prompt_size; at < ids.size(); ++at) {
    std::vector<int32_t> window(12, 0);
    std::copy(ids.begin(), ids.begin() + static_cast<int64_t>(at), window.begin());
    SCOPED_TRACE(at);
    check(f.model->logits_at(window, 1, 0, static_cast<int64_t>(at) - 1), ids[at]);
  }
}

// Top-k and top-p (nucleus) sampling: every drawn token is among the k most likely at its
// position, or in the nucleus, one token kept either way is greedy decoding, and keeping all
// changes nothing.
TEST(Generate, TopKAndTopPDrawFromTheMostLikely) {
  Fixture f;
  const std::vector<int32_t> prompt = f.bytes->encode("ab");
  const std::vector<int32_t> greedy = generate_ids(*f.model, prompt, 256, {"", 10, 0.0, 4, {}});
  for (const int64_t top_k : {1, 3}) {
    SCOPED_TRACE(top_k);
    for (const uint64_t seed : {1, 2, 3}) {
      GenerateOptions options{"", 10, 3.0, seed, {}};
      options.top_k = top_k;
      const std::vector<int32_t> ids = generate_ids(*f.model, prompt, 256, options);
      if (top_k == 1) EXPECT_EQ(ids, greedy);
      for_each_draw(f, ids, prompt.size(), [&](const std::vector<double>& logits, int32_t token) {
        EXPECT_LT(std::count_if(logits.begin(), logits.end(),
                                [&](double logit) { return logit > logits[token]; }),
                  top_k);
      });
    }
  }
  // The nucleus of 0.5 at temperature 3: the tokens more likely than the drawn one hold less
  // than half the probability.
  GenerateOptions nucleus{"", 10, 3.0, 5, {}};
  nucleus.top_p = 0.5;
  for_each_draw(f, generate_ids(*f.model, prompt, 256, nucleus), prompt.size(),
                [&](const std::vector<double>& logits, int32_t token) {
                  double total = 0.0, above = 0.0;
                  for (const double logit : logits) {
                    const double weight = std::exp(logit / 3.0);
                    total += weight;
                    if (logit > logits[token]) above += weight;
                  }
                  EXPECT_LT(above, 0.5 * total);
                });
  nucleus.top_p = 1e-9;  // the most likely token alone reaches it
  EXPECT_EQ(generate_ids(*f.model, prompt, 256, nucleus), greedy);
  GenerateOptions all{"", 10, 3.0, 5, {}};
  const std::vector<int32_t> unfiltered = generate_ids(*f.model, prompt, 256, all);
  all.top_k = 256;
  all.top_p = 1.0;
  EXPECT_EQ(generate_ids(*f.model, prompt, 256, all), unfiltered);
}

TEST(Generate, BadOptions) {
  Fixture f;
  EXPECT_THROW(generate(*f.model, *f.bytes, {"", 5, 1.0, 0, {}}), std::runtime_error);
  EXPECT_THROW(generate(*f.model, *f.bytes, {"x", 5, -1.0, 0, {}}), std::runtime_error);
  GenerateOptions options{"x", 5, 1.0, 0, {}};
  options.top_k = -1;
  EXPECT_THROW(generate(*f.model, *f.bytes, options), std::runtime_error);
  options.top_k = 0;
  for (const double top_p : {0.0, -0.5, 1.5}) {
    options.top_p = top_p;
    EXPECT_THROW(generate(*f.model, *f.bytes, options), std::runtime_error) << top_p;
  }
}

}  // namespace
}  // namespace sy
