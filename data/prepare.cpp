#include "data/prepare.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "data/importers.h"
#include "data/token_file.h"
#include "data/tokenizer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class ByteTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  int64_t vocab_size() const override { return 256; }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> tokens(text.size());
    for (size_t k = 0; k < text.size(); k++) tokens[k] = static_cast<unsigned char>(text[k]);
    return tokens;
  }
  std::string decode(const std::vector<int32_t>& tokens) const override {
    std::string text(tokens.size(), '\0');
    for (size_t k = 0; k < tokens.size(); k++) {
      if (tokens[k] < 0 || tokens[k] > 255)
        throw std::runtime_error("bytes tokenizer: token " + std::to_string(tokens[k]) +
                                 " is outside [0, 256)");
      text[k] = static_cast<char>(tokens[k]);
    }
    return text;
  }
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// c[a-r][0-9][0-9]: the Brown corpus text files (ca01 .. cr09); CONTENTS, README, cats.txt and
// the package files do not match.
bool is_brown_file_name(const std::string& name) {
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         is_digit(name[2]) && is_digit(name[3]);
}

std::string read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open for reading");
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path.string() + ": read failed");
  return contents.str();
}

// The files to read, in name order (byte-wise comparison of the file names, so the order does
// not depend on the locale).
std::vector<fs::path> list_input_files(const std::string& input, const std::string& format) {
  std::error_code error;
  const fs::file_status status = fs::status(input, error);
  if (error || !fs::exists(status)) throw std::runtime_error(input + ": no such file or folder");
  if (fs::is_regular_file(status)) return {fs::path(input)};
  if (!fs::is_directory(status))
    throw std::runtime_error(input + ": neither a regular file nor a folder");

  std::vector<fs::path> files;
  fs::directory_iterator entries(input, error);
  if (error) throw std::runtime_error(input + ": cannot list folder: " + error.message());
  for (const fs::directory_entry& entry : entries) {
    if (!entry.is_regular_file(error)) continue;
    const std::string name = entry.path().filename().string();
    if (format == "brown" && !is_brown_file_name(name)) continue;
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  if (files.empty())
    throw std::runtime_error(input + (format == "brown"
                                          ? ": no Brown corpus files (named like ca01) in folder"
                                          : ": no regular files in folder"));
  return files;
}

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "bytes") return std::make_unique<ByteTokenizer>();
  throw std::runtime_error("unknown tokenizer '" + name +
                           "' (known: bytes, sentencepiece with its model)");
}

std::string brown_file_to_text(const std::string& raw) {
  std::string text;
  text.reserve(raw.size() / 2);
  size_t line_start = 0;
  while (line_start < raw.size()) {
    size_t line_end = raw.find('\n', line_start);
    if (line_end == std::string::npos) line_end = raw.size();
    // One non-blank line is one sentence (a leading tab only marks a new paragraph).
    bool sentence_has_words = false;
    size_t pos = line_start;
    while (pos < line_end) {
      while (pos < line_end && is_space(raw[pos])) pos++;
      const size_t token_start = pos;
      while (pos < line_end && !is_space(raw[pos])) pos++;
      if (pos == token_start) continue;
      std::string word = raw.substr(token_start, pos - token_start);
      const size_t slash = word.rfind('/');  // the tag follows the last '/'; words may hold '/'
      if (slash != std::string::npos) word.resize(slash);
      if (word == "``" || word == "''") word = "\"";
      if (word.empty()) continue;
      if (sentence_has_words) text += ' ';
      text += word;
      sentence_has_words = true;
    }
    if (sentence_has_words) text += '\n';
    line_start = line_end + 1;
  }
  return text;
}

PrepareStats prepare_data(const std::string& input, const std::string& format,
                          const std::string& output, const std::string& tokenizer_name,
                          double val_fraction) {
  PrepareOptions options;
  options.inputs = {input};
  options.format = format;
  options.output = output;
  options.tokenizer = tokenizer_name;
  options.val_fraction = val_fraction;
  return prepare_data(options);
}

