#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "data/compressed_input.h"
#include "data/hf_tokenizer.h"
#include "data/prepare.h"
#include "data/token_file.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

// A varint of protobuf's wire format at `at`, which it moves past; nullopt past the end.
std::optional<uint64_t> read_varint(std::string_view bytes, size_t& at) {
  uint64_t value = 0;
  for (int shift = 0; at < bytes.size() && shift < 64; shift += 7) {
    const auto byte = static_cast<unsigned char>(bytes[at++]);
    value |= uint64_t{byte & 0x7Fu} << shift;
    if (!(byte & 0x80u)) return value;
  }
  return std::nullopt;
}

// Calls field(number, value) for each varint field of a serialized message, and
// message(number, bytes) for each length-delimited one; false when the bytes are not a message.
template <typename VarintField, typename BytesField>
bool for_each_field(std::string_view bytes, VarintField field, BytesField message) {
  size_t at = 0;
  while (at < bytes.size()) {
    const std::optional<uint64_t> key = read_varint(bytes, at);
    if (!key) return false;
    const uint64_t number = *key >> 3;
    switch (*key & 7) {
      case 0: {  // varint
        const std::optional<uint64_t> value = read_varint(bytes, at);
        if (!value) return false;
        field(number, *value);
        break;
      }
      case 1:  // 64-bit
      case 5:  // 32-bit
        at += (*key & 7) == 1 ? 8 : 4;
        break;
      case 2: {  // length-delimited
        const std::optional<uint64_t> length = read_varint(bytes, at);
        if (!length || *length > bytes.size() - at) return false;
        message(number, bytes.substr(at, *length));
        at += *length;
        break;
      }
      default:  // groups, long deprecated, and nothing else exists
        return false;
    }
  }
  return at == bytes.size();
}

// The NormalizerSpec flags that decide how SentencePiece encodes text that follows other text:
// sentencepiece_model.proto's ModelProto.normalizer_spec (field 3) and its add_dummy_prefix (3)
// and remove_extra_whitespaces (4), both true unless the model says otherwise. Several
// normalizer_spec fields merge, as protobuf merges a message field that occurs more than once.
struct WhitespaceRules {
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
};
constexpr uint64_t kNormalizerSpecField = 3, kAddDummyPrefixField = 3,
                   kRemoveExtraWhitespacesField = 4;

