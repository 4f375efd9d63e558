#include "data/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#ifdef SY_HAVE_ICU
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/utext.h>
#include <unicode/utf8.h>
#endif

namespace sy {

std::string eos_token_beside(const std::string& tokenizer_json_path) {
  const std::filesystem::path config_path =
      std::filesystem::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code error;
  if (!std::filesystem::is_regular_file(config_path, error)) return {};
  std::ifstream in(config_path);
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& parse_error) {
    throw std::runtime_error(config_path.string() + ": not JSON (" + parse_error.what() + ")");
  }
  if (!config.is_object() || !config.contains("eos_token") || config["eos_token"].is_null())
    return {};
  const nlohmann::json& eos = config["eos_token"];
  if (eos.is_string()) return eos.get<std::string>();
  if (eos.is_object() && eos.contains("content") && eos["content"].is_string())
    return eos["content"].get<std::string>();
  throw std::runtime_error(config_path.string() +
                           ": eos_token is neither a string nor an object with content");
}

std::string byte_level_piece(const std::string& bytes) {
  std::string piece;
  for (const unsigned char byte : bytes) {
    // The printable Latin-1 bytes stand for themselves; the others take U+0100 onwards in byte
    // order (the count of non-printable bytes below this one).
    const auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int code = byte;
    if (!printable(byte)) {
      code = 256;
      for (int below = 0; below < byte; below++) code += printable(below) ? 0 : 1;
    }
    if (code < 0x80) {
      piece += static_cast<char>(code);
    } else {  // below U+0800: two bytes
      piece += static_cast<char>(0xC0 | (code >> 6));
      piece += static_cast<char>(0x80 | (code & 0x3F));
    }
  }
  return piece;
}

#ifndef SY_HAVE_ICU

bool hf_tokenizers_available() { return false; }

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string&, const std::string&,
                                             const std::string& source) {
  throw std::runtime_error(source +
                           ": this Switchyard was built without ICU, which tokenizer.json "
                           "tokenizers need (apt-get install libicu-dev, then rebuild)");
}

#else

namespace {

using nlohmann::json;

// ---- UTF-8 ----

// Throws unless `text` is valid UTF-8: tokenizer.json tokenizers work on Unicode text, and
// decoding damaged bytes to U+FFFD would change the ids silently.
void check_utf8(const std::string& text, const std::string& source) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const int32_t length = static_cast<int32_t>(text.size());
  if (text.size() > static_cast<size_t>(INT32_MAX))
    throw std::runtime_error(source + ": a text of " + std::to_string(text.size()) +
                             " bytes is more than one encode call takes (2 GiB)");
  for (int32_t at = 0; at < length;) {
    const int32_t start = at;
    UChar32 c;
    U8_NEXT(bytes, at, length, c);
    if (c < 0)
      throw std::runtime_error(source + ": the text is not valid UTF-8 at byte " +
                               std::to_string(start));
  }
}

// The byte offset where the code point that ends at `end` starts.
size_t previous_boundary(const std::string& text, size_t end) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  int32_t at = static_cast<int32_t>(end);
  U8_BACK_1(bytes, 0, at);
  return static_cast<size_t>(at);
}

UChar32 code_point_at(const std::string& text, size_t start) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  int32_t at = static_cast<int32_t>(start);
  UChar32 c;
  U8_NEXT(bytes, at, static_cast<int32_t>(text.size()), c);
  return c;
}

// \w and \s of Rust's regex crate, which the tokenizers library uses for added tokens' options.
bool is_word_char(UChar32 c) {
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}
bool is_space(UChar32 c) { return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE); }

// One byte's character in the byte-level alphabet, and each such character's byte.
std::array<std::string, 256> byte_level_characters() {
  std::array<std::string, 256> characters;
  for (int byte = 0; byte < 256; byte++)
    characters[byte] = byte_level_piece(std::string(1, static_cast<char>(byte)));
  return characters;
}

// ---- regular expressions ----

