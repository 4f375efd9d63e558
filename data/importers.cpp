#include "data/importers.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <system_error>

#include "data/compressed_input.h"
#include "data/json_members.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string join(const std::vector<std::string>& parts, const std::string& separator = ", ") {
  std::string joined;
  for (const std::string& part : parts) joined += (joined.empty() ? "" : separator) + part;
  return joined;
}

uint64_t regular_file_size(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error || !fs::exists(status)) throw file_error(path, "no such file");
  if (!fs::is_regular_file(status)) throw file_error(path, "not a regular file");
  const uintmax_t size = fs::file_size(path, error);
  if (error) throw file_error(path, "cannot read size: " + error.message());
  return size;
}

void check_vocab_size(int64_t vocab_size, int64_t largest, const std::string& format) {
  if (vocab_size < 1 || vocab_size > largest)
    throw std::runtime_error("--format " + format + " needs --vocab-size in [1, " +
                             std::to_string(largest) + "], got " + std::to_string(vocab_size));
}

// Little-endian unsigned integer of `size` bytes at `bytes`, independent of the host's order.
uint64_t load_le(const unsigned char* bytes, int size) {
  uint64_t value = 0;
  for (int k = size - 1; k >= 0; k--) value = (value << 8) | bytes[k];
  return value;
}

// ---- nanoGPT ----

// Streams the uint16 tokens of `path` to sink(is_val, ...); returns how many there were.
int64_t stream_uint16_tokens(const std::string& path, int64_t vocab_size, bool is_val,
                             const TokenSink& sink) {
  const uint64_t size = regular_file_size(path);
  if (size % 2 != 0)
    throw file_error(path, "size " + std::to_string(size) +
                               " bytes is odd: not a file of uint16 tokens");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw file_error(path, "cannot open for reading");
  const uint64_t count = size / 2;
  const uint64_t block_tokens = uint64_t{1} << 20;
  std::vector<unsigned char> bytes(2 * std::min(count, block_tokens));
  std::vector<int32_t> tokens(std::min(count, block_tokens));
  for (uint64_t first = 0; first < count; first += block_tokens) {
    const uint64_t block = std::min(block_tokens, count - first);
    if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(2 * block)))
      throw file_error(path, "read failed at byte " + std::to_string(2 * first));
    for (uint64_t k = 0; k < block; k++) {
      const int64_t token = static_cast<int64_t>(load_le(&bytes[2 * k], 2));
      if (token >= vocab_size)
        throw file_error(path, "token " + std::to_string(token) + " at position " +
                                   std::to_string(first + k) + " (byte " +
                                   std::to_string(2 * (first + k)) + ") is outside [0, " +
                                   std::to_string(vocab_size) + ")");
      tokens[k] = static_cast<int32_t>(token);
    }
    sink(is_val, tokens.data(), static_cast<int64_t>(block));
  }
  return static_cast<int64_t>(count);
}

// ---- Megatron ----

// Reads the .idx with every read bounds-checked, so that a short or corrupt file gives the offset
// where it went wrong instead of garbage.
class IndexCursor {
 public:
  IndexCursor(const std::string& path, std::vector<unsigned char> bytes)
      : path_(path), bytes_(std::move(bytes)) {}
  uint64_t offset() const { return offset_; }
  uint64_t remaining() const { return bytes_.size() - offset_; }
  // `count` items of `item_size` bytes named `what` must follow.
  void need(uint64_t count, uint64_t item_size, const std::string& what) const {
    if (count > remaining() / item_size)
      throw file_error(path_, "truncated at byte " + std::to_string(offset_) + ": " + what +
                                  " needs " + std::to_string(count) + " x " +
                                  std::to_string(item_size) + " bytes, " +
                                  std::to_string(remaining()) + " remain");
  }
  uint64_t unsigned_value(int size, const std::string& what) {
    need(1, size, what);
    const uint64_t value = load_le(&bytes_[offset_], size);
    offset_ += size;
    return value;
  }
  int64_t signed_value(int size, const std::string& what) {
    const uint64_t value = unsigned_value(size, what);
    if (size == 8) return static_cast<int64_t>(value);
    const uint64_t sign = uint64_t{1} << (8 * size - 1);
    return static_cast<int64_t>(value ^ sign) - static_cast<int64_t>(sign);
  }
  std::runtime_error error_at(uint64_t offset, const std::string& what) const {
    return file_error(path_, "at byte " + std::to_string(offset) + ": " + what);
  }

