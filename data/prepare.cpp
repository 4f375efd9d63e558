#include "data/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "data/compressed_input.h"
#include "data/hf_tokenizer.h"
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

// Calls visit(text) with the text of `file` as prepare-data sees it, a block at a time: raw
// blocks of 1 MiB ("text"), or one converted line at a time ("brown": brown_file_to_text treats
// every line on its own, so line by line gives the same text as the whole file).
void for_each_text_block(const fs::path& file, const std::string& format,
                         const std::function<void(std::string_view)>& visit) {
  InputFile in(file.string());
  if (format == "brown") {
    std::string line;
    while (in.read_line(line)) {
      const std::string text = brown_file_to_text(line);
      if (!text.empty()) visit(text);
    }
  } else {
    std::vector<char> block(size_t{1} << 20);
    while (const size_t size = in.read(block.data(), block.size()))
      visit(std::string_view(block.data(), size));
  }
}

// Text to tokens to a TokenFileWriter in bounded memory. Each document's text (in each split) is
// handed to the tokenizer in pieces of about piece_bytes, cut after a newline where the piece has
// one: the bytes tokenizer gives the same tokens whatever the cut; SentencePiece gives the tokens
// of encoding the whole document whenever it is at most piece_bytes (docs/data.md).
// The pieces and document starts queue in order; a full queue (about max(threads, 4) pieces of
// text) is encoded on `threads` threads, then written in order, so the token file does not
// depend on the thread count.
class TextEncoder {
 public:
  TextEncoder(const Tokenizer& tokenizer, TokenFileWriter& writer, int64_t piece_bytes, int threads)
      : tokenizer_(tokenizer),
        writer_(writer),
        piece_bytes_(std::max<int64_t>(piece_bytes, 1)),
        threads_(std::max(threads, 1)),
        queue_bytes_(std::max<int64_t>(threads_, 4) * piece_bytes_) {}

  void add(bool is_val, std::string_view text) {
    if (is_val && !in_val_) {
      enqueue_piece(false, pending_.size());
      in_val_ = true;
    }
    pending_.append(text);
    bytes_ += static_cast<int64_t>(text.size());
    while (static_cast<int64_t>(pending_.size()) >= piece_bytes_) enqueue_piece(in_val_, cut());
  }
  // The text added next starts a document of split is_val (the writer records where). What is
  // pending is encoded first: documents are encoded apart, so that no token straddles two and the
  // start is a token position whatever the tokenizer.
  void start_document(bool is_val) {
    enqueue_piece(in_val_, pending_.size());
    in_val_ = in_val_ || is_val;
    queue_.push_back({in_val_ ? Job::val_document : Job::train_document, in_val_, {}, {}, {}});
  }
  void finish() {
    enqueue_piece(in_val_, pending_.size());
    run_queue();
  }
  int64_t bytes() const { return bytes_; }

 private:
  struct Job {
    enum Kind { piece, train_document, val_document } kind;
    bool is_val;
    std::string text;             // a piece's text, until encoded
    std::vector<int32_t> tokens;  // and its tokens
    std::exception_ptr error;     // or why the tokenizer refused it
  };

  // Where the next piece ends: after its last newline; without one, at the last UTF-8 character
  // boundary (never inside a character, which a tokenizer would see as invalid bytes).
  size_t cut() const {
    const size_t limit = static_cast<size_t>(piece_bytes_);
    const size_t newline = pending_.rfind('\n', limit - 1);
    if (newline != std::string::npos) return newline + 1;
    size_t end = limit;
    while (end > 0 && (static_cast<unsigned char>(pending_[end]) & 0xC0) == 0x80) end--;
    return end > 0 ? end : limit;
  }

  // Queues the first `length` bytes of pending_ as a piece of split is_val.
  void enqueue_piece(bool is_val, size_t length) {
    if (length == 0) return;
    queue_.push_back({Job::piece, is_val, pending_.substr(0, length), {}, {}});
    pending_.erase(0, length);
    queued_bytes_ += static_cast<int64_t>(length);
    if (queued_bytes_ >= queue_bytes_) run_queue();
  }

