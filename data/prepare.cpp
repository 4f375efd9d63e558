#include "data/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "data/compressed_input.h"
#include "data/hf_tokenizer.h"
#include "data/importers.h"
#include "data/ordered_tasks.h"
#include "data/parquet_input.h"
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

// "a, b, c" (each name quoted: "\"a\", \"b\""), for messages listing columns and members.
std::string name_list(const std::vector<std::string>& names, bool quoted = false) {
  std::string list;
  for (const std::string& name : names)
    list += (list.empty() ? "" : ", ") + (quoted ? "\"" + name + "\"" : name);
  return list;
}

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

// What a piece of text becomes: its tokens (and, for sft, their loss mask) in split is_val,
// written after starting a document when starts_document.
struct EncodedPiece {
  bool starts_document = false;
  bool is_val = false;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // sft only
  int64_t text_bytes = 0;     // of the text encoded
};
using Encoded = std::vector<EncodedPiece>;
// The encoding threads' tasks, their results written in input order: the token file does not
// depend on the thread count.
using EncodingTasks = OrderedTasks<Encoded>;

// Where the piece at the start of `text` ends when text holds at least piece_bytes: after its
// last newline; without one, at the last UTF-8 character boundary (never inside a character,
// which a tokenizer would see as invalid bytes).
size_t piece_length(std::string_view text, size_t piece_bytes) {
  const size_t newline = text.rfind('\n', piece_bytes - 1);
  if (newline != std::string_view::npos) return newline + 1;
  size_t end = piece_bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) end--;
  return end > 0 ? end : piece_bytes;
}

// A piece that `continues` the text before it in its document and split is encoded as a
// continuation (no SentencePiece dummy prefix), so that the pieces decode to the document.
EncodedPiece encode_piece(const Tokenizer& tokenizer, bool is_val, bool continues,
                          const std::string& text) {
  return {false,
          is_val,
          continues ? tokenizer.encode_continuation(text) : tokenizer.encode(text),
          {},
          static_cast<int64_t>(text.size())};
}

// A whole document (a jsonl line's): a start, then its text in pieces as TextEncoder cuts them.
void encode_document(const Tokenizer& tokenizer, std::string_view text, int64_t piece_bytes,
                     bool is_val, Encoded& encoded) {
  encoded.push_back({true, is_val, {}, {}, 0});
  const size_t limit = static_cast<size_t>(piece_bytes);
  for (bool continues = false; !text.empty(); continues = true) {
    const size_t length = text.size() >= limit ? piece_length(text, limit) : text.size();
    encoded.push_back(
        encode_piece(tokenizer, is_val, continues, std::string(text.substr(0, length))));
    text.remove_prefix(length);
  }
}

// Streamed text (brown, text) to tokens in bounded memory. Each document's text (in each split)
// is handed to the tokenizer in pieces of about piece_bytes, cut after a newline where the piece
// has one: the bytes tokenizer gives the same tokens whatever the cut; SentencePiece gives the
// tokens of encoding the whole document whenever it is at most piece_bytes, and past that differs
// only where a cut splits what would be one token (docs/data.md). Each piece is a task of
// `tasks`; the first of a document and of the validation split is encoded as a text of its own.
class TextEncoder {
 public:
  TextEncoder(const Tokenizer& tokenizer, EncodingTasks& tasks, int64_t piece_bytes)
      : tokenizer_(tokenizer), tasks_(tasks), piece_bytes_(std::max<int64_t>(piece_bytes, 1)) {}

  void add(bool is_val, std::string_view text) {
    if (is_val && !in_val_) {
      submit_piece(false, pending_.size());
      in_val_ = true;
      continues_ = false;
    }
    pending_.append(text);
    while (static_cast<int64_t>(pending_.size()) >= piece_bytes_)
      submit_piece(in_val_, piece_length(pending_, static_cast<size_t>(piece_bytes_)));
  }
  // The text added next starts a document of split is_val (the writer records where). What is
  // pending is encoded first: documents are encoded apart, so that no token straddles two and the
  // start is a token position whatever the tokenizer.
  void start_document(bool is_val) {
    submit_piece(in_val_, pending_.size());
    in_val_ = in_val_ || is_val;
    continues_ = false;
    tasks_.submit(0, [is_val = in_val_] { return Encoded{{true, is_val, {}, {}, 0}}; });
  }
  void finish() { submit_piece(in_val_, pending_.size()); }