// Oniguruma's \s and \S (what the tokenizers library compiles these patterns with) are Unicode
// White_Space; ICU's \s leaves out U+000B and U+0085. Everything else the published patterns use
// (\p{L}, \p{N}, (?i:...), (?!...), {1,3}) means the same in both.
std::string as_icu_pattern(const std::string& pattern) {
  std::string out;
  for (size_t k = 0; k < pattern.size(); k++) {
    if (pattern[k] == '\\' && k + 1 < pattern.size()) {
      const char next = pattern[k + 1];
      if (next == 's' || next == 'S') {
        out += next == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
      } else {
        out += pattern.substr(k, 2);
      }
      k++;
      continue;
    }
    out += pattern[k];
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse_error;
    const std::string icu_pattern = literal ? pattern : as_icu_pattern(pattern);
    pattern_.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu_pattern),
                                              literal ? UREGEX_LITERAL : 0, parse_error, status));
    if (U_FAILURE(status))
      throw std::runtime_error(where + ": cannot compile the pattern " + pattern + " (" +
                               u_errorName(status) + ")");
  }
  // The [start, end) byte ranges of the matches in `text`, left to right.
  std::vector<std::pair<size_t, size_t> > matches(const std::string& text) const {
    std::vector<std::pair<size_t, size_t> > found;
    UErrorCode status = U_ZERO_ERROR;
    UText* utext = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    std::unique_ptr<icu::RegexMatcher> matcher(pattern_->matcher(status));
    if (U_SUCCESS(status)) matcher->reset(utext);
    while (U_SUCCESS(status) && matcher->find(status)) {
      const int64_t start = matcher->start64(status), end = matcher->end64(status);
      if (end > start) found.emplace_back(start, end);
    }
    utext_close(utext);
    if (U_FAILURE(status))
      throw std::runtime_error(std::string("tokenizer regex failed: ") + u_errorName(status));
    return found;
  }

 private:
  std::unique_ptr<icu::RegexPattern> pattern_;
};

// ---- the parts of a tokenizer.json ----

// The largest id a tokenizer.json may hold: ids index tables of one entry each, and the largest
// published vocabularies are near 2^18. A damaged file's 2^31 must not allocate 64 GiB.
constexpr int64_t kMaxTokenizerId = int64_t{1} << 24;

int32_t id_value(const json& value, const std::string& what, const std::string& where) {
  if (!value.is_number_integer())
    throw std::runtime_error(where + ": " + what + " is " + value.dump() + ", not an integer");
  if (value.is_number_unsigned()
          ? value.get<uint64_t>() >= kMaxTokenizerId
          : value.get<int64_t>() < 0 || value.get<int64_t>() >= kMaxTokenizerId)
    throw std::runtime_error(where + ": " + what + " is " + value.dump() + ", outside [0, 2^24)");
  return static_cast<int32_t>(value.get<int64_t>());
}

struct AddedToken {
  std::string content;  // normalized tokens: the content after the normalizer
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// Leftmost-longest matching of added tokens, as the library's Aho-Corasick automaton does.
class AddedTokenMatcher {
 public:
  void add(const AddedToken& token) {
    if (token.content.empty()) return;
    auto& bucket = by_first_byte_[static_cast<uint8_t>(token.content[0])];
    bucket.push_back(token);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
    empty_ = false;
  }
  bool empty() const { return empty_; }
  const AddedToken* longest_at(const std::string& text, size_t at) const {
    for (const AddedToken& token : by_first_byte_[static_cast<uint8_t>(text[at])])
      if (text.compare(at, token.content.size(), token.content) == 0) return &token;
    return nullptr;
  }

