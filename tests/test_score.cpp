// Multiple-choice scoring (switchyard score): the questions read as HellaSwag, ARC and PIQA ship
// them, one-line errors naming the file, the line and the member; each choice's log-likelihood is
// the sum of its tokens' log-probabilities after the context (against the logits of a forward
// over the whole text); the context is cut from the left to fit; acc and acc_norm pick as
// lm-evaluation-harness does.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "data/multiple_choice.h"
#include "data/prepare.h"
#include "parallel/local_exchange.h"
#include "tests/sharp_model.h"
#include "tests/temp_folder.h"
#include "trainer/score.h"

namespace sy {
namespace {

using test::expect_error;

class MultipleChoice : public test::TempFolderTest {
 protected:
  MultipleChoice() : TempFolderTest("sy_choices") {}
  std::vector<ChoiceExample> read(const std::string& contents, const ChoiceFields& fields) {
    write_file("questions.jsonl", contents);
    return read_choice_examples(path("questions.jsonl"), fields);
  }
};

TEST_F(MultipleChoice, ReadsTheCommonLayouts) {
  const std::vector<ChoiceExample> plain =
      read(R"({"context": "2 + 2 =", "choices": ["3", "4"], "answer": 1})"
           "\n\n"
           R"({"context": "x", "choices": ["a", "b", "c"], "answer": "2", "other": null})"
           "\n",
           {});
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_EQ(plain[0].context, "2 + 2 =");
  EXPECT_EQ(plain[0].choices, (std::vector<std::string>{"3", "4"}));
  EXPECT_EQ(plain[0].answer, 1);
  EXPECT_EQ(plain[1].record, 1);
  EXPECT_EQ(plain[1].answer, 2);  // an index as a string, as HellaSwag's "label"

  const std::vector<ChoiceExample> hellaswag =
      read(R"({"ctx": "A man sits", "endings": ["down.", "up.", "on it.", "still."], "label": 3})",
           {"ctx", {"endings"}, "label"});
  EXPECT_EQ(hellaswag[0].choices.size(), 4u);
  EXPECT_EQ(hellaswag[0].answer, 3);

  const std::vector<ChoiceExample> arc =
      read(R"({"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"],)"
           R"( "label": ["A", "B", "C"]}, "answerKey": "B"})",
           {"question", {"choices"}, "answerKey"});
  EXPECT_EQ(arc[0].choices, (std::vector<std::string>{"ice", "steam", "rock"}));
  EXPECT_EQ(arc[0].answer, 1);

  const std::vector<ChoiceExample> piqa =
      read(R"({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "shout", "label": 0})",
           {"goal", {"sol1", "sol2"}, "label"});
  EXPECT_EQ(piqa[0].choices, (std::vector<std::string>{"twist the lid", "shout"}));
  EXPECT_EQ(piqa[0].answer, 0);

  write_file("array.json", R"([{"context": "a", "choices": ["b", "c"], "answer": 0},
    {"context": "d", "choices": ["e", "f"], "answer": 1}])");
  EXPECT_EQ(read_choice_examples(path("array.json"), {}, 1).size(), 1u);  // --limit 1
}

TEST_F(MultipleChoice, BadQuestionsNameTheFileTheLineAndTheMember) {
  const std::string file = path("questions.jsonl");
  const auto fails = [&](const std::string& record, const ChoiceFields& fields,
                         const std::vector<std::string>& fragments) {
    write_file("questions.jsonl", "\n" + record + "\n");  // the record on line 2
    std::vector<std::string> expected = {file + ": line 2: "};
    expected.insert(expected.end(), fragments.begin(), fragments.end());
    expect_error([&] { read_choice_examples(file, fields); }, expected);
  };
  fails(R"({"context": "a", "choices": ["b", "c"], "answer": 2})", {},
        {"field \"answer\" 2 is not a choice: there are 2"});
  fails(R"({"context": "a", "choices": ["b", "c"], "answer": -1})", {}, {"-1 is not a choice"});
  fails(R"({"context": "a", "choices": ["b"], "answer": 0})", {}, {"1 choices; a question needs"});
  fails(R"({"context": "a", "choices": ["b", 3], "answer": 0})", {},
        {"choices[1] is a number, not a string"});
  fails(R"({"context": "a", "choices": "b", "answer": 0})", {},
        {"field \"choices\" is a string, not an array"});
  fails(R"({"choices": ["b", "c"], "answer": 0})", {}, {"no field \"context\""});
  fails(R"({"context": "a", "choices": ["b", "c"]})", {}, {"no field \"answer\""});
  fails(R"({"context": "a", "choices": ["b", "c"], "answer": "B"})", {},
        {"field \"answer\" \"B\" is neither an index"});
  fails(R"({"context": "a", "choices": ["b", "c"], "answer": 1.5})", {},
        {"field \"answer\" is a number, not an index or a label"});
  fails(R"({"q": "a", "c": {"text": ["b", "c"], "label": ["A"]}, "k": "A"})", {"q", {"c"}, "k"},
        {"c has 2 texts and 1 labels"});
  fails(R"({"q": "a", "c": {"text": ["b", "c"], "label": ["A", "B"]}, "k": "E"})",
        {"q", {"c"}, "k"}, {"\"E\" is neither an index nor a choice's label"});
  fails(R"({"goal": "a", "sol1": "b"})", {"goal", {"sol1", "sol2"}, "label"},
        {"no field \"sol2\""});
  fails(R"({"context": "a", "choices": ["b", "c"], "answer": 0)", {}, {"invalid JSON"});
  write_file("empty.jsonl", "\n");
  expect_error([&] { read_choice_examples(path("empty.jsonl"), {}); },
               {path("empty.jsonl") + ": no examples"});
  expect_error([&] { read_choice_examples(path("missing.jsonl"), {}); }, {"missing.jsonl"});
}

struct Model {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  std::unique_ptr<LocalExchange> exchange = std::make_unique<LocalExchange>(*backend, 4);
  std::unique_ptr<Transformer> model =
      test::sharp_model(*backend, *exchange, test::small_byte_moe(DType::f64));
  std::unique_ptr<Tokenizer> bytes = make_tokenizer("bytes");

