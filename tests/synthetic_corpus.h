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

}  // namespace sy::test