 private:
  std::string path_;
  std::vector<unsigned char> bytes_;
  uint64_t offset_ = 0;
};

struct MegatronDtype {
  int code;
  const char* name;
  int size;
  bool is_signed;
  bool is_integer;
};

// Megatron-Core's DType codes (megatron/core/datasets/indexed_dataset.py).
constexpr MegatronDtype kMegatronDtypes[] = {
    {1, "uint8", 1, false, true},   {2, "int8", 1, true, true},      {3, "int16", 2, true, true},
    {4, "int32", 4, true, true},    {5, "int64", 8, true, true},     {6, "float64", 8, true, false},
    {7, "float32", 4, true, false}, {8, "uint16", 2, false, true},
};

struct MegatronIndex {
  MegatronDtype dtype{};
  std::vector<int64_t> sequence_lengths;   // [sequence_count], tokens
  std::vector<int64_t> sequence_pointers;  // [sequence_count], byte offsets into the .bin
  std::vector<int64_t> document_indices;   // [document_count]: 0, ..., sequence_count
};

constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};

MegatronIndex read_megatron_index(const std::string& idx_path, uint64_t bin_size,
                                  const std::string& bin_path) {
  const uint64_t size = regular_file_size(idx_path);
  std::vector<unsigned char> bytes(size);
  {
    std::ifstream in(idx_path, std::ios::binary);
    if (!in) throw file_error(idx_path, "cannot open for reading");
    if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size)))
      throw file_error(idx_path, "read failed");
  }
  IndexCursor cursor(idx_path, std::move(bytes));
  MegatronIndex index;

  for (int k = 0; k < 9; k++) {
    const uint64_t offset = cursor.offset();
    if (cursor.unsigned_value(1, "the header MMIDIDX\\x00\\x00") !=
        static_cast<unsigned char>(kMegatronMagic[k]))
      throw cursor.error_at(offset, "not a Megatron index: the file does not start with "
                                    "MMIDIDX\\x00\\x00");
  }
  uint64_t offset = cursor.offset();
  const uint64_t version = cursor.unsigned_value(8, "the version");
  if (version != 1)
    throw cursor.error_at(offset, "version " + std::to_string(version) + ", only 1 is known");

  offset = cursor.offset();
  const uint64_t code = cursor.unsigned_value(1, "the dtype code");
  const auto dtype = std::find_if(std::begin(kMegatronDtypes), std::end(kMegatronDtypes),
                                  [&](const MegatronDtype& d) { return d.code == int(code); });
  if (dtype == std::end(kMegatronDtypes))
    throw cursor.error_at(offset, "unknown dtype code " + std::to_string(code) + " (known: 1-8)");
  if (!dtype->is_integer)
    throw cursor.error_at(offset, "dtype code " + std::to_string(code) + " (" + dtype->name +
                                      ") does not hold token ids");
  index.dtype = *dtype;

  const uint64_t sequence_count = cursor.unsigned_value(8, "sequence_count");
  const uint64_t document_count = cursor.unsigned_value(8, "document_count");
  cursor.need(sequence_count, 4, "sequence_lengths");
  index.sequence_lengths.resize(sequence_count);
  for (uint64_t i = 0; i < sequence_count; i++) {
    offset = cursor.offset();
    index.sequence_lengths[i] = cursor.signed_value(4, "sequence_lengths");
    if (index.sequence_lengths[i] < 0)
      throw cursor.error_at(offset, "sequence_lengths[" + std::to_string(i) + "] is " +
                                        std::to_string(index.sequence_lengths[i]));
  }
  cursor.need(sequence_count, 8, "sequence_pointers");
  index.sequence_pointers.resize(sequence_count);
  for (uint64_t i = 0; i < sequence_count; i++) {
    offset = cursor.offset();
    const int64_t pointer = cursor.signed_value(8, "sequence_pointers");
    const uint64_t length_bytes = uint64_t(index.sequence_lengths[i]) * uint64_t(dtype->size);
    if (pointer < 0 || uint64_t(pointer) > bin_size || length_bytes > bin_size - uint64_t(pointer))
      throw cursor.error_at(offset, "sequence " + std::to_string(i) + " spans bytes [" +
                                        std::to_string(pointer) + ", " +
                                        std::to_string(pointer + int64_t(length_bytes)) +
                                        ") of " + bin_path + ", which has " +
                                        std::to_string(bin_size) + " bytes");
    if (pointer % dtype->size != 0)
      throw cursor.error_at(offset, "sequence_pointers[" + std::to_string(i) + "] = " +
                                        std::to_string(pointer) + " is not a multiple of " +
                                        std::to_string(dtype->size) + " (" + dtype->name + ")");
    index.sequence_pointers[i] = pointer;
  }
  cursor.need(document_count, 8, "document_indices");
  if (document_count == 0)
    throw cursor.error_at(cursor.offset(), "document_count is 0; it counts the leading 0 of "
                                           "document_indices, so it is at least 1");
  index.document_indices.resize(document_count);
  for (uint64_t d = 0; d < document_count; d++) {
    offset = cursor.offset();
    const int64_t value = cursor.signed_value(8, "document_indices");
    if (d == 0 && value != 0)
      throw cursor.error_at(offset, "document_indices[0] is " + std::to_string(value) +
                                        ", not 0");
    if (d > 0 && value < index.document_indices[d - 1])
      throw cursor.error_at(offset, "document_indices[" + std::to_string(d) + "] = " +
                                        std::to_string(value) + " is below document_indices[" +
                                        std::to_string(d - 1) + "] = " +
                                        std::to_string(index.document_indices[d - 1]));
    index.document_indices[d] = value;
  }
  if (index.document_indices.back() != int64_t(sequence_count))
    throw cursor.error_at(cursor.offset() - 8,
                          "the last document index is " +
                              std::to_string(index.document_indices.back()) +
                              ", not sequence_count " + std::to_string(sequence_count));
  // A multimodal dataset follows with one int8 mode per sequence; anything else is damage.
  if (cursor.remaining() != 0 && cursor.remaining() != sequence_count)
    throw cursor.error_at(cursor.offset(), std::to_string(cursor.remaining()) +
                                               " bytes follow document_indices; expected 0 or " +
                                               std::to_string(sequence_count) +
                                               " (sequence_modes)");
  return index;
}

}  // namespace