WhitespaceRules whitespace_rules(std::string_view model_bytes, const std::string& source) {
  WhitespaceRules rules;
  const auto normalizer_field = [&](uint64_t number, uint64_t value) {
    if (number == kAddDummyPrefixField) rules.add_dummy_prefix = value != 0;
    if (number == kRemoveExtraWhitespacesField) rules.remove_extra_whitespaces = value != 0;
  };
  bool normalizer_parsed = true;
  const bool parsed = for_each_field(
      model_bytes, [](uint64_t, uint64_t) {},
      [&](uint64_t number, std::string_view message) {
        if (number == kNormalizerSpecField)
          normalizer_parsed =
              normalizer_parsed &&
              for_each_field(message, normalizer_field, [](uint64_t, std::string_view) {});
      });
  if (!parsed || !normalizer_parsed)
    throw std::runtime_error(source +
                             ": not a SentencePiece model (its normalizer_spec cannot "
                             "be read)");
  return rules;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& model_bytes, const std::string& source)
      : model_bytes_(model_bytes), source_(source) {
    const auto status = processor_.LoadFromSerializedProto(model_bytes);
    if (!status.ok())
      throw std::runtime_error(source + ": not a SentencePiece model (" + status.ToString() + ")");
    vocab_size_ = processor_.GetPieceSize();
    if (vocab_size_ < 1) throw std::runtime_error(source + ": SentencePiece model has no pieces");
    load_continuation_processor();
  }
  std::string name() const override { return kSentencePieceTokenizer; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string model() const override { return model_bytes_; }
  std::string model_name() const override { return fs::path(source_).filename().string(); }
  int32_t eos_id() const override { return processor_.eos_id(); }
  std::vector<int32_t> encode(const std::string& text) const override {
    return encode_with(processor_, text);
  }
  std::vector<int32_t> encode_continuation(const std::string& text) const override {
    return encode_with(continuation_ ? *continuation_ : processor_, text);
  }
  std::string decode(const std::vector<int32_t>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); k++)
      if (tokens[k] < 0 || tokens[k] >= vocab_size_)
        throw std::runtime_error(source_ + ": token " + std::to_string(tokens[k]) + " at " +
                                 std::to_string(k) + " is outside [0, " +
                                 std::to_string(vocab_size_) + ")");
    std::string text;
    const auto status = processor_.Decode(std::vector<int>(tokens.begin(), tokens.end()), &text);
    if (!status.ok())
      throw std::runtime_error(source_ + ": cannot decode: " + status.ToString());
    return text;
  }

 private:
  std::vector<int32_t> encode_with(const sentencepiece::SentencePieceProcessor& processor,
                                   const std::string& text) const {
    std::vector<int> ids;
    const auto status = processor.Encode(text, &ids);
    if (!status.ok()) throw std::runtime_error(source_ + ": cannot encode: " + status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  // A model that adds a dummy prefix and keeps whitespace as it is (ours, Llama's and Mistral's)
  // encodes a whole sequence with one "▁" before its first word; the same model without the
  // prefix encodes what follows a join as the whole would (transformers' Llama tokenizer, not
  // in legacy mode, does the same). Appending a second normalizer_spec that sets
  // add_dummy_prefix false makes that model. A model that removes extra whitespace drops the
  // spaces at a join's ends whatever we do; there the prefix stands in for them, so it keeps it.
  void load_continuation_processor() {
    const WhitespaceRules rules = whitespace_rules(model_bytes_, source_);
    if (!rules.add_dummy_prefix || rules.remove_extra_whitespaces) return;
    // Field 3 (length-delimited, 2 bytes) holding field 3 (varint) = 0.
    const std::string without_prefix = model_bytes_ + std::string("\x1a\x02\x18\x00", 4);
    continuation_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = continuation_->LoadFromSerializedProto(without_prefix);
    if (!status.ok())
      throw std::runtime_error(source_ + ": cannot load the model without its dummy prefix (" +
                               status.ToString() + ")");
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> continuation_;  // null: processor_'s
  std::string model_bytes_, source_;
  int64_t vocab_size_ = 0;
};

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string temporary_path = path + ".tmp";
  std::error_code error;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::create_directories(parent, error) && error)
    throw std::runtime_error(path + ": cannot create folder " + parent.string() + ": " +
                             error.message());
  {
    std::ofstream out(temporary_path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      fs::remove(temporary_path, error);
      throw std::runtime_error(temporary_path + ": cannot write");
    }
  }
  fs::rename(temporary_path, path, error);
  if (error) {
    std::error_code ignored;
    fs::remove(temporary_path, ignored);
    throw std::runtime_error(path + ": cannot rename " + temporary_path + " into place: " +
                             error.message());
  }
}

// CorpusLines as SentencePiece's SentenceIterator. An exception from the reader ends the
// iteration with an error status; rethrow() then throws it as it was.
class CorpusSentences : public sentencepiece::SentenceIterator {
 public:
  explicit CorpusSentences(CorpusLines& lines) : lines_(lines) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    try {
      done_ = !lines_.next(line_);
    } catch (...) {
      error_ = std::current_exception();
      done_ = true;
    }
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    if (!error_) return {};
    return {sentencepiece::util::StatusCode::kDataLoss, "the input could not be read"};
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  CorpusLines& lines_;
  std::string line_;
  bool done_ = false;
  std::exception_ptr error_;
};

}  // namespace

