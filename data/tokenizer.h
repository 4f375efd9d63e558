// SentencePiece tokenizers (issue 13): training one, loading one from a model file or from the
// bytes a token file carries, and the tokenizer a token file was written with. The byte-level
// tokenizer and the Tokenizer interface are in data/prepare.h. See docs/data.md.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/prepare.h"

namespace sy {

struct TokenData;

// The `tokenizer` attribute of a token file whose ids came from a SentencePiece model; the model
// itself is stored beside the tokens (data/token_file.h).
inline constexpr const char* kSentencePieceTokenizer = "sentencepiece";

// `switchyard tokenizer train`. The model is trained for language modelling rather than
// translation: text is not normalised (identity rule, whitespace kept as is) and characters
// outside the vocabulary fall back to their UTF-8 bytes, so decode(encode(text)) == text.
struct SentencePieceTrainOptions {
  // Learned from line by line (CorpusLines, data/prepare.h): the text prepare-data tokenises.
  // format "text": text files or folders, plain or compressed; "brown": a Brown corpus folder or
  // file, its words without their tags; "jsonl": JSON-lines files, the documents' member `field`.
  std::vector<std::string> inputs;
  std::string format = "text";
  std::string field = "text";
  // 0: every line; else a uniform sample of this many lines (the same sample every run), which
  // bounds the memory and time of training on a large corpus.
  int64_t sample_lines = 0;
  int64_t vocab_size = 8000;        // with byte fallback at least 256 + 3 + the distinct characters
  std::string model_type = "bpe";   // bpe | unigram
  // Pieces kept whole wherever they occur, in training and in encoding: a chat format's markers
  // (<|im_start|>, <|im_end|>), which would otherwise be cut into pieces of text.
  std::vector<std::string> user_defined_symbols;
  std::string output = "tok.model";
};

// Trains and writes the model file to options.output (via output + ".tmp", renamed into place).
// Returns the vocabulary size of the written model. Throws std::runtime_error with
// SentencePiece's own reason.
int64_t train_sentencepiece(const SentencePieceTrainOptions& options);

// A SentencePiece tokenizer from a serialized model (the bytes of a .model file). `source` names
// where the bytes came from, for error messages.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_bytes,
                                              const std::string& source);

// The bytes of a model file; throws "<path>: ..." when it cannot be read.
std::string read_tokenizer_model_file(const std::string& path);

// What prepare-data's --tokenizer names: "bytes", the path of a SentencePiece model file, of a
// tokenizer.json (data/hf_tokenizer.h; its EOS from the tokenizer_config.json beside it), or of
// a model folder holding either (tokenizer.model first, as import reads it).
std::unique_ptr<Tokenizer> tokenizer_from_option(const std::string& name_or_path);

// The tokenizer a token file was written with: bytes, or the SentencePiece model or tokenizer.json
// it carries.
// Throws for any other name (token formats may store a label such as "gpt2" with no model).
std::unique_ptr<Tokenizer> tokenizer_of(const TokenData& data, const std::string& path);

}  // namespace sy