void check_import_vocab_size(const std::string& format, int64_t vocab_size) {
  check_vocab_size(vocab_size, format == "nanogpt" ? 65536 : int64_t{1} << 31, format);
}

int64_t train_document_count(int64_t documents, double val_fraction, const std::string& input) {
  const int64_t train =
      static_cast<int64_t>(std::floor((1.0 - val_fraction) * static_cast<double>(documents)));
  if (train < 1) {
    char fraction[32];
    std::snprintf(fraction, sizeof fraction, "%g", val_fraction);
    throw std::runtime_error(input + ": " + std::to_string(documents) +
                             " documents are too few for --val-fraction " + fraction +
                             ": no training document is left");
  }
  return train;
}

namespace {

// The messages of a conversation: each {"role", "content"} or ShareGPT's {"from", "value"}.
std::vector<ChatMessage> chat_messages(nlohmann::json& listed, const std::string& field,
                                       const std::string& path, const std::string& at) {
  if (!listed.is_array())
    throw file_error(path, at + "field \"" + field + "\" is a " + listed.type_name() +
                               ", not an array of messages");
  std::vector<ChatMessage> messages;
  for (size_t k = 0; k < listed.size(); ++k) {
    nlohmann::json& message = listed[k];
    const std::string message_at = at + field + "[" + std::to_string(k) + "]: ";
    if (!message.is_object())
      throw file_error(path, message_at + "a JSON " + message.type_name() + ", not an object");
    const bool share_gpt = !message.contains("role") && message.contains("from");
    std::string& role = string_member(message, share_gpt ? "from" : "role", path, message_at);
    std::string& text = string_member(message, share_gpt ? "value" : "content", path, message_at);
    messages.push_back({canonical_role(std::move(role)), std::move(text)});
  }
  return messages;
}

}  // namespace

