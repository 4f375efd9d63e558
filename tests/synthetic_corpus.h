// A learnable corpus for the training tests: a text repeated, as byte tokens, written as a token
// file whose first train_percent% is /train and the rest /val.
#pragma once
#include <string>
#include <vector>

#include "data/token_file.h"

namespace sy::test {

inline void write_repeated_text(const std::string& path, const std::string& text, int repeats,
                                int train_percent) {
  std::vector<int32_t> tokens;
  for (int repeat = 0; repeat < repeats; ++repeat)
    for (unsigned char c : text) tokens.push_back(c);
  const size_t split = tokens.size() * train_percent / 100;
  write_token_file(path, {tokens.begin(), tokens.begin() + split},
                   {tokens.begin() + split, tokens.end()}, 256, "bytes");
}

// Supervised fine-tuning data with a loss mask (docs/data.md, "Loss masks"): `repeats` copies of
// a few question-answer pairs in bytes, the mask 1 on the answers only; the first train_percent
// of the tokens are /train. `documents`: each example is a document (/train_doc_starts and
// /val_doc_starts, docs/data.md "Document masking").
inline void write_masked_examples(const std::string& path, int repeats, int train_percent,
                                  bool documents = false) {
  const char* const examples[][2] = {{"Q: 3+4? A:", " 7.\n"},
                                     {"Q: red+blue? A:", " purple.\n"},
                                     {"Q: 2*8? A:", " 16.\n"},
                                     {"Q: sky? A:", " blue.\n"}};
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  std::vector<size_t> example_starts;
  for (int repeat = 0; repeat < repeats; ++repeat)
    for (const auto& example : examples) {
      example_starts.push_back(tokens.size());
      for (int part = 0; part < 2; ++part)
        for (const char* c = example[part]; *c; ++c) {
          tokens.push_back(static_cast<unsigned char>(*c));
          mask.push_back(part == 1 ? 1 : 0);
        }
    }
  const size_t split = tokens.size() * train_percent / 100;
  TokenFileWriter writer(path, 256, "bytes", {}, {}, /*masked=*/true, {}, documents);
  // Token by token, so that each example's first token can be marked as a document start.
  size_t next_example = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const bool val = t >= split;
    if (documents && next_example < example_starts.size() && example_starts[next_example] == t) {
      val ? writer.start_document_val() : writer.start_document_train();
      ++next_example;
    }
    val ? writer.append_val(&tokens[t], 1, &mask[t]) : writer.append_train(&tokens[t], 1, &mask[t]);
  }
  writer.finish();
}

}  // namespace sy::test
