#include "trainer/score.h"

#include <algorithm>
#include <stdexcept>

#include "model/backend.h"

namespace sy {
namespace {

// Unicode code points of UTF-8 text (bytes that do not start a sequence not counted).
int64_t code_points(const std::string& text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

int64_t first_best(const std::vector<double>& values) {
  return std::max_element(values.begin(), values.end()) - values.begin();
}

}  // namespace

ChoiceTokens choice_tokens(const Tokenizer& tokenizer, const ChoiceExample& example, size_t choice,
                           const std::string& delimiter, int64_t max_tokens) {
  const std::string at = "record " + std::to_string(example.record) + ": ";
  ChoiceTokens tokens{tokenizer.encode(example.context),
                      tokenizer.encode_continuation(delimiter + example.choices.at(choice))};
  if (tokens.context.empty()) throw std::runtime_error(at + "the context encodes to no token");
  const int64_t room = max_tokens - static_cast<int64_t>(tokens.continuation.size());
  if (room < 1)
    throw std::runtime_error(at + "choice " + std::to_string(choice) + " is " +
                             std::to_string(tokens.continuation.size()) +
                             " tokens; the model reads " + std::to_string(max_tokens - 1) +
                             " at once (model.seq_len)");
  if (static_cast<int64_t>(tokens.context.size()) > room)
    tokens.context.erase(tokens.context.begin(), tokens.context.end() - room);
  return tokens;
}

ChoiceScore score_example(Transformer& model, const Tokenizer& tokenizer,
                          const ChoiceExample& example, const std::string& delimiter) {
  const int64_t max_tokens = model.options().model.seq_len + 1;
  ChoiceScore score;
  std::vector<double> per_character;
  for (size_t k = 0; k < example.choices.size(); ++k) {
    const ChoiceTokens tokens = choice_tokens(tokenizer, example, k, delimiter, max_tokens);
    // inputs: the sequence but its last token; the targets of the context's positions but its
    // last are not counted
    std::vector<int32_t> inputs = tokens.context;
    inputs.insert(inputs.end(), tokens.continuation.begin(), tokens.continuation.end() - 1);
    std::vector<int32_t> targets(tokens.context.size() - 1, kIgnoreTarget);
    targets.insert(targets.end(), tokens.continuation.begin(), tokens.continuation.end());
    score.loglik.push_back(-model.sequence_loss_sum(inputs, targets));
    per_character.push_back(score.loglik.back() / static_cast<double>(std::max<int64_t>(
                                                      1, code_points(example.choices[k]))));
  }
  score.choice = first_best(score.loglik);
  score.choice_norm = first_best(per_character);
  return score;
}

ScoreTotals score_examples(
    Transformer& model, const Tokenizer& tokenizer, const std::vector<ChoiceExample>& examples,
    const std::string& delimiter,
    const std::function<void(const ChoiceExample&, const ChoiceScore&)>& each) {
  ScoreTotals totals;
  for (const ChoiceExample& example : examples) {
    const ChoiceScore score = score_example(model, tokenizer, example, delimiter);
    ++totals.examples;
    totals.right += score.choice == example.answer;
    totals.right_norm += score.choice_norm == example.answer;
    if (each) each(example, score);
  }
  return totals;
}

int64_t longest_choice_sequence(const Tokenizer& tokenizer,
                                const std::vector<ChoiceExample>& examples,
                                const std::string& delimiter, int64_t max_tokens) {
  int64_t longest = 1;
  for (const ChoiceExample& example : examples)
    for (size_t k = 0; k < example.choices.size(); ++k) {
      const ChoiceTokens tokens = choice_tokens(tokenizer, example, k, delimiter, max_tokens);
      longest = std::max<int64_t>(longest, tokens.context.size() + tokens.continuation.size() - 1);
    }
  return longest;
}

}  // namespace sy