int64_t for_each_jsonl_lines(const std::vector<std::string>& files, int64_t batch_bytes,
                             const std::function<void(JsonlLines&&)>& visit) {
  if (files.empty()) throw std::runtime_error("--format jsonl: no --input file");
  int64_t objects = 0;
  for (const std::string& path : files) {
    regular_file_size(path);  // names a missing file or a folder
    JsonRecords records(path);
    JsonlLines batch{path, objects, {}, 0};
    const auto hand_over = [&] {
      if (batch.lines.empty()) return;
      visit(std::move(batch));
      batch = JsonlLines{path, objects, {}, 0};
    };
    for (JsonlLine record; records.next(record);) {
      batch.bytes += static_cast<int64_t>(record.text.size());
      batch.lines.push_back(std::move(record));
      objects++;
      if (batch.bytes >= batch_bytes) hand_over();
    }
    hand_over();
  }
  if (objects == 0) throw std::runtime_error(join(files) + ": no documents");
  return objects;
}

std::string jsonl_document(const JsonlLine& line, const std::string& field,
                           const std::string& path) {
  nlohmann::json object = parse_jsonl_object(line, path);
  return std::move(string_member(object, field, path, record_position(line)));
}

SftExample sft_example(const JsonlLine& line, const SftFields& fields, const std::string& path) {
  nlohmann::json object = parse_jsonl_object(line, path);
  const std::string at = record_position(line);
  SftExample example;
  std::vector<SftSegment>& segments = example.segments;
  const auto listed = object.find("segments");
  if (listed == object.end()) {
    const auto conversation = object.find(fields.messages);
    if (conversation != object.end())
      return sft_conversation(chat_messages(*conversation, fields.messages, path, at), fields,
                              path + ": " + at);
    const bool has_prompt =
        std::any_of(fields.prompt.begin(), fields.prompt.end(),
                    [&](const std::string& field) { return object.contains(field); });
    if (!has_prompt && !object.contains(fields.response))
      throw file_error(path, at + "no field \"" + join(fields.prompt, "\", \"") + "\" and \"" +
                                 fields.response + "\", \"" + fields.messages +
                                 "\" or \"segments\"");
    std::vector<std::string> prompt_parts;
    for (const std::string& field : fields.prompt)
      prompt_parts.push_back(nullable_string_member(object, field, path, at));
    std::string system;
    if (!fields.system_field.empty())
      system = nullable_string_member(object, fields.system_field, path, at);
    return sft_pair(prompt_parts, std::move(string_member(object, fields.response, path, at)),
                    std::move(system), fields, path + ": " + at);
  }
  if (!listed->is_array() || listed->empty())
    throw file_error(path, at + "field \"segments\" is not a non-empty array");
  for (size_t k = 0; k < listed->size(); ++k) {
    nlohmann::json& segment = (*listed)[k];
    const std::string segment_at = at + "segments[" + std::to_string(k) + "]: ";
    if (!segment.is_object())
      throw file_error(path, segment_at + "a JSON " + segment.type_name() + ", not an object");
    const auto train = segment.find("train");
    if (train == segment.end() || !train->is_boolean())
      throw file_error(path, segment_at + "field \"train\" must be true or false");
    const bool trained = train->get<bool>();
    segments.push_back({std::move(string_member(segment, "text", path, segment_at)), trained});
  }
  return example;
}

SftExample sft_conversation(std::vector<ChatMessage> messages, const SftFields& fields,
                            const std::string& at) {
  if (!fields.system.empty() && (messages.empty() || messages.front().role != "system"))
    messages.insert(messages.begin(), {"system", fields.system});
  return {render_chat(messages, fields.chat_template, at), true};
}

SftExample sft_pair(const std::vector<std::string>& prompt_parts, std::string response,
                    std::string system, const SftFields& fields, const std::string& at) {
  std::string prompt;
  for (const std::string& part : prompt_parts)
    if (!part.empty()) prompt += (prompt.empty() ? "" : "\n\n") + part;
  if (fields.pairs_in_template) {
    std::vector<ChatMessage> messages = {{"user", std::move(prompt)},
                                         {kAssistantRole, std::move(response)}};
    if (!system.empty()) messages.insert(messages.begin(), {"system", std::move(system)});
    return sft_conversation(std::move(messages), fields, at);
  }
  return {{{std::move(prompt), false}, {std::move(response), true}}, false};
}