int64_t train_sentencepiece(const SentencePieceTrainOptions& options) {
  if (options.inputs.empty()) throw std::runtime_error("tokenizer train: no --input");
  if (options.model_type != "bpe" && options.model_type != "unigram")
    throw std::runtime_error("tokenizer train: --model-type '" + options.model_type +
                             "' (known: bpe, unigram)");
  if (options.vocab_size < 2)
    throw std::runtime_error("tokenizer train: --vocab-size " +
                             std::to_string(options.vocab_size) + " is below 2");
  if (options.output.empty()) throw std::runtime_error("tokenizer train: no --output");
  if (options.format != "text" && options.format != "brown" && options.format != "jsonl" &&
      options.format != "parquet")
    throw std::runtime_error("tokenizer train: --format '" + options.format +
                             "' (known: text, brown, jsonl, parquet)");
  if (options.format == "brown" && options.inputs.size() != 1)
    throw std::runtime_error("tokenizer train: --format brown reads one folder or file");
  if (options.sample_lines < 0 || (options.sample_lines > 0 && options.sample_lines <= 100))
    throw std::runtime_error("tokenizer train: --sample-lines " +
                             std::to_string(options.sample_lines) +
                             ": 0 (every line) or more than 100 (SentencePiece's least sample)");
  // SentencePiece pulls the lines from us, so it learns from the text prepare-data encodes
  // (Brown's words without their tags, compressed files decompressed, jsonl documents) with no
  // copy on disk.
  CorpusLines lines(options.inputs, options.format, options.field);
  CorpusSentences sentences(lines);
  // Identity normalisation, whitespace kept and byte fallback make encoding lossless, which a
  // language model's text needs (the defaults are for translation and drop whitespace).
  std::unordered_map<std::string, std::string> arguments = {
      {"vocab_size", std::to_string(options.vocab_size)},
      {"model_type", options.model_type},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"max_sentence_length", "1000000"},
      {"num_threads", "1"},  // the trained model then does not depend on the thread count
      {"minloglevel", "2"},  // only errors; ours carry the reason
  };
  if (!options.user_defined_symbols.empty()) {
    std::string symbols;
    for (const std::string& symbol : options.user_defined_symbols) {
      if (symbol.empty() || symbol.find(',') != std::string::npos)
        throw std::runtime_error("tokenizer train: --user-defined-symbols: \"" + symbol +
                                 "\" is empty or holds a comma");
      symbols += (symbols.empty() ? "" : ",") + symbol;
    }
    arguments["user_defined_symbols"] = symbols;
  }
  if (options.sample_lines > 0) {
    // A uniform sample of the lines (SentencePiece's reservoir, with its fixed seed: the same
    // sample every run), which bounds the memory and time of training on a large corpus.
    arguments["input_sentence_size"] = std::to_string(options.sample_lines);
    arguments["shuffle_input_sentence"] = "true";
  }
  std::string model;  // returned in memory (then no model_prefix), written below atomically
  const auto status = sentencepiece::SentencePieceTrainer::Train(arguments, &sentences, &model);
  sentences.rethrow();  // a reading error of ours, in our words
  if (!status.ok())
    throw std::runtime_error("tokenizer train: SentencePiece failed: " + status.ToString());
  const std::unique_ptr<Tokenizer> check = load_sentencepiece(model, options.output);
  write_file_atomically(options.output, model);
  return check->vocab_size();
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_bytes,
                                              const std::string& source) {
  return std::make_unique<SentencePieceTokenizer>(model_bytes, source);
}

std::string read_tokenizer_model_file(const std::string& path) {
  std::error_code error;
  if (!fs::is_regular_file(path, error))
    throw std::runtime_error(path +
                             ": no such file (a tokenizer is bytes, a SentencePiece "
                             "model file, a tokenizer.json or a model folder)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open for reading");
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path + ": read failed");
  return contents.str();
}

std::unique_ptr<Tokenizer> tokenizer_from_option(const std::string& name_or_path) {
  if (name_or_path == "bytes") return make_tokenizer("bytes");
  std::string path = name_or_path;
  std::error_code error;
  if (fs::is_directory(path, error)) {  // a model folder: its SentencePiece model, else its JSON
    const fs::path folder(path);
    if (fs::is_regular_file(folder / "tokenizer.model", error))
      path = (folder / "tokenizer.model").string();
    else if (fs::is_regular_file(folder / kHuggingFaceTokenizerFile, error))
      path = (folder / kHuggingFaceTokenizerFile).string();
    else
      throw std::runtime_error(name_or_path + ": a folder without tokenizer.model or " +
                               kHuggingFaceTokenizerFile);
  }
  if (fs::path(path).extension() == ".json")
    return load_hf_tokenizer(read_tokenizer_model_file(path), eos_token_beside(path), path);
  return load_sentencepiece(read_tokenizer_model_file(path), path);
}

std::unique_ptr<Tokenizer> tokenizer_of(const TokenData& data, const std::string& path) {
  const bool sentencepiece = data.tokenizer == kSentencePieceTokenizer;
  if (sentencepiece || data.tokenizer == kHuggingFaceTokenizer) {
    if (data.tokenizer_model.empty())
      throw std::runtime_error(path + ": tokenizer " + data.tokenizer + " but no /tokenizer_model");
    const std::string source = path + ":/tokenizer_model";
    std::unique_ptr<Tokenizer> tokenizer =
        sentencepiece ? load_sentencepiece(data.tokenizer_model, source)
                      : load_hf_tokenizer(data.tokenizer_model, data.tokenizer_eos_token, source);
    if (tokenizer->vocab_size() > data.vocab_size)
      throw std::runtime_error(path + ": the stored " +
                               (sentencepiece ? "SentencePiece model" : "tokenizer.json") +
                               " has vocabulary " + std::to_string(tokenizer->vocab_size()) +
                               ", above the file's vocab_size " + std::to_string(data.vocab_size));
    return tokenizer;
  }
  return make_tokenizer(data.tokenizer);
}

}  // namespace sy