 private:
  std::array<std::vector<AddedToken>, 256> by_first_byte_;
  bool empty_ = true;
};

// A stretch of the text: an added token (added_id >= 0), or text the model still tokenises.
struct Piece {
  std::string text;
  int32_t added_id = -1;
};

// Splits `text` at the added tokens it holds (find_matches in the library's added_vocabulary.rs:
// single_word tokens only between non-word characters, lstrip and rstrip taking the whitespace
// beside them into the token).
void split_at_added_tokens(const std::string& text, const AddedTokenMatcher& matcher,
                           std::vector<Piece>& out) {
  if (matcher.empty() || text.empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return;
  }
  size_t piece_start = 0, at = 0;
  while (at < text.size()) {
    const AddedToken* token = matcher.longest_at(text, at);
    if (token == nullptr) {
      at++;
      continue;
    }
    size_t start = at, stop = at + token->content.size();
    at = stop;
    if (token->single_word &&
        ((start > 0 && is_word_char(code_point_at(text, previous_boundary(text, start)))) ||
         (stop < text.size() && is_word_char(code_point_at(text, stop)))))
      continue;
    if (token->lstrip) {
      size_t space_start = start;
      while (space_start > 0 && is_space(code_point_at(text, previous_boundary(text, space_start))))
        space_start = previous_boundary(text, space_start);
      start = std::max(space_start, piece_start);
    }
    if (token->rstrip)
      while (stop < text.size() && is_space(code_point_at(text, stop)))
        stop += U8_LENGTH(code_point_at(text, stop));
    if (piece_start < start) out.push_back({text.substr(piece_start, start - piece_start), -1});
    out.push_back({text.substr(start, stop - start), token->id});
    piece_start = stop;
    at = std::max(at, stop);
  }
  if (piece_start < text.size()) out.push_back({text.substr(piece_start), -1});
}

// The normalizer: none, one Unicode normal form, or a sequence of them.
class Normalizer {
 public:
  Normalizer() = default;
  Normalizer(const json& spec, const std::string& where) { add(spec, where); }
  bool empty() const { return forms_.empty(); }
  std::string apply(const std::string& text) const {
    std::string current = text;
    for (const icu::Normalizer2* form : forms_) {
      UErrorCode status = U_ZERO_ERROR;
      if (form->isNormalizedUTF8(current, status) && U_SUCCESS(status)) continue;
      std::string normalized;
      icu::StringByteSink<std::string> sink(&normalized);
      status = U_ZERO_ERROR;
      form->normalizeUTF8(0, current, sink, nullptr, status);
      if (U_FAILURE(status))
        throw std::runtime_error(std::string("tokenizer normalizer failed: ") +
                                 u_errorName(status));
      current = std::move(normalized);
    }
    return current;
  }

 private:
  void add(const json& spec, const std::string& where) {
    if (spec.is_null()) return;
    const std::string type = spec.value("type", "");
    if (type == "Sequence") {
      for (const json& part : spec.at("normalizers")) add(part, where);
      return;
    }
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* form = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                                   : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                                   : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                   : type == "NFKD" ? icu::Normalizer2::getNFKDInstance(status)
                                                    : nullptr;
    if (form == nullptr)
      throw std::runtime_error(where + ": normalizer " + type +
                               " is not supported (NFC, NFD, NFKC, NFKD and Sequence are)");
    if (U_FAILURE(status))
      throw std::runtime_error(where + ": ICU has no " + type + " data (" + u_errorName(status) +
                               ")");
    forms_.push_back(form);
  }
  std::vector<const icu::Normalizer2*> forms_;
};

// One step of the pre-tokenizer: a Split by a pattern, or the final ByteLevel.
struct PreTokenizerStep {
  enum class Kind { split, byte_level } kind = Kind::split;
  std::shared_ptr<Regex> pattern;  // split; byte_level with use_regex: GPT-2's pattern
  std::string behavior = "Isolated";
  bool invert = false;
  bool add_prefix_space = false;  // byte_level
};

// GPT-2's pattern, which ByteLevel with use_regex splits by.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The pieces of `text` a Split step keeps (split_with_behavior in the library's normalizer.rs).
std::vector<std::string> split_by(const std::string& text, const PreTokenizerStep& step) {
  struct Span {
    size_t start, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t previous = 0;
  for (const auto& [start, end] : step.pattern->matches(text)) {
    if (previous != start) spans.push_back({previous, start, step.invert});
    spans.push_back({start, end, !step.invert});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), step.invert});