  // Encodes the queued pieces, each thread taking the next one not taken, then writes the queue
  // in order. The first piece (in order) that failed throws, as it would have alone.
  void run_queue() {
    std::atomic<size_t> next{0};
    const auto encode_next_pieces = [&] {
      for (size_t j = next++; j < queue_.size(); j = next++) {
        Job& job = queue_[j];
        if (job.kind != Job::piece) continue;
        try {
          job.tokens = tokenizer_.encode(job.text);
        } catch (...) {
          job.error = std::current_exception();
        }
        std::string().swap(job.text);
      }
    };
    {
      const size_t pieces = static_cast<size_t>(std::count_if(
          queue_.begin(), queue_.end(), [](const Job& j) { return j.kind == Job::piece; }));
      std::vector<std::jthread> helpers;  // joined on leaving the block, whatever happens
      for (size_t t = 1; t < std::min(static_cast<size_t>(threads_), pieces); t++)
        helpers.emplace_back(encode_next_pieces);
      encode_next_pieces();
    }
    for (const Job& job : queue_) {
      if (job.error) std::rethrow_exception(job.error);
      const int64_t count = static_cast<int64_t>(job.tokens.size());
      if (job.kind == Job::train_document) writer_.start_document_train();
      else if (job.kind == Job::val_document) writer_.start_document_val();
      else if (job.is_val) writer_.append_val(job.tokens.data(), count);
      else writer_.append_train(job.tokens.data(), count);
    }
    queue_.clear();
    queued_bytes_ = 0;
  }

  const Tokenizer& tokenizer_;
  TokenFileWriter& writer_;
  int64_t piece_bytes_;
  int threads_;
  int64_t queue_bytes_;  // the queue runs when it holds this much text
  std::string pending_;
  bool in_val_ = false;
  int64_t bytes_ = 0;
  std::vector<Job> queue_;
  int64_t queued_bytes_ = 0;
};

// Progress lines of a long preparation: note() is cheap enough to call per document, and hands
// options.progress a line when progress_seconds have passed since the last one.
class ProgressLines {
 public:
  explicit ProgressLines(const PrepareOptions& options)
      : progress_(options.progress), every_(options.progress_seconds) {}
  // `done` of `total` (0: not known yet) `unit`s of the pass so far.
  void note(const char* pass, int64_t done, int64_t total, const char* unit) {
    if (!progress_) return;
    const Clock::time_point now = Clock::now();
    if (std::chrono::duration<double>(now - last_).count() < every_) return;
    last_ = now;
    std::string line = std::string("prepare-data: ") + pass + ", " + std::to_string(done);
    if (total > 0) line += " of " + std::to_string(total);
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(now - start_).count();
    progress_(line + " " + unit + ", " + std::to_string(seconds) + " s");
  }

 private:
  using Clock = std::chrono::steady_clock;
  const std::function<void(const std::string&)>& progress_;
  double every_;
  Clock::time_point start_ = Clock::now(), last_ = start_;
};