ImportCounts import_nanogpt(const std::string& input, int64_t vocab_size, const TokenSink& sink) {
  check_vocab_size(vocab_size, 65536, "nanogpt");
  std::error_code error;
  const fs::path train_path =
      fs::is_directory(input, error) ? fs::path(input) / "train.bin" : fs::path(input);
  const fs::path val_path = train_path.parent_path() / "val.bin";
  if (stream_uint16_tokens(train_path.string(), vocab_size, false, sink) == 0)
    throw file_error(train_path.string(), "no tokens");
  stream_uint16_tokens(val_path.string(), vocab_size, true, sink);
  return {};
}

ImportCounts import_megatron(const std::string& prefix_or_file, int64_t vocab_size,
                             double val_fraction, const TokenSink& sink,
                             const DocumentSink& start_document) {
  check_vocab_size(vocab_size, int64_t{1} << 31, "megatron");
  std::string prefix = prefix_or_file;
  for (const char* suffix : {".bin", ".idx"})
    if (prefix.size() > 4 && prefix.compare(prefix.size() - 4, 4, suffix) == 0)
      prefix.resize(prefix.size() - 4);
  const std::string bin_path = prefix + ".bin", idx_path = prefix + ".idx";
  const uint64_t bin_size = regular_file_size(bin_path);
  const MegatronIndex index = read_megatron_index(idx_path, bin_size, bin_path);
  const MegatronDtype& dtype = index.dtype;

  const int64_t documents = static_cast<int64_t>(index.document_indices.size()) - 1;
  if (documents == 0) throw file_error(idx_path, "no documents");
  const int64_t train_documents = train_document_count(documents, val_fraction, prefix);

  std::ifstream bin(bin_path, std::ios::binary);
  if (!bin) throw file_error(bin_path, "cannot open for reading");
  ImportCounts counts;
  counts.documents = documents;
  counts.val_documents = documents - train_documents;
  int64_t train_tokens = 0;
  const int64_t block_tokens = int64_t{1} << 20;  // a long sequence is streamed in blocks
  std::vector<unsigned char> bytes;
  std::vector<int32_t> tokens;
  for (int64_t d = 0; d < documents; d++) {
    const bool is_val = d >= train_documents;
    if (start_document) start_document(is_val);
    for (int64_t s = index.document_indices[d]; s < index.document_indices[d + 1]; s++) {
      const int64_t pointer = index.sequence_pointers[s];
      const int64_t length = index.sequence_lengths[s];
      bin.seekg(pointer);
      for (int64_t first = 0; first < length; first += block_tokens) {
        const int64_t block = std::min(block_tokens, length - first);
        const int64_t block_pointer = pointer + first * dtype.size;
        bytes.resize(static_cast<size_t>(block) * dtype.size);
        tokens.resize(static_cast<size_t>(block));
        if (!bin.read(reinterpret_cast<char*>(bytes.data()),
                      static_cast<std::streamsize>(bytes.size())))
          throw file_error(bin_path, "read failed at byte " + std::to_string(block_pointer));
        for (int64_t k = 0; k < block; k++) {
          const uint64_t raw = load_le(&bytes[k * dtype.size], dtype.size);
          int64_t token = static_cast<int64_t>(raw);
          if (dtype.is_signed && dtype.size < 8) {
            const uint64_t sign = uint64_t{1} << (8 * dtype.size - 1);
            token = static_cast<int64_t>(raw ^ sign) - static_cast<int64_t>(sign);
          }
          if (token < 0 || token >= vocab_size)
            throw file_error(bin_path, "token " + std::to_string(token) + " at element " +
                                           std::to_string(pointer / dtype.size + first + k) +
                                           " (byte " +
                                           std::to_string(block_pointer + k * dtype.size) +
                                           ", document " + std::to_string(d) +
                                           ") is outside [0, " + std::to_string(vocab_size) + ")");
          tokens[k] = static_cast<int32_t>(token);
        }
        sink(is_val, tokens.data(), block);
        if (!is_val) train_tokens += block;
      }
    }
  }
  if (train_tokens == 0)
    throw file_error(prefix, "the " + std::to_string(train_documents) +
                                 " training documents hold no tokens");
  return counts;
}

}  // namespace sy