  std::vector<Span> kept;
  const std::string& behavior = step.behavior;
  if (behavior == "Removed") {
    for (const Span& span : spans)
      if (!span.is_match) kept.push_back(span);
  } else if (behavior == "Isolated") {
    kept = spans;
  } else if (behavior == "Contiguous" || behavior == "MergedWithPrevious") {
    const bool contiguous = behavior == "Contiguous";
    bool previous_match = false;
    for (const Span& span : spans) {
      const bool merge =
          contiguous ? span.is_match == previous_match : span.is_match && !previous_match;
      if (merge && !kept.empty()) kept.back().end = span.end;
      else kept.push_back(span);
      previous_match = span.is_match;
    }
  } else {  // MergedWithNext
    bool previous_match = false;
    for (auto span = spans.rbegin(); span != spans.rend(); ++span) {
      if (span->is_match && !previous_match && !kept.empty()) kept.back().start = span->start;
      else kept.push_back(*span);
      previous_match = span->is_match;
    }
    std::reverse(kept.begin(), kept.end());
  }
  std::vector<std::string> pieces;
  for (const Span& span : kept)
    if (span.end > span.start) pieces.push_back(text.substr(span.start, span.end - span.start));
  return pieces;
}

void add_pre_tokenizer(const json& spec, const std::string& where,
                       std::vector<PreTokenizerStep>& steps) {
  const std::string type = spec.value("type", "");
  if (type == "Sequence") {
    for (const json& part : spec.at("pretokenizers")) add_pre_tokenizer(part, where, steps);
    return;
  }
  if (!steps.empty() && steps.back().kind == PreTokenizerStep::Kind::byte_level)
    throw std::runtime_error(where + ": pre_tokenizer " + type +
                             " after ByteLevel is not supported (ByteLevel must come last)");
  PreTokenizerStep step;
  if (type == "Split") {
    const json& pattern = spec.at("pattern");
    const bool literal = pattern.contains("String");
    const std::string text =
        literal ? pattern.at("String").get<std::string>() : pattern.at("Regex").get<std::string>();
    step.pattern = std::make_shared<Regex>(text, literal, where + ": pre_tokenizer Split");
    step.behavior = spec.at("behavior").get<std::string>();
    static const std::vector<std::string> behaviors = {"Removed", "Isolated", "MergedWithPrevious",
                                                       "MergedWithNext", "Contiguous"};
    if (std::find(behaviors.begin(), behaviors.end(), step.behavior) == behaviors.end())
      throw std::runtime_error(where + ": pre_tokenizer Split has an unknown behavior " +
                               step.behavior);
    step.invert = spec.value("invert", false);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::byte_level;
    step.add_prefix_space = spec.value("add_prefix_space", true);
    if (spec.value("use_regex", true))
      step.pattern = std::make_shared<Regex>(kGpt2Pattern, false, where + ": ByteLevel");
  } else {
    throw std::runtime_error(where + ": pre_tokenizer " + (type.empty() ? "(no type)" : type) +
                             " is not supported (byte-level BPE tokenizers are: Sequence, Split "
                             "and ByteLevel)");
  }
  steps.push_back(std::move(step));
}