PrepareStats prepare_data(const PrepareOptions& options) {
  const std::string& format = options.format;
  const bool is_token_format = format == "nanogpt" || format == "megatron";
  if (format != "brown" && format != "text" && format != "jsonl" && !is_token_format)
    throw std::runtime_error("unknown data format '" + format +
                             "' (known: brown, text, jsonl, nanogpt, megatron)");
  if (options.inputs.empty()) throw std::runtime_error("--format " + format + ": no --input");
  if (format != "jsonl" && options.inputs.size() != 1)
    throw std::runtime_error("--format " + format + " reads one --input, got " +
                             std::to_string(options.inputs.size()));
  if (options.output.empty()) throw std::runtime_error("no --output file");
  if (format == "nanogpt" && options.val_fraction)
    throw std::runtime_error("--val-fraction does not apply to --format nanogpt: its val.bin is "
                             "the validation split");
  const double val_fraction = options.val_fraction.value_or(0.05);
  if (!(val_fraction > 0.0 && val_fraction < 1.0))
    throw std::runtime_error("--val-fraction " + std::to_string(val_fraction) +
                             " is outside (0, 1)");
  if (!is_token_format && options.vocab_size != 0)
    throw std::runtime_error("--vocab-size applies to --format nanogpt and megatron only; for " +
                             format + " the tokenizer sets the vocabulary");
  const std::string& input = options.inputs.front();

  PrepareStats stats;
  std::vector<int32_t> train, val;
  std::string tokenizer_model, tokenizer_model_name;  // empty unless SentencePiece
  if (is_token_format) {
    // The ids are taken as they are; the tokenizer name only labels them.
    stats.tokenizer = options.tokenizer.empty() ? "unknown" : options.tokenizer;
    if (stats.tokenizer == "bytes" && options.vocab_size != 256)
      throw std::runtime_error("--tokenizer bytes has vocabulary 256, but --vocab-size is " +
                               std::to_string(options.vocab_size));
    ImportedTokens tokens = format == "nanogpt"
                                ? read_nanogpt(input, options.vocab_size)
                                : read_megatron(input, options.vocab_size, val_fraction);
    stats.files = 2;  // train.bin and val.bin, or PREFIX.bin and PREFIX.idx
    stats.documents = tokens.documents;
    stats.val_documents = tokens.val_documents;
    stats.vocab_size = options.vocab_size;
    train = std::move(tokens.train);
    val = std::move(tokens.val);
  } else {
    const std::unique_ptr<Tokenizer> tokenizer =
        tokenizer_from_option(options.tokenizer.empty() ? "bytes" : options.tokenizer);
    stats.tokenizer = tokenizer->name();
    stats.vocab_size = tokenizer->vocab_size();
    std::string train_text, val_text;
    if (format == "jsonl") {
      // Documents split whole; each ends with "\n" so that neighbours stay apart.
      const std::vector<std::string> documents = read_jsonl_documents(options.inputs,
                                                                      options.field);
      const int64_t num_documents = static_cast<int64_t>(documents.size());
      const int64_t train_documents = train_document_count(num_documents, val_fraction, input);
      for (int64_t d = 0; d < num_documents; d++)
        (d < train_documents ? train_text : val_text) += documents[d] + "\n";
      stats.files = static_cast<int64_t>(options.inputs.size());
      stats.documents = num_documents;
      stats.val_documents = num_documents - train_documents;
    } else {
      const std::vector<fs::path> files = list_input_files(input, format);
      std::string text;
      for (const fs::path& file : files) {
        const std::string raw = read_whole_file(file);
        text += format == "brown" ? brown_file_to_text(raw) : raw;
      }
      if (text.empty()) throw std::runtime_error(input + ": no text");
      // The split is on bytes, before tokenisation, so that it does not depend on the tokenizer.
      const int64_t train_bytes = static_cast<int64_t>(
          std::floor((1.0 - val_fraction) * static_cast<double>(text.size())));
      train_text = text.substr(0, train_bytes);
      val_text = text.substr(train_bytes);
      stats.files = static_cast<int64_t>(files.size());
    }
    stats.bytes = static_cast<int64_t>(train_text.size() + val_text.size());
    train = tokenizer->encode(train_text);
    val = tokenizer->encode(val_text);
    tokenizer_model = tokenizer->model();
    tokenizer_model_name = tokenizer->model_name();
  }
  write_token_file(options.output, train, val, stats.vocab_size, stats.tokenizer, tokenizer_model,
                   tokenizer_model_name);
  stats.train_tokens = static_cast<int64_t>(train.size());
  stats.val_tokens = static_cast<int64_t>(val.size());
  return stats;
}

}  // namespace sy
