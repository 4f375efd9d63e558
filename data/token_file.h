// Token file (SPEC 5): one HDF5 file with 1-D integer datasets /train and /val and the attributes
// vocab_size and tokenizer. See docs/data.md for the exact layout.
#pragma once
#include <H5Ipublic.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "data/token_window.h"

namespace sy {

struct TokenData {
  std::vector<int32_t> train, val;
  int64_t vocab_size = 0;
  std::string tokenizer;
  // tokenizer "sentencepiece" or "huggingface": the model file's bytes (dataset /tokenizer_model,
  // uint8) and the file name it had (its attribute `name`); empty otherwise.
  std::string tokenizer_model;
  std::string tokenizer_model_name;
  // huggingface: the EOS token's text (the attribute `eos_token` of /tokenizer_model), which a
  // tokenizer.json does not name itself; empty when there is none.
  std::string tokenizer_eos_token;
  // sft: the chat format its conversations were rendered in (the root attribute chat_template,
  // data/chat_template.h), which generate --chat then renders its prompt in; empty: none. And
  // the system message put first where a conversation had none (chat_system, --system).
  std::string chat_template, chat_system;
  // Document boundaries (/train_doc_starts and /val_doc_starts, docs/data.md "Token file"): where
  // each split's documents start, as TokenSource::document_starts() gives them. `documents`
  // false (and both empty): the file records none.
  bool documents = false;
  std::vector<int64_t> train_doc_starts, val_doc_starts;
};

// Largest vocabulary a token file may declare: tokens are held as int32 in memory.
constexpr int64_t kMaxVocabSize = int64_t{1} << 31;

// Reads a token file (and /tokenizer_model when present, checking that its `vocab_size`
// attribute equals the file's). Accepts any HDF5 integer element type (converted to int32) and
// checks that both datasets and both attributes are present and that every token is in
// [0, vocab_size). Document starts, when the file has them, are read and checked (both datasets
// or neither; each as check_document_starts in data/token_window.h says). Loss masks are not
// read (open_token_file reads them). Throws std::runtime_error "<path>: <what is wrong>".
TokenData read_token_file(const std::string& path);

// Writes a token file with the smallest element type that holds vocab_size-1 (uint8 up to 256,
// uint16 up to 65536, else int32). Written to path + ".tmp" and renamed into place, so that a
// reader never sees a half-written file. A non-empty tokenizer_model is stored as the uint8
// dataset /tokenizer_model with the attributes name (tokenizer_model_name), vocab_size and, when
// not empty, eos_token. Throws if a token is outside [0, vocab_size).
void write_token_file(const std::string& path, const std::vector<int32_t>& train,
                      const std::vector<int32_t>& val, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& tokenizer_model = {},
                      const std::string& tokenizer_model_name = {},
                      const std::string& tokenizer_eos_token = {});

// The same for `data` (its tokens, vocab_size, tokenizer fields and chat_template) and, when
// data.documents, /train_doc_starts and /val_doc_starts (int64), checked as
// check_document_starts says before anything is written.
void write_token_file(const std::string& path, const TokenData& data);

// ---- The tokenizer alone: token files and checkpoints carry it the same way -------------------
// The root attribute `tokenizer` and, for a SentencePiece model or a tokenizer.json, the uint8
// dataset /tokenizer_model with the attributes name, vocab_size and (optional) eos_token
// (docs/data.md, docs/checkpoint.md). The fields used are TokenData's vocab_size, tokenizer,
// tokenizer_model, tokenizer_model_name and tokenizer_eos_token, and chat_template and
// chat_system (the root attributes of those names, each when not empty).

// A token file's tokenizer and vocab_size, without reading its tokens (train and val empty).
// Throws like read_token_file.
TokenData read_token_file_tokenizer(const std::string& path);

// Writes `tokenizer` into the open HDF5 file `file` (a checkpoint): the root attribute
// `tokenizer`, and /tokenizer_model when tokenizer_model is not empty (its vocab_size attribute
// is tokenizer.vocab_size). `path` names the file in errors.
void write_tokenizer(hid_t file, const TokenData& tokenizer, const std::string& path);

// Reads back what write_tokenizer wrote; vocab_size is /tokenizer_model's, 0 without a model.
// Returns false, reading nothing, when `file` has no attribute `tokenizer` (a checkpoint written
// before checkpoints carried it).
bool read_tokenizer(hid_t file, TokenData& tokenizer, const std::string& path);

// A token file opened for reading by window: the attributes and the tokenizer model are read, the
// tokens stay on disk. A contiguous dataset of little-endian integers (what write_token_file and
// TokenFileWriter write) is read with pread at its file offset (H5Dget_offset) and converted per
// window, with no HDF5 call after opening; any other layout (chunked, compressed, h5py's) through
// HDF5 hyperslabs, serialised by one lock. Each token is checked against vocab_size when read
// (docs/data.md says why there is no pass over the file at open time).
struct TokenFile {
  int64_t vocab_size = 0;
  std::string tokenizer;
  std::string tokenizer_model;
  std::string tokenizer_model_name;
  std::string tokenizer_eos_token;
  std::string chat_template, chat_system;
  std::shared_ptr<const TokenSource> train, val;
};

// Same checks at open time as read_token_file but the per-token range check, with the same
// messages. A file with loss masks (/train_mask and /val_mask) gives masked splits (MaskedTokens).
// A file with document starts (/train_doc_starts and /val_doc_starts) has them read into memory
// and checked; its splits' document_starts() return them. Throws std::runtime_error "<path>:
// <what is wrong>".
TokenFile open_token_file(const std::string& path);

// A token file's tokenizer and chat format as TokenData holds them (no tokens): what
// tokenizer_of (data/tokenizer.h) builds the tokenizer from.
TokenData tokenizer_data(const TokenFile& file);

// Whether `path` is an HDF5 file with a /train link (a token file, not a checkpoint). Never
// throws: anything that cannot be opened is "no", for the caller's own reader to explain.
bool is_token_file(const std::string& path);

// data.train_paths' token files (a mixture, docs/data.md), one per entry, opened once each:
// `path_file`, data.path's already open, where an entry names data.path.
std::vector<TokenFile> open_train_files(const DataConfig& data, const TokenFile& path_file);

struct TokenSpill;  // one split's tokens on their way to the file (data/token_file.cpp)

// Writes a token file in bounded memory, whatever its length: tokens are appended split by split
// in any order, spilled to <path>.tmp.train and <path>.tmp.val in the stored element type, and
// finish() copies them into the contiguous datasets of <path>.tmp (so the file has the layout
// write_token_file gives, and a reader can pread it), then renames it to <path>. Destroying an
// unfinished writer removes every temporary file; nothing is ever left under <path>.
// `masked`: the file gets loss masks, /train_mask and /val_mask (docs/data.md, "Loss masks").
// `tokenizer_eos_token`: as write_token_file's.
// `documents`: the file gets document starts, /train_doc_starts and /val_doc_starts, marked with
// start_document_train() and start_document_val() between appends; they are kept in memory (8
// bytes a document) until finish().
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, int64_t vocab_size, const std::string& tokenizer,
                  const std::string& tokenizer_model = {},
                  const std::string& tokenizer_model_name = {}, bool masked = false,
                  const std::string& tokenizer_eos_token = {}, bool documents = false);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Throws if a token is outside [0, vocab_size), naming the split and its position. `mask`: one
  // 0 or 1 per token (1: a trained target), only for a masked file; null: every token is one.
  void append_train(const int32_t* tokens, int64_t count, const uint8_t* mask = nullptr);
  void append_val(const int32_t* tokens, int64_t count, const uint8_t* mask = nullptr);
  // Only for a writer made with documents (else they throw): the next token appended to that
  // split starts a document. The first token of a split always starts one, marked or not (no
  // document precedes it there), and a document that gets no token before the next mark or
  // finish() is none, so the starts stay strictly ascending and inside the split.
  void start_document_train();
  void start_document_val();
  // The chat format that the conversations were rendered in, and the system message put first
  // where they had none (TokenData::chat_template, chat_system).
  void set_chat_template(const std::string& chat_template, const std::string& chat_system = {}) {
    chat_template_ = chat_template;
    chat_system_ = chat_system;
  }
  int64_t train_size() const;
  int64_t val_size() const;
  void finish();

 private:
  void append(bool is_val, const int32_t* tokens, int64_t count, const uint8_t* mask);
  void start_document(bool is_val);
  std::vector<TokenSpill*> spills() const;  // the tokens' and, when masked, the masks'

  std::string path_;
  int64_t vocab_size_;
  std::string tokenizer_, tokenizer_model_, tokenizer_model_name_;
  bool masked_;
  std::string tokenizer_eos_token_;
  std::string chat_template_, chat_system_;
  bool documents_;
  // documents_: each split's starts so far, and whether its next token starts a document.
  std::vector<int64_t> train_starts_, val_starts_;
  bool train_start_pending_ = false, val_start_pending_ = false;
  std::unique_ptr<TokenSpill> train_, val_, train_mask_, val_mask_;
  bool finished_ = false;
};

}  // namespace sy
