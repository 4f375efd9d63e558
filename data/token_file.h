// Token file (SPEC 5): one HDF5 file with 1-D integer datasets /train and /val and the attributes
// vocab_size and tokenizer. See docs/data.md for the exact layout.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct TokenData {
  std::vector<int32_t> train, val;
  int64_t vocab_size = 0;
  std::string tokenizer;
  // tokenizer "sentencepiece": the model file's bytes (dataset /tokenizer_model, uint8) and the
  // file name it had (its attribute `name`); empty otherwise.
  std::string tokenizer_model;
  std::string tokenizer_model_name;
};

// Largest vocabulary a token file may declare: tokens are held as int32 in memory.
constexpr int64_t kMaxVocabSize = int64_t{1} << 31;

// Reads a token file (and /tokenizer_model when present, checking that its `vocab_size`
// attribute equals the file's). Accepts any HDF5 integer element type (converted to int32) and checks that
// both datasets and both attributes are present and that every token is in [0, vocab_size).
// Throws std::runtime_error "<path>: <what is wrong>" on any problem.
TokenData read_token_file(const std::string& path);

// Writes a token file with the smallest element type that holds vocab_size-1 (uint8 up to 256,
// uint16 up to 65536, else int32). Written to path + ".tmp" and renamed into place, so that a
// reader never sees a half-written file. A non-empty tokenizer_model is stored as the uint8
// dataset /tokenizer_model with the attributes name (tokenizer_model_name) and vocab_size. Throws if a token is outside [0, vocab_size).
void write_token_file(const std::string& path, const std::vector<int32_t>& train,
                      const std::vector<int32_t>& val, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& tokenizer_model = {},
                      const std::string& tokenizer_model_name = {});

}  // namespace sy
