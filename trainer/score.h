// Multiple-choice scoring, `switchyard score` (docs/data.md, "Multiple choice"): the model's
// log-likelihood of each choice given the context, and the choice it ranks first, as
// lm-evaluation-harness's multiple-choice tasks score them (acc and acc_norm). Every rank runs the
// same forwards (the expert all-to-alls need the whole EP group); the caller prints on rank 0.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/multiple_choice.h"
#include "data/prepare.h"
#include "model/transformer.h"

namespace sy {

// One choice's tokens: the context encoded, then `delimiter` + the choice encoded as its
// continuation (Tokenizer::encode_continuation), the context's first tokens dropped where the two
// are more than `max_tokens`. Throws naming the record where the context has no token or the
// continuation alone takes max_tokens.
struct ChoiceTokens {
  std::vector<int32_t> context, continuation;
};
ChoiceTokens choice_tokens(const Tokenizer& tokenizer, const ChoiceExample& example, size_t choice,
                           const std::string& delimiter, int64_t max_tokens);

struct ChoiceScore {
  std::vector<double> loglik;  // [choices] the sum of log p over the choice's tokens
  int64_t choice = 0;          // the choice of the highest loglik (ties: the first)
  // The highest loglik per character of the choice (Unicode code points, the delimiter not
  // counted): lm-evaluation-harness's acc_norm.
  int64_t choice_norm = 0;
};
// Each choice's sequence (context and continuation, at most model.seq_len + 1 tokens) is one
// forward of its own length, routed on its own (Transformer::sequence_loss_sum).
ChoiceScore score_example(Transformer& model, const Tokenizer& tokenizer,
                          const ChoiceExample& example, const std::string& delimiter);

struct ScoreTotals {
  int64_t examples = 0;
  int64_t right = 0, right_norm = 0;  // ChoiceScore::choice, choice_norm equal to the answer
  double accuracy() const { return static_cast<double>(right) / static_cast<double>(examples); }
  double accuracy_norm() const {
    return static_cast<double>(right_norm) / static_cast<double>(examples);
  }
};
// Scores `examples` in order, calling each(example, score) after each one (when set).
ScoreTotals score_examples(
    Transformer& model, const Tokenizer& tokenizer, const std::vector<ChoiceExample>& examples,
    const std::string& delimiter,
    const std::function<void(const ChoiceExample&, const ChoiceScore&)>& each = {});

// The longest sequence score_example runs for `examples` (for a model no longer than needed).
int64_t longest_choice_sequence(const Tokenizer& tokenizer,
                                const std::vector<ChoiceExample>& examples,
                                const std::string& delimiter, int64_t max_tokens);

}  // namespace sy