  // log p(text[at] | text[0..at)) summed over at in [from, text.size()), from forwards over the
  // whole window.
  double loglik(const std::string& text, size_t from) {
    const std::vector<int32_t> ids = bytes->encode(text);
    std::vector<int32_t> window(12, 0);
    std::copy(ids.begin(), ids.end() - 1, window.begin());
    double sum = 0;
    for (size_t at = from; at < ids.size(); ++at) {
      const std::vector<double> logits = model->logits_at(window, 1, 0, at - 1);
      const double top = *std::max_element(logits.begin(), logits.end());
      double total = 0;
      for (const double logit : logits) total += std::exp(logit - top);
      sum += logits[ids[at]] - top - std::log(total);
    }
    return sum;
  }
};

TEST(Score, AChoicesLogLikelihoodIsThatOfItsTokensAfterTheContext) {
  Model m;
  const ChoiceExample example{0, "the exp", {"erts", "ress", "é"}, 0};
  const ChoiceScore score = score_example(*m.model, *m.bytes, example, "");
  ASSERT_EQ(score.loglik.size(), 3u);
  for (size_t k = 0; k < 3; ++k)
    EXPECT_NEAR(score.loglik[k], m.loglik("the exp" + example.choices[k], 7), 1e-9) << k;
  EXPECT_EQ(score.choice,
            std::max_element(score.loglik.begin(), score.loglik.end()) - score.loglik.begin());
  // acc_norm: per character, "é" one character of two bytes
  const std::vector<double> per_character = {score.loglik[0] / 4, score.loglik[1] / 4,
                                             score.loglik[2] / 1};
  EXPECT_EQ(score.choice_norm,
            std::max_element(per_character.begin(), per_character.end()) - per_character.begin());
  // The delimiter goes before the choice and is scored with it.
  const ChoiceScore spaced = score_example(*m.model, *m.bytes, {0, "the", {"exp", "x"}, 0}, " ");
  EXPECT_NEAR(spaced.loglik[0], m.loglik("the exp", 3), 1e-9);

  const std::vector<ChoiceExample> examples = {example, {1, "the exp", {"erts", "ress"}, 1}};
  std::vector<int64_t> choices;
  const ScoreTotals totals = score_examples(
      *m.model, *m.bytes, examples, "",
      [&](const ChoiceExample&, const ChoiceScore& each) { choices.push_back(each.choice); });
  ASSERT_EQ(choices.size(), 2u);
  EXPECT_EQ(choices[0], score.choice);
  EXPECT_EQ(choices[1], score_example(*m.model, *m.bytes, examples[1], "").choice);
  EXPECT_EQ(totals.examples, 2);
  EXPECT_EQ(totals.right, (choices[0] == 0) + (choices[1] == 1));
}

// seq_len 12 reads 12 tokens, the 13 of a sequence but its last: a context and choice of more
// keep the context's last tokens; a choice that leaves no room for a token of context, or an
// empty context, is refused.
TEST(Score, LongContextsKeepTheirEnd) {
  Model m;
  const ChoiceExample example{4, "a long context", {"ending", "stop"}, 0};
  const ChoiceTokens tokens = choice_tokens(*m.bytes, example, 0, " ", 13);
  EXPECT_EQ(tokens.continuation, m.bytes->encode(" ending"));
  EXPECT_EQ(tokens.context, m.bytes->encode("ontext"));
  EXPECT_EQ(longest_choice_sequence(*m.bytes, {example}, " ", 13), 12);
  const ChoiceScore score = score_example(*m.model, *m.bytes, example, " ");
  EXPECT_NEAR(score.loglik[0], m.loglik("ontext ending", 6), 1e-9);
  EXPECT_EQ(choice_tokens(*m.bytes, {4, "a", {"twelve bytes"}, 0}, 0, "", 13).context.size(), 1u);
  expect_error(
      [&] {
        choice_tokens(*m.bytes, {4, "a", {"thirteen byte"}, 0}, 0, "", 13);
      },
      {"record 4: choice 0 is 13 tokens; the model reads 12 at once"});
  expect_error(
      [&] {
        choice_tokens(*m.bytes, {4, "", {"x", "y"}, 0}, 1, "", 13);
      },
      {"record 4: the context encodes to no token"});
}

}  // namespace
}  // namespace sy