// The BPE model: its vocabulary and merges (model.rs and word.rs of the library).
class BpeModel {
 public:
  BpeModel(const json& spec, const std::string& where) {
    if (spec.value("type", "BPE") != "BPE")
      throw std::runtime_error(where + ": model " + spec.value("type", std::string()) +
                               " is not supported (BPE is)");
    if (spec.contains("dropout") && !spec["dropout"].is_null() && spec["dropout"] != 0.0)
      throw std::runtime_error(where +
                               ": model.dropout is set; BPE dropout is a random "
                               "augmentation that Switchyard does not apply");
    for (const auto& [piece, id] : spec.at("vocab").items()) {
      vocab_.emplace(piece, id_value(id, "the vocab id of " + piece, where));
    }
    prefix_ = optional_string(spec, "continuing_subword_prefix");
    suffix_ = optional_string(spec, "end_of_word_suffix");
    ignore_merges_ = spec.value("ignore_merges", false);
    byte_fallback_ = spec.value("byte_fallback", false);
    fuse_unk_ = spec.value("fuse_unk", false);
    const std::string unk = optional_string(spec, "unk_token");
    if (!unk.empty()) {
      const auto found = vocab_.find(unk);
      if (found == vocab_.end())
        throw std::runtime_error(where + ": model.unk_token " + unk + " is not in the vocab");
      unk_id_ = found->second;
    }
    const json& merges = spec.at("merges");
    for (size_t rank = 0; rank < merges.size(); rank++) add_merge(merges[rank], rank, where);
  }

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }

  // The ids of one pre-tokenized piece (already in the byte-level alphabet).
  void tokenize(const std::string& word, std::vector<int32_t>& ids) const {
    if (ignore_merges_) {
      const auto whole = vocab_.find(word);
      if (whole != vocab_.end()) {
        ids.push_back(whole->second);
        return;
      }
    }
    std::vector<int32_t> symbols = initial_symbols(word);
    // Lowest rank first; among equal ranks (the same pair) the leftmost, as the library's heap.
    while (symbols.size() > 1) {
      size_t best = 0;
      const Merge* best_merge = nullptr;
      for (size_t k = 0; k + 1 < symbols.size(); k++) {
        const auto found = merges_.find(pair_key(symbols[k], symbols[k + 1]));
        if (found != merges_.end() &&
            (best_merge == nullptr || found->second.rank < best_merge->rank)) {
          best_merge = &found->second;
          best = k;
        }
      }
      if (best_merge == nullptr) break;
      symbols[best] = best_merge->merged_id;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    ids.insert(ids.end(), symbols.begin(), symbols.end());
  }

 private:
  struct Merge {
    size_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  static std::string optional_string(const json& spec, const char* key) {
    return spec.contains(key) && spec[key].is_string() ? spec[key].get<std::string>() : "";
  }

  int32_t id_of(const std::string& piece, const std::string& where) const {
    const auto found = vocab_.find(piece);
    if (found == vocab_.end())
      throw std::runtime_error(where + ": merge part " + piece + " is not in the vocab");
    return found->second;
  }

  void add_merge(const json& merge, size_t rank, const std::string& where) {
    std::string left, right;
    if (merge.is_string()) {  // the older format: "left right"
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ', 1);
      if (space == std::string::npos)
        throw std::runtime_error(where + ": merge " + std::to_string(rank) + " (" + text +
                                 ") is not two parts");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      throw std::runtime_error(where + ": merge " + std::to_string(rank) + " is not two parts");
    }
    const std::string merged =
        left +
        (!prefix_.empty() && right.rfind(prefix_, 0) == 0 ? right.substr(prefix_.size()) : right);
    const uint64_t key = pair_key(id_of(left, where), id_of(right, where));
    merges_.emplace(key, Merge{rank, id_of(merged, where)});  // the first (lowest) rank wins
  }

  std::vector<int32_t> initial_symbols(const std::string& word) const {
    std::vector<int32_t> symbols;
    int32_t pending_unk_bytes = 0;
    const auto flush_unk = [&] {
      if (pending_unk_bytes > 0) symbols.push_back(unk_id_);
      pending_unk_bytes = 0;
    };
    for (size_t at = 0; at < word.size();) {
      const size_t length = U8_LENGTH(code_point_at(word, at));
      std::string piece = word.substr(at, length);
      if (at > 0) piece = prefix_ + piece;
      if (at + length == word.size()) piece += suffix_;
      at += length;
      const auto found = vocab_.find(piece);
      if (found != vocab_.end()) {
        flush_unk();
        symbols.push_back(found->second);
        continue;
      }
      if (byte_fallback_ && add_byte_fallback(word.substr(at - length, length), symbols)) continue;
      if (unk_id_ < 0)
        throw std::runtime_error("tokenizer.json: the character " +
                                 word.substr(at - length, length) +
                                 " is not in the vocabulary and the model has no unk_token");
      if (!fuse_unk_) flush_unk();
      pending_unk_bytes += static_cast<int32_t>(length);
    }
    flush_unk();
    return symbols;
  }

  bool add_byte_fallback(const std::string& character, std::vector<int32_t>& symbols) const {
    std::vector<int32_t> bytes;
    for (const unsigned char byte : character) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", byte);
      const auto found = vocab_.find(name);
      if (found == vocab_.end()) return false;
      bytes.push_back(found->second);
    }
    symbols.insert(symbols.end(), bytes.begin(), bytes.end());
    return true;
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::string prefix_, suffix_;
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
};

class HfTokenizer : public Tokenizer {
 public:
  HfTokenizer(const std::string& json_bytes, const std::string& eos_token,
              const std::string& source)
      : json_bytes_(json_bytes), eos_token_(eos_token), source_(source) {
    json spec;
    try {
      spec = json::parse(json_bytes);
    } catch (const json::exception& error) {
      throw std::runtime_error(source + ": not JSON (" + error.what() + ")");
    }
    try {
      load(spec);
    } catch (const json::exception& error) {
      throw std::runtime_error(source + ": not a tokenizer.json of the expected form (" +
                               error.what() + ")");
    }
  }

  std::string name() const override { return kHuggingFaceTokenizer; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string model() const override { return json_bytes_; }
  std::string model_name() const override { return kHuggingFaceTokenizerFile; }
  std::string stored_eos_token() const override { return eos_token_; }
  int32_t eos_id() const override { return eos_id_; }

  std::vector<int32_t> encode(const std::string& text) const override {
    check_utf8(text, source_);
    std::vector<Piece> raw_pieces;
    split_at_added_tokens(text, raw_added_, raw_pieces);
    std::vector<int32_t> ids;
    for (const Piece& raw : raw_pieces) {
      if (raw.added_id >= 0) {
        ids.push_back(raw.added_id);
        continue;
      }
      std::vector<Piece> pieces;
      split_at_added_tokens(normalizer_.apply(raw.text), normalized_added_, pieces);
      for (const Piece& piece : pieces) {
        if (piece.added_id >= 0) ids.push_back(piece.added_id);
        else encode_words(piece.text, ids);
      }
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& tokens) const override {
    std::string text;
    for (size_t k = 0; k < tokens.size(); k++) {
      const int32_t id = tokens[k];
      if (id < 0 || id >= vocab_size_ || piece_of_id_[id].empty())
        throw std::runtime_error(source_ + ": token " + std::to_string(id) + " at " +
                                 std::to_string(k) + " is not in the vocabulary");
      append_decoded(piece_of_id_[id], text);
    }
    return text;
  }

 private:
  void load(const json& spec) {
    const std::string where = source_;
    if (spec.contains("normalizer")) normalizer_ = Normalizer(spec["normalizer"], where);
    if (!spec.contains("pre_tokenizer") || spec["pre_tokenizer"].is_null())
      throw std::runtime_error(where +
                               ": no pre_tokenizer (byte-level BPE tokenizers end theirs "
                               "with ByteLevel)");
    add_pre_tokenizer(spec["pre_tokenizer"], where, steps_);
    if (steps_.empty() || steps_.back().kind != PreTokenizerStep::Kind::byte_level)
      throw std::runtime_error(where +
                               ": the pre_tokenizer does not end with ByteLevel (only "
                               "byte-level BPE tokenizers are supported; for a "
                               "SentencePiece model pass its tokenizer.model)");
    if (spec.contains("decoder") && !spec["decoder"].is_null() &&
        spec["decoder"].value("type", "") != "ByteLevel")
      throw std::runtime_error(where + ": decoder " + spec["decoder"].value("type", "") +
                               " is not supported (ByteLevel is)");
    model_ = std::make_unique<BpeModel>(spec.at("model"), where);

    int64_t size = 0;
    for (const auto& [piece, id] : model_->vocab()) size = std::max<int64_t>(size, id + 1);
    std::vector<AddedToken> added;
    if (spec.contains("added_tokens"))
      for (const json& entry : spec["added_tokens"]) {
        AddedToken token;
        token.id = id_value(entry.at("id"), "an added token's id", where);
        token.content = entry.at("content").get<std::string>();
        token.single_word = entry.value("single_word", false);
        token.lstrip = entry.value("lstrip", false);
        token.rstrip = entry.value("rstrip", false);
        token.normalized = entry.value("normalized", false);
        size = std::max<int64_t>(size, int64_t{token.id} + 1);
        added.push_back(token);
      }
    vocab_size_ = size;
    piece_of_id_.assign(static_cast<size_t>(size), std::string());
    is_added_.assign(static_cast<size_t>(size), false);
    for (const auto& [piece, id] : model_->vocab()) piece_of_id_[id] = piece;
    for (AddedToken& token : added) {
      piece_of_id_[token.id] = token.content;
      is_added_[token.id] = true;
      if (token.normalized) {
        token.content = normalizer_.apply(token.content);
        normalized_added_.add(token);
      } else {
        raw_added_.add(token);
      }
    }
    if (!eos_token_.empty()) {
      eos_id_ = id_of_text(eos_token_);
      if (eos_id_ < 0)
        throw std::runtime_error(where + ": the EOS token " + eos_token_ +
                                 " is not in the vocabulary");
    }
  }

  int32_t id_of_text(const std::string& text) const {
    for (size_t id = 0; id < piece_of_id_.size(); id++)
      if (is_added_[id] && piece_of_id_[id] == text) return static_cast<int32_t>(id);
    const auto found = model_->vocab().find(text);
    return found == model_->vocab().end() ? -1 : found->second;
  }

  // Pre-tokenizes a stretch without added tokens and runs BPE on each of its words.
  void encode_words(const std::string& text, std::vector<int32_t>& ids) const {
    std::vector<std::string> pieces{text};
    for (const PreTokenizerStep& step : steps_) {
      std::vector<std::string> next;
      for (std::string& piece : pieces) {
        if (piece.empty()) continue;
        if (step.kind == PreTokenizerStep::Kind::byte_level && step.add_prefix_space &&
            piece[0] != ' ')
          piece.insert(piece.begin(), ' ');
        if (!step.pattern) {
          next.push_back(std::move(piece));
          continue;
        }
        for (std::string& part : split_by(piece, step)) next.push_back(std::move(part));
      }
      pieces = std::move(next);
    }
    for (const std::string& piece : pieces) {
      std::string word;
      for (const unsigned char byte : piece) word += character_of_byte_[byte];
      model_->tokenize(word, ids);
    }
  }

  // The ByteLevel decoder: a piece's characters back to their bytes, or, when one of them is
  // not in the byte-level alphabet (an added token such as "<|im_start|>" or "hello world"),
  // the piece's own text.
  void append_decoded(const std::string& piece, std::string& text) const {
    std::string bytes;
    for (size_t at = 0; at < piece.size();) {
      const size_t length = U8_LENGTH(code_point_at(piece, at));
      const auto found = byte_of_character_.find(piece.substr(at, length));
      at += length;
      if (found == byte_of_character_.end()) {
        text += piece;
        return;
      }
      bytes += static_cast<char>(found->second);
    }
    text += bytes;
  }

  std::string json_bytes_, eos_token_, source_;
  Normalizer normalizer_;
  std::vector<PreTokenizerStep> steps_;
  std::unique_ptr<BpeModel> model_;
  AddedTokenMatcher raw_added_, normalized_added_;
  std::vector<std::string> piece_of_id_;
  std::vector<bool> is_added_;
  int64_t vocab_size_ = 0;
  int32_t eos_id_ = -1;
  const std::array<std::string, 256> character_of_byte_ = byte_level_characters();
  const std::unordered_map<std::string, uint8_t> byte_of_character_ = [this] {
    std::unordered_map<std::string, uint8_t> byte_of_character;
    for (int byte = 0; byte < 256; byte++)
      byte_of_character[character_of_byte_[byte]] = static_cast<uint8_t>(byte);
    return byte_of_character;
  }();
};

}  // namespace

bool hf_tokenizers_available() { return true; }

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_bytes,
                                             const std::string& eos_token,
                                             const std::string& source) {
  return std::make_unique<HfTokenizer>(json_bytes, eos_token, source);
}

#endif  // SY_HAVE_ICU

}  // namespace sy