 private:
  // Submits the first `length` bytes of pending_ as a piece of split is_val.
  void submit_piece(bool is_val, size_t length) {
    if (length == 0) return;
    tasks_.submit(static_cast<int64_t>(length),
                  [&tokenizer = tokenizer_, is_val, continues = continues_,
                   text = pending_.substr(0, length)] {
                    return Encoded{encode_piece(tokenizer, is_val, continues, text)};
                  });
    pending_.erase(0, length);
    continues_ = true;
  }

  const Tokenizer& tokenizer_;
  EncodingTasks& tasks_;
  int64_t piece_bytes_;
  std::string pending_;
  bool in_val_ = false;
  bool continues_ = false;  // the next piece follows text of its document and split
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

// At most this much text waits in the encoding tasks: about max(threads, 4) pieces.
int64_t queued_text_bytes(const PrepareOptions& options) {
  return std::max(encode_threads(options), 4) * std::max<int64_t>(options.encode_piece_bytes, 1);
}

// The text of a run of lines or rows handed to a thread: a piece's worth, 1 MiB at most.
int64_t run_bytes(const PrepareOptions& options) {
  return std::clamp<int64_t>(options.encode_piece_bytes, 1, 1 << 20);
}

// Reads the JSONL inputs, `pass` of prepare-data, and submits a task per run of lines
// (run_bytes): work(lines) on a thread of `tasks`, whose results are taken in order. Returns the
// count of lines read (objects, as the tasks check). A failure while reading comes after those
// of the lines before it, as on one thread.
template <class Result>
int64_t submit_jsonl_lines(const PrepareOptions& options, OrderedTasks<Result>& tasks,
                           ProgressLines& progress, const char* pass, int64_t total,
                           const char* unit, const std::function<Result(const JsonlLines&)>& work) {
  return tasks.submit_all([&] {
    return for_each_jsonl_lines(options.inputs, run_bytes(options), [&](JsonlLines&& lines) {
      const int64_t read = lines.first_object + static_cast<int64_t>(lines.lines.size());
      const int64_t cost = lines.bytes;
      tasks.submit(cost, [&work, lines = std::move(lines)] { return work(lines); });
      progress.note(pass, read, total, unit);
    });
  });
}

// The first pass over JSONL inputs: counts the objects and checks every line with check(line,
// path) on the threads, so that a bad line fails before anything is written.
int64_t count_jsonl_objects(
    const PrepareOptions& options, ProgressLines& progress, const char* unit,
    const std::function<void(const JsonlLine&, const std::string&)>& check) {
  OrderedTasks<bool> tasks(encode_threads(options), queued_text_bytes(options), [](bool&) {});
  return submit_jsonl_lines<bool>(options, tasks, progress, "counting", 0, unit,
                                  [&](const JsonlLines& lines) {
                                    for (const JsonlLine& line : lines.lines)
                                      check(line, lines.path);
                                    return true;
                                  });
}

int64_t text_bytes(const std::string& text) { return static_cast<int64_t>(text.size()); }
int64_t text_bytes(const std::vector<SftSegment>& segments) {
  int64_t bytes = 0;
  for (const SftSegment& segment : segments) bytes += text_bytes(segment.text);
  return bytes;
}

// Reads the rows of the Parquet inputs on this thread, each file through open(file) (a reader
// whose next(row) hands out its rows), in runs (run_bytes), and submits a task per run that calls
// encode(encoded, row, index) for each of its rows (index: among all files' rows). Returns the
// rows read.
template <class Row, class Open>
int64_t submit_parquet_rows(const PrepareOptions& options, EncodingTasks& tasks,
                            ProgressLines& progress, int64_t total, const char* unit,
                            const Open& open,
                            const std::function<void(Encoded&, Row&&, int64_t)>& encode) {
  int64_t rows = 0;
  std::vector<Row> batch;
  int64_t batch_first = 0, batch_size = 0;
  const auto submit = [&] {
    tasks.submit(batch_size, [&encode, first = batch_first, values = std::move(batch)]() mutable {
      Encoded encoded;
      for (size_t k = 0; k < values.size(); k++)
        encode(encoded, std::move(values[k]), first + static_cast<int64_t>(k));
      return encoded;
    });
    batch.clear();
    batch_first = rows;
    batch_size = 0;
    progress.note("encoding", rows, total, unit);
  };
  return tasks.submit_all([&] {
    for (const std::string& file : options.inputs) {
      const auto reader = open(file);
      for (Row value; reader->next(value);) {
        batch_size += text_bytes(value);
        batch.push_back(std::move(value));
        rows++;
        if (batch_size >= run_bytes(options)) submit();
      }
    }
    if (!batch.empty()) submit();
    return rows;
  });
}

void check_unchanged(const std::string& input, int64_t counted, int64_t seen, const char* unit) {
  if (seen != counted)
    throw std::runtime_error(input + ": changed while being read (" + std::to_string(counted) +
                             " then " + std::to_string(seen) + " " + unit + ")");
}

// --format sft's Parquet inputs, an example a row: a conversation in the list column
// fields.messages of {role, content} structs (or ShareGPT's {from, value}), or, in a file
// without that column, a prompt and its response in the string columns fields.prompt and
// fields.response. Each is rendered as sft_example renders a JSONL line of the same members.
class ParquetExamples {
 public:
  ParquetExamples(const std::string& path, const SftFields& fields) : path_(path), fields_(fields) {
    const std::vector<std::string> columns = parquet_columns(path);
    const auto has = [&](const std::string& name) {
      return std::find(columns.begin(), columns.end(), name) != columns.end();
    };
    if (has(fields.messages)) {
      conversations_ = std::make_unique<ParquetRecordLists>(path, fields.messages,
                                                            message_members(path, fields.messages));
      return;
    }
    if (!has(fields.response) && std::none_of(fields.prompt.begin(), fields.prompt.end(), has)) {
      throw std::runtime_error(path + ": no column \"" + fields.messages + "\", nor " +
                               name_list(fields.prompt, true) + " and \"" + fields.response +
                               "\" (columns: " + name_list(columns) + ")");
    }
    for (const std::string& column : fields.prompt)
      prompt_.push_back(std::make_unique<ParquetStrings>(path, column));
    response_ = std::make_unique<ParquetStrings>(path, fields.response);
    if (!fields.system_field.empty())
      system_ = std::make_unique<ParquetStrings>(path, fields.system_field);
  }
  int64_t rows() const { return conversations_ ? conversations_->rows() : response_->rows(); }
  // Whether the rows are rendered in fields.chat_template.
  bool conversation() const { return conversations_ || fields_.pairs_in_template; }
  // The next row's example; false after the last.
  bool next(std::vector<SftSegment>& segments) {
    const std::string at = path_ + ": row " + std::to_string(row_) + ": ";
    if (conversations_) {
      if (!conversations_->next(records_)) return false;
      std::vector<ChatMessage> messages;
      for (std::vector<std::string>& record : records_)
        messages.push_back({canonical_role(std::move(record[0])), std::move(record[1])});
      segments = sft_conversation(std::move(messages), fields_, at).segments;
    } else {
      std::string response, system;
      if (!response_->next(response)) return false;
      const auto ended = [&](const std::string& column) {
        return std::runtime_error(path_ + ": column \"" + column + "\" ends at row " +
                                  std::to_string(row_) + ", before \"" + fields_.response + "\"");
      };
      // A null prompt member or system message is an empty one, as in a JSON line.
      std::optional<std::string> value;
      for (size_t k = 0; k < prompt_.size(); k++) {
        if (!prompt_[k]->next(value)) throw ended(fields_.prompt[k]);
        prompt_parts_[k] = value ? std::move(*value) : std::string();
      }
      if (system_) {
        if (!system_->next(value)) throw ended(fields_.system_field);
        system = value ? std::move(*value) : std::string();
      }
      segments =
          sft_pair(prompt_parts_, std::move(response), std::move(system), fields_, at).segments;
    }
    row_++;
    return true;
  }