// The threads that encode text: options.threads, or with 0 every hardware thread.
int encode_threads(const PrepareOptions& options) {
  if (options.threads < 0)
    throw std::runtime_error("--threads " + std::to_string(options.threads) + " is negative");
  if (options.threads > 0) return options.threads;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
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

// --format sft: one example a JSONL line (for_each_sft_example), its segments encoded one by one
// and each trained segment followed by the tokenizer's EOS (the encoded "\n" for one without, as
// bytes), trained too, so that the model learns where an answer stops; the loss mask 1 on trained
// segments and their ends, 0 elsewhere. No BOS: no other format writes one, and generate's
// prompts have none. Segments are encoded apart, so no token straddles what is and is not trained.
PrepareStats prepare_sft(const PrepareOptions& options, const Tokenizer& tokenizer,
                         double val_fraction, PrepareStats stats) {
  if (tokenizer.eos_id() < 0 && tokenizer.name() == kHuggingFaceTokenizer)
    throw std::runtime_error(options.tokenizer +
                             ": no EOS token, which ends every trained "
                             "segment (put the model's tokenizer_config.json beside the "
                             "tokenizer.json)");
  const std::string& input = options.inputs.front();
  ProgressLines progress(options);
  int64_t counted = 0;
  const int64_t examples = for_each_sft_example(
      options.inputs, options.prompt_field, options.response_field,
      [&](const std::vector<SftSegment>&) { progress.note("counting", ++counted, 0, "examples"); });
  const int64_t train_examples = train_document_count(examples, val_fraction, input);
  stats.files = static_cast<int64_t>(options.inputs.size());
  stats.documents = examples;
  stats.val_documents = examples - train_examples;

  const std::vector<int32_t> end =
      tokenizer.eos_id() >= 0 ? std::vector<int32_t>{tokenizer.eos_id()} : tokenizer.encode("\n");
  TokenFileWriter writer(options.output, stats.vocab_size, stats.tokenizer, tokenizer.model(),
                         tokenizer.model_name(), /*masked=*/true, tokenizer.stored_eos_token(),
                         /*documents=*/true);
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  int64_t example = 0;
  const int64_t seen = for_each_sft_example(
      options.inputs, options.prompt_field, options.response_field,
      [&](const std::vector<SftSegment>& segments) {
        progress.note("encoding", example + 1, examples, "examples");
        tokens.clear();
        mask.clear();
        for (const SftSegment& segment : segments) {
          const std::vector<int32_t> encoded = tokenizer.encode(segment.text);
          tokens.insert(tokens.end(), encoded.begin(), encoded.end());
          if (segment.trained) tokens.insert(tokens.end(), end.begin(), end.end());
          mask.resize(tokens.size(), segment.trained ? 1 : 0);
        }
        const int64_t count = static_cast<int64_t>(tokens.size());
        if (example++ < train_examples) {
          writer.start_document_train();  // each example is a document
          writer.append_train(tokens.data(), count, mask.data());
          stats.train_targets += std::count(mask.begin(), mask.end(), uint8_t{1});
        } else {
          writer.start_document_val();
          writer.append_val(tokens.data(), count, mask.data());
        }
      });
  if (seen != examples)
    throw std::runtime_error(input + ": changed while being read (" + std::to_string(examples) +
                             " then " + std::to_string(seen) + " examples)");
  stats.train_tokens = writer.train_size();
  stats.val_tokens = writer.val_size();
  writer.finish();
  return stats;
}

}  // namespace