 private:
  // The members that hold a message's role and text.
  static std::vector<std::string> message_members(const std::string& path,
                                                  const std::string& column) {
    const std::vector<std::string> members = parquet_list_struct_fields(path, column);
    const auto has = [&](const char* name) {
      return std::find(members.begin(), members.end(), name) != members.end();
    };
    if (has("role") && has("content")) return {"role", "content"};
    if (has("from") && has("value")) return {"from", "value"};
    throw std::runtime_error(path + ": column \"" + column + "\" holds messages of " +
                             name_list(members) + ", not role and content (or from and value)");
  }

  std::string path_;
  const SftFields& fields_;
  std::unique_ptr<ParquetRecordLists> conversations_;  // or the prompt's and response's columns
  std::vector<std::unique_ptr<ParquetStrings>> prompt_;
  std::unique_ptr<ParquetStrings> response_, system_;  // system_: fields.system_field's, if any
  std::vector<std::vector<std::string>> records_;
  std::vector<std::string> prompt_parts_ = std::vector<std::string>(fields_.prompt.size());
  int64_t row_ = 0;
};

// Whether --format sft reads its inputs as Parquet (every name ends in .parquet) or as JSON
// lines (none does).
bool sft_reads_parquet(const std::vector<std::string>& inputs) {
  const auto is_parquet = [](const std::string& name) {
    return name.size() >= 8 && name.compare(name.size() - 8, 8, ".parquet") == 0;
  };
  const auto parquet = std::count_if(inputs.begin(), inputs.end(), is_parquet);
  if (parquet == 0) return false;
  if (parquet == static_cast<std::ptrdiff_t>(inputs.size())) return true;
  const auto other = std::find_if_not(inputs.begin(), inputs.end(), is_parquet);
  throw std::runtime_error("--format sft: " + *other +
                           " is not a .parquet file, as the other inputs are (the inputs are "
                           "either all Parquet or all JSON lines)");
}

// An example: a document start and one piece, its tokens and their mask. Each segment is encoded
// apart, so no token straddles what is and is not trained; each trained one is followed by `end`.
// Segments after the first continue the example's text (no second SentencePiece dummy prefix).
EncodedPiece encode_example(const Tokenizer& tokenizer, const std::vector<SftSegment>& segments,
                            const std::vector<int32_t>& end, bool is_val) {
  EncodedPiece example{true, is_val, {}, {}, 0};
  for (const SftSegment& segment : segments) {
    const std::vector<int32_t> encoded = example.tokens.empty()
                                             ? tokenizer.encode(segment.text)
                                             : tokenizer.encode_continuation(segment.text);
    example.tokens.insert(example.tokens.end(), encoded.begin(), encoded.end());
    if (segment.trained) example.tokens.insert(example.tokens.end(), end.begin(), end.end());
    example.mask.resize(example.tokens.size(), segment.trained ? 1 : 0);
  }
  return example;
}

// --format sft: one example a JSONL line (sft_example) or a Parquet row (ParquetExamples),
// its segments encoded one by one and each trained segment followed by the tokenizer's EOS (the
// encoded "\n" for one without, as bytes), trained too, so that the model learns where an answer
// stops; the loss mask 1 on trained segments and their ends, 0 elsewhere. No BOS: no other format
// writes one, and generate's prompts have none.
PrepareStats prepare_sft(const PrepareOptions& options, const Tokenizer& tokenizer,
                         double val_fraction, PrepareStats stats) {
  if (tokenizer.eos_id() < 0 && tokenizer.name() == kHuggingFaceTokenizer)
    throw std::runtime_error(options.tokenizer +
                             ": no EOS token, which ends every trained "
                             "segment (put the model's tokenizer_config.json beside the "
                             "tokenizer.json)");
  const std::string& input = options.inputs.front();
  const SftFields& fields = options.sft;
  const bool reads_parquet = sft_reads_parquet(options.inputs);
  ProgressLines progress(options);
  // JSONL lines are all checked before anything is written; Parquet footers say whether every
  // file has the column, and a bad row stops the writing (nothing lands at the output).
  int64_t examples = 0;
  std::atomic<bool> conversations{false};  // the chat template is recorded in the token file
  if (reads_parquet) {
    for (const std::string& file : options.inputs) {
      const ParquetExamples examples_of_file(file, fields);
      examples += examples_of_file.rows();
      if (examples_of_file.conversation()) conversations = true;
    }
    if (examples == 0) throw std::runtime_error(input + ": no rows");
  } else {
    examples = count_jsonl_objects(options, progress, "examples",
                                   [&](const JsonlLine& line, const std::string& path) {
                                     if (sft_example(line, fields, path).conversation)
                                       conversations = true;
                                   });
  }
  const int64_t train_examples = train_document_count(examples, val_fraction, input);
  stats.files = static_cast<int64_t>(options.inputs.size());
  stats.documents = examples;
  stats.val_documents = examples - train_examples;

  const std::vector<int32_t> end = tokenizer.eos_id() >= 0
                                       ? std::vector<int32_t>{tokenizer.eos_id()}
                                       : tokenizer.encode_continuation("\n");
  TokenFileWriter writer(options.output, stats.vocab_size, stats.tokenizer, tokenizer.model(),
                         tokenizer.model_name(), /*masked=*/true, tokenizer.stored_eos_token(),
                         /*documents=*/true);
  if (conversations)
    writer.set_chat_template(chat_template_name(fields.chat_template), fields.system);
  EncodingTasks tasks(encode_threads(options), queued_text_bytes(options), [&](Encoded& pieces) {
    for (const EncodedPiece& example : pieces) {
      const int64_t count = static_cast<int64_t>(example.tokens.size());
      if (example.is_val) {
        writer.start_document_val();
        writer.append_val(example.tokens.data(), count, example.mask.data());
      } else {
        writer.start_document_train();
        writer.append_train(example.tokens.data(), count, example.mask.data());
        stats.train_targets += std::count(example.mask.begin(), example.mask.end(), uint8_t{1});
      }
    }
  });
  const int64_t seen =
      reads_parquet
          ? submit_parquet_rows<std::vector<SftSegment>>(
                options, tasks, progress, examples, "examples",
                [&](const std::string& file) {
                  return std::make_unique<ParquetExamples>(file, fields);
                },
                [&](Encoded& encoded, std::vector<SftSegment>&& segments, int64_t row) {
                  encoded.push_back(
                      encode_example(tokenizer, segments, end, row >= train_examples));
                })
          : submit_jsonl_lines<Encoded>(
                options, tasks, progress, "encoding", examples, "examples",
                [&](const JsonlLines& lines) {
                  Encoded encoded;
                  for (size_t k = 0; k < lines.lines.size(); k++) {
                    const bool is_val =
                        lines.first_object + static_cast<int64_t>(k) >= train_examples;
                    encoded.push_back(encode_example(
                        tokenizer, sft_example(lines.lines[k], fields, lines.path).segments, end,
                        is_val));
                  }
                  return encoded;
                });
  check_unchanged(input, examples, seen, "examples");
  stats.train_tokens = writer.train_size();
  stats.val_tokens = writer.val_size();
  writer.finish();
  return stats;
}

}  // namespace

CorpusLines::CorpusLines(const std::vector<std::string>& inputs, const std::string& format,
                         const std::string& field)
    : format_(format), field_(field) {
  if (format != "brown" && format != "text" && format != "jsonl" && format != "parquet")
    throw std::runtime_error("--format " + format +
                             ": a text format (brown, text, jsonl or parquet) is needed");
  if (inputs.empty()) throw std::runtime_error("--format " + format + ": no --input");
  for (const std::string& input : inputs)
    for (const fs::path& file : list_input_files(input, format)) files_.push_back(file.string());
}

CorpusLines::~CorpusLines() = default;

bool CorpusLines::next(std::string& line) {
  while (true) {
    if (text_begin_ < text_.size()) {  // text_ ends with '\n'
      const size_t end = text_.find('\n', text_begin_);
      line.assign(text_, text_begin_, end - text_begin_);
      text_begin_ = end + 1;
      return true;
    }
    if (format_ == "parquet") {
      if (!parquet_) {
        if (next_file_ == files_.size()) return false;
        parquet_ = std::make_unique<ParquetStrings>(files_[next_file_++], field_);
      }
      if (!parquet_->next(text_)) {
        parquet_.reset();
        continue;
      }
      text_ += '\n';
      text_begin_ = 0;
      continue;
    }
    if (format_ == "jsonl") {
      if (!records_) {
        if (next_file_ == files_.size()) return false;
        records_ = std::make_unique<JsonRecords>(files_[next_file_++]);
      }
      JsonlLine record;
      if (!records_->next(record)) {
        records_.reset();
        continue;
      }
      text_ = jsonl_document(record, field_, files_[next_file_ - 1]) + "\n";
      text_begin_ = 0;
      continue;
    }
    if (!file_) {
      if (next_file_ == files_.size()) return false;
      file_ = std::make_unique<InputFile>(files_[next_file_++]);
    }
    std::string raw;
    if (!file_->read_line(raw)) {
      file_.reset();
      continue;
    }
    if (format_ == "text") {
      line = std::move(raw);
      return true;
    }
    text_ = brown_file_to_text(raw);  // one line in: "" or one line out
    text_begin_ = 0;
  }
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
  const bool reads_rows = reads_jsonl || format == "parquet";  // a document a row, many files
  if (format != "brown" && format != "text" && !reads_rows && !is_token_format)
    throw std::runtime_error("unknown data format '" + format +
                             "' (known: brown, text, jsonl, sft, parquet, nanogpt, megatron)");
  if (options.inputs.empty()) throw std::runtime_error("--format " + format + ": no --input");
  if (!reads_rows && options.inputs.size() != 1)
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
  std::error_code error;
  if (reads_rows &&
      std::any_of(options.inputs.begin(), options.inputs.end(),
                  [&](const std::string& each) { return fs::is_directory(each, error); })) {
    PrepareOptions with_files = options;  // a folder stands for its regular files, in name order
    with_files.inputs.clear();
    for (const std::string& each : options.inputs)
      for (const fs::path& file : list_input_files(each, format))
        with_files.inputs.push_back(file.string());
    return prepare_data(with_files);
  }
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
  // checks every line; the second tokenises and writes. What is held is bounded by the queue of
  // the encoding threads (queued_text_bytes).
  int64_t train_documents = 0, num_documents = 0;
  int64_t train_bytes = 0, total_bytes = 0;
  std::vector<fs::path> files;
  ProgressLines progress(options);
  if (format == "parquet") {
    // The footers count the rows, and say before anything is written whether every file has
    // the column and is one this reader decodes.
    for (const std::string& file : options.inputs)
      num_documents += ParquetStrings(file, options.field).rows();
    if (num_documents == 0) throw std::runtime_error(input + ": no rows");
    train_documents = train_document_count(num_documents, val_fraction, input);
    stats.files = static_cast<int64_t>(options.inputs.size());
    stats.documents = num_documents;
    stats.val_documents = num_documents - train_documents;
  } else if (format == "jsonl") {
    num_documents = count_jsonl_objects(options, progress, "documents",
                                        [&](const JsonlLine& line, const std::string& path) {
                                          jsonl_document(line, options.field, path);
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
  EncodingTasks tasks(encode_threads(options), queued_text_bytes(options), [&](Encoded& pieces) {
    for (const EncodedPiece& piece : pieces) {
      if (piece.starts_document) {
        if (piece.is_val) writer.start_document_val();
        else writer.start_document_train();
      }
      const int64_t count = static_cast<int64_t>(piece.tokens.size());
      if (count > 0 && piece.is_val) writer.append_val(piece.tokens.data(), count);
      else if (count > 0) writer.append_train(piece.tokens.data(), count);
      stats.bytes += piece.text_bytes;
    }
  });
  if (format == "parquet") {
    // As jsonl: a row's value is a document, followed by "\n".
    const int64_t seen = submit_parquet_rows<std::string>(
        options, tasks, progress, num_documents, "documents",
        [&](const std::string& file) {
          return std::make_unique<ParquetStrings>(file, options.field);
        },
        [&](Encoded& encoded, std::string&& text, int64_t row) {
          encode_document(*tokenizer, text + "\n", options.encode_piece_bytes,
                          row >= train_documents, encoded);
        });
    check_unchanged(input, num_documents, seen, "documents");
  } else if (format == "jsonl") {
    // Documents split whole; each ends with "\n" so that neighbours stay apart.
    const int64_t seen = submit_jsonl_lines<Encoded>(
        options, tasks, progress, "encoding", num_documents, "documents",
        [&](const JsonlLines& lines) {
          Encoded encoded;
          for (size_t k = 0; k < lines.lines.size(); k++) {
            const bool is_val = lines.first_object + static_cast<int64_t>(k) >= train_documents;
            const std::string document = jsonl_document(lines.lines[k], options.field, lines.path);
            encode_document(*tokenizer, document + "\n", options.encode_piece_bytes, is_val,
                            encoded);
          }
          return encoded;
        });
    check_unchanged(input, num_documents, seen, "documents");
  } else {
    // Each file starts a document; the split by bytes may cut one, and the validation split's
    // first token then starts one too (the writer's rule for a split's first token).
    TextEncoder encoder(*tokenizer, tasks, options.encode_piece_bytes);
    const int64_t position = tasks.submit_all([&] {
      int64_t read = 0;
      for (const fs::path& file : files) {
        encoder.start_document(read >= train_bytes);
        for_each_text_block(file, format, [&](std::string_view text) {
          const int64_t size = static_cast<int64_t>(text.size());
          const int64_t to_train = std::clamp<int64_t>(train_bytes - read, 0, size);
          if (to_train > 0) encoder.add(false, text.substr(0, to_train));
          if (to_train < size) encoder.add(true, text.substr(to_train));
          read += size;
          progress.note("encoding", read >> 20, total_bytes >> 20, "MiB of text");
        });
      }
      encoder.finish();
      return read;
    });
    check_unchanged(input, total_bytes, position, "bytes");
  }
  stats.train_tokens = writer.train_size();
  stats.val_tokens = writer.val_size();
  writer.finish();
  return stats;
}

}  // namespace sy