int64_t write_corpus_text(const std::string& input, const std::string& format,
                          const std::string& output) {
  if (format != "brown" && format != "text")
    throw std::runtime_error("--format " + format + ": a text format (brown or text) is needed");
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(output + ": cannot open for writing");
  int64_t bytes = 0;
  for (const fs::path& file : list_input_files(input, format))
    for_each_text_block(file, format, [&](std::string_view text) {
      out << text;
      bytes += static_cast<int64_t>(text.size());
    });
  out.flush();
  if (!out) throw std::runtime_error(output + ": write failed");
  return bytes;
}

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
  const bool reads_jsonl = format == "jsonl" || format == "sft";
  if (format != "brown" && format != "text" && !reads_jsonl && !is_token_format)
    throw std::runtime_error("unknown data format '" + format +
                             "' (known: brown, text, jsonl, sft, nanogpt, megatron)");
  if (options.inputs.empty()) throw std::runtime_error("--format " + format + ": no --input");
  if (!reads_jsonl && options.inputs.size() != 1)
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
  if (is_token_format) {
    // The ids are taken as they are; the tokenizer name only labels them.
    stats.tokenizer = options.tokenizer.empty() ? "unknown" : options.tokenizer;
    if (stats.tokenizer == "bytes" && options.vocab_size != 256)
      throw std::runtime_error("--tokenizer bytes has vocabulary 256, but --vocab-size is " +
                               std::to_string(options.vocab_size));
    check_import_vocab_size(format, options.vocab_size);  // before the writer needs it
    // Megatron's index knows its documents; nanoGPT's files are a flat stream of tokens.
    TokenFileWriter writer(options.output, options.vocab_size, stats.tokenizer, {}, {},
                           /*masked=*/false, {}, /*documents=*/format == "megatron");
    const TokenSink sink = [&](bool is_val, const int32_t* tokens, int64_t count) {
      if (is_val) writer.append_val(tokens, count);
      else writer.append_train(tokens, count);
    };
    const DocumentSink start_document = [&](bool is_val) {
      if (is_val) writer.start_document_val();
      else writer.start_document_train();
    };
    const ImportCounts counts =
        format == "nanogpt"
            ? import_nanogpt(input, options.vocab_size, sink)
            : import_megatron(input, options.vocab_size, val_fraction, sink, start_document);
    stats.files = 2;  // train.bin and val.bin, or PREFIX.bin and PREFIX.idx
    stats.documents = counts.documents;
    stats.val_documents = counts.val_documents;
    stats.vocab_size = options.vocab_size;
    stats.train_tokens = writer.train_size();
    stats.val_tokens = writer.val_size();
    writer.finish();
    return stats;
  }

  const std::unique_ptr<Tokenizer> tokenizer =
      tokenizer_from_option(options.tokenizer.empty() ? "bytes" : options.tokenizer);
  stats.tokenizer = tokenizer->name();
  stats.vocab_size = tokenizer->vocab_size();
  if (format == "sft") return prepare_sft(options, *tokenizer, val_fraction, stats);
  // Two passes over the input: the first counts (bytes, or documents) to place the split and
  // checks every line; the second tokenises and writes. Nothing is held but a piece of text.
  int64_t train_documents = 0, num_documents = 0;
  int64_t train_bytes = 0, total_bytes = 0;
  std::vector<fs::path> files;
  ProgressLines progress(options);
  if (format == "jsonl") {
    int64_t counted = 0;
    num_documents = for_each_jsonl_document(options.inputs, options.field, [&](const std::string&) {
      progress.note("counting", ++counted, 0, "documents");
    });
    train_documents = train_document_count(num_documents, val_fraction, input);
    stats.files = static_cast<int64_t>(options.inputs.size());
    stats.documents = num_documents;
    stats.val_documents = num_documents - train_documents;
  } else {
    files = list_input_files(input, format);
    for (const fs::path& file : files)
      for_each_text_block(file, format, [&](std::string_view text) {
        total_bytes += static_cast<int64_t>(text.size());
        progress.note("counting", total_bytes >> 20, 0, "MiB of text");
      });
    if (total_bytes == 0) throw std::runtime_error(input + ": no text");
    // The split is on bytes, before tokenisation, so that it does not depend on the tokenizer.
    train_bytes = static_cast<int64_t>(
        std::floor((1.0 - val_fraction) * static_cast<double>(total_bytes)));
    stats.files = static_cast<int64_t>(files.size());
  }

  // Every text format knows its documents: a jsonl line, or an input file (brown, text).
  TokenFileWriter writer(options.output, stats.vocab_size, stats.tokenizer, tokenizer->model(),
                         tokenizer->model_name(), /*masked=*/false, tokenizer->stored_eos_token(),
                         /*documents=*/true);
  TextEncoder encoder(*tokenizer, writer, options.encode_piece_bytes, encode_threads(options));
  if (format == "jsonl") {
    // Documents split whole; each ends with "\n" so that neighbours stay apart.
    int64_t d = 0;
    const int64_t seen =
        for_each_jsonl_document(options.inputs, options.field, [&](const std::string& document) {
          progress.note("encoding", d + 1, num_documents, "documents");
          const bool is_val = d++ >= train_documents;
          encoder.start_document(is_val);
          encoder.add(is_val, document);
          encoder.add(is_val, "\n");
        });
    if (seen != num_documents)
      throw std::runtime_error(input + ": changed while being read (" +
                               std::to_string(num_documents) + " then " + std::to_string(seen) +
                               " documents)");
  } else {
    // Each file starts a document; the split by bytes may cut one, and the validation split's
    // first token then starts one too (the writer's rule for a split's first token).
    int64_t position = 0;
    for (const fs::path& file : files) {
      encoder.start_document(position >= train_bytes);
      for_each_text_block(file, format, [&](std::string_view text) {
        const int64_t size = static_cast<int64_t>(text.size());
        const int64_t to_train = std::clamp<int64_t>(train_bytes - position, 0, size);
        if (to_train > 0) encoder.add(false, text.substr(0, to_train));
        if (to_train < size) encoder.add(true, text.substr(to_train));
        position += size;
        progress.note("encoding", position >> 20, total_bytes >> 20, "MiB of text");
      });
    }
    if (position != total_bytes)
      throw std::runtime_error(input + ": changed while being read (" +
                               std::to_string(total_bytes) + " then " + std::to_string(position) +
                               " bytes)");
  }
  encoder.finish();
  stats.bytes = encoder.bytes();
  stats.train_tokens = writer.train_size();
  stats.val_tokens = writer.val_size();
  writer.finish();
  return stats;
}

}  // namespace sy
