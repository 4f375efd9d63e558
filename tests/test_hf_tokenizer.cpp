// Hugging Face tokenizer.json tokenizers (data/hf_tokenizer.h): a small byte-level BPE built here
// checks each rule (merge ranks, ignore_merges, added tokens and their options, the normalizer,
// the Split behaviours, both merge formats, the errors), prepare-data stores the JSON and its EOS
// and reads them back, and the fixtures under tests/data/hf_tokenizers/ (written by the
// `tokenizers` library itself, make_fixtures.py) are encoded and decoded id for id.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/hf_tokenizer.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GPT-2's byte-to-character map, written out again from its definition (the printable Latin-1
// bytes stand for themselves, the rest take U+0100 onwards in byte order), apart from
// byte_level_piece so that each checks the other.
std::string byte_char(int byte) {
  static const std::vector<std::string> chars = [] {
    std::vector<std::string> out(256);
    int next = 256;
    for (int b = 0; b < 256; b++) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int code = printable ? b : next++;
      std::string utf8;
      if (code < 0x80) {
        utf8 += static_cast<char>(code);
      } else {
        utf8 += static_cast<char>(0xC0 | (code >> 6));
        utf8 += static_cast<char>(0x80 | (code & 0x3F));
      }
      out[b] = utf8;
    }
    return out;
  }();
  return chars[byte];
}

// The pieces of `text` in the byte-level alphabet.
std::string in_alphabet(const std::string& text) {
  std::string out;
  for (const unsigned char byte : text) out += byte_char(byte);
  return out;
}

// A byte-level BPE: ids 0-255 the bytes' characters, then one id per merge result in merge order,
// then `extra` pieces with no merge that builds them.
json small_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges,
                     const std::vector<std::string>& extra = {}) {
  json vocab = json::object();
  for (int byte = 0; byte < 256; byte++) vocab[byte_char(byte)] = byte;
  json merge_list = json::array();
  for (const auto& [left, right] : merges) {
    const std::string a = in_alphabet(left), b = in_alphabet(right);
    if (!vocab.contains(a + b)) vocab[a + b] = static_cast<int>(vocab.size());
    merge_list.push_back(json::array({a, b}));
  }
  for (const std::string& piece : extra) vocab[in_alphabet(piece)] = static_cast<int>(vocab.size());
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
}

void add_token(json& spec, const std::string& content, bool special,
               json options = json::object()) {
  const int id = static_cast<int>(spec["model"]["vocab"].size() + spec["added_tokens"].size());
  json token = {{"id", id},          {"content", content}, {"single_word", false},
                {"lstrip", false},   {"rstrip", false},    {"normalized", !special},
                {"special", special}};
  token.update(options);
  spec["added_tokens"].push_back(token);
}

std::unique_ptr<Tokenizer> load(const json& spec, const std::string& eos = {}) {
  return load_hf_tokenizer(spec.dump(), eos, "test.json");
}

int32_t id_of(const json& spec, const std::string& piece) {
  return spec["model"]["vocab"].at(in_alphabet(piece)).get<int32_t>();
}

int32_t added_id(const json& spec, const std::string& content) {
  for (const json& token : spec["added_tokens"])
    if (token["content"] == content) return token["id"].get<int32_t>();
  return -1;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "(no error)";
}

class HfTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!hf_tokenizers_available()) GTEST_SKIP() << "built without ICU (libicu-dev)";
  }
};

TEST_F(HfTokenizer, TheByteLevelAlphabetIsGpt2s) {
  for (int byte = 0; byte < 256; byte++)
    EXPECT_EQ(byte_level_piece(std::string(1, static_cast<char>(byte))), byte_char(byte)) << byte;
  EXPECT_EQ(byte_level_piece(" the\n"), "\xC4\xA0the\xC4\x8A");  // Ġthe Ċ
}

TEST_F(HfTokenizer, MergesApplyLowestRankFirst) {
  // "elo": (l, o) has rank 0 and (e, l) rank 1, so l+o merges first and e is left alone.
  const json spec = small_tokenizer({{"l", "o"}, {"e", "l"}, {"h", "e"}, {"he", "l"}});
  const auto tokenizer = load(spec);
  EXPECT_EQ(tokenizer->encode("elo"), (std::vector<int32_t>{'e', id_of(spec, "lo")}));
  // "helo": h+e (rank 2) cannot win over l+o (rank 0): he | lo.
  EXPECT_EQ(tokenizer->encode("helo"),
            (std::vector<int32_t>{id_of(spec, "he"), id_of(spec, "lo")}));
  // GPT-2's pattern keeps the space with the word: " elo" is Ġ e lo.
  EXPECT_EQ(tokenizer->encode(" elo"), (std::vector<int32_t>{' ', 'e', id_of(spec, "lo")}));
  EXPECT_EQ(tokenizer->vocab_size(), 256 + 4);
}

TEST_F(HfTokenizer, DecodeGivesTheTextBackByteForByte) {
  const auto tokenizer = load(small_tokenizer({{"t", "h"}, {"th", "e"}, {" ", "the"}}));
  const std::string text =
      "the theme\n\n\tand  the  spaces, caf\xC3\xA9, \xE6\x97\xA5\xE6\x9C\xAC, "
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD, \x01\x7F\r\n";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
  EXPECT_TRUE(tokenizer->encode("").empty());
}

TEST_F(HfTokenizer, IgnoreMergesTakesAWholeWordFromTheVocab) {
  json spec = small_tokenizer({{"x", "y"}}, {"xyz"});
  EXPECT_EQ(load(spec)->encode("xyz"), (std::vector<int32_t>{id_of(spec, "xy"), 'z'}));
  spec["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(spec)->encode("xyz"), (std::vector<int32_t>{id_of(spec, "xyz")}));
}

TEST_F(HfTokenizer, BothMergeFormatsReadAlike) {
  json spec = small_tokenizer({{"a", "b"}, {"ab", "c"}});
  json legacy = spec;
  legacy["model"]["merges"] = json::array({"a b", "ab c"});
  EXPECT_EQ(load(spec)->encode("abcab"), load(legacy)->encode("abcab"));
  EXPECT_EQ(load(spec)->encode("abcab"),
            (std::vector<int32_t>{id_of(spec, "abc"), id_of(spec, "ab")}));
}

TEST_F(HfTokenizer, AddedTokensAreMatchedBeforeTheModel) {
  json spec = small_tokenizer({{"h", "i"}});
  add_token(spec, "<|im_start|>", true);
  add_token(spec, "<|im_end|>", true);
  add_token(spec, "<mask>", true, {{"lstrip", true}});
  add_token(spec, "<sep>", true, {{"rstrip", true}});
  add_token(spec, "hello world", false, {{"single_word", true}});
  const auto tokenizer = load(spec, "<|im_end|>");
  const int32_t start = added_id(spec, "<|im_start|>"), end = added_id(spec, "<|im_end|>");
  EXPECT_EQ(tokenizer->encode("<|im_start|>hi<|im_end|>"),
            (std::vector<int32_t>{start, id_of(spec, "hi"), end}));
  EXPECT_EQ(tokenizer->eos_id(), end);
  // lstrip takes the spaces before <mask> into it; rstrip the spaces after <sep>.
  EXPECT_EQ(tokenizer->encode("i  <mask>i"),
            (std::vector<int32_t>{'i', added_id(spec, "<mask>"), 'i'}));
  EXPECT_EQ(tokenizer->encode("i<sep>  i"),
            (std::vector<int32_t>{'i', added_id(spec, "<sep>"), 'i'}));
  // single_word: only between non-word characters.
  const int32_t phrase = added_id(spec, "hello world");
  EXPECT_EQ(tokenizer->encode("a hello world."), (std::vector<int32_t>{'a', ' ', phrase, '.'}));
  const std::vector<int32_t> glued = tokenizer->encode("ahello world");
  EXPECT_EQ(std::count(glued.begin(), glued.end(), phrase), 0);
  // An added token decodes to its own text.
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("<|im_start|>a hello world<|im_end|>")),
            "<|im_start|>a hello world<|im_end|>");
}

TEST_F(HfTokenizer, TheNormalizerRunsBeforeThePreTokenizer) {
  json spec = small_tokenizer({});
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
  const auto tokenizer = load(spec);
  // e + combining acute (U+0301) composes to U+00E9 first.
  EXPECT_EQ(tokenizer->encode("cafe\xCC\x81"), tokenizer->encode("caf\xC3\xA9"));
  spec["normalizer"] = {{"type", "NFKC"}};
  EXPECT_EQ(load(spec)->encode("\xEF\xAC\x81"),
            (std::vector<int32_t>{'f', 'i'}));  // the fi ligature
}

TEST_F(HfTokenizer, SplitBehavioursKeepOrDropTheMatches) {
  // Merges that only apply when a dash and an a share a piece tell the behaviours apart.
  json spec = small_tokenizer({{"a", "a"}, {"-", "a"}, {"-", "-"}, {"a", "-"}});
  auto with_split = [&](const json& pattern, const std::string& behavior, bool invert,
                        const std::string& text) {
    spec["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    return load(spec)->encode(text);
  };
  const json dash = {{"Regex", "-"}};
  const int32_t aa = id_of(spec, "aa"), dash_a = id_of(spec, "-a"), dashes = id_of(spec, "--"),
                a_dash = id_of(spec, "a-");
  // Pieces: aa - a - - aa
  EXPECT_EQ(with_split(dash, "Isolated", false, "aa-a--aa"),
            (std::vector<int32_t>{aa, '-', 'a', '-', '-', aa}));
  // aa a aa
  EXPECT_EQ(with_split(dash, "Removed", false, "aa-a--aa"), (std::vector<int32_t>{aa, 'a', aa}));
  // aa- a- - aa
  EXPECT_EQ(with_split(dash, "MergedWithPrevious", false, "aa-a--aa"),
            (std::vector<int32_t>{aa, '-', a_dash, '-', aa}));
  // aa -a - -aa
  EXPECT_EQ(with_split(dash, "MergedWithNext", false, "aa-a--aa"),
            (std::vector<int32_t>{aa, dash_a, '-', '-', aa}));
  // aa - a -- aa
  EXPECT_EQ(with_split(dash, "Contiguous", false, "aa-a--aa"),
            (std::vector<int32_t>{aa, '-', 'a', dashes, aa}));
  // Inverted, the dashes are what is kept apart from the matches: Removed keeps only them, each
  // dash its own piece (two matches side by side stay two).
  EXPECT_EQ(with_split(dash, "Removed", true, "aa-a--aa"), (std::vector<int32_t>{'-', '-', '-'}));
  // A String pattern is literal: "a-" here, not a character class.
  EXPECT_EQ(with_split({{"String", "a-"}}, "Isolated", false, "aa-a"),
            (std::vector<int32_t>{'a', a_dash, 'a'}));
}

TEST_F(HfTokenizer, TheWhitespaceOfPatternsIsUnicodes) {
  // \s in the published patterns is Oniguruma's, Unicode White_Space, which has U+0085 (ICU's
  // own \s has not). GPT-2's pattern then cuts "a\u0085\u0085b" into a | \u0085 | \u0085 | b;
  // were U+0085 not whitespace, "\u0085\u0085" would be one piece and merge into one token.
  const std::string nel = "\xC2\x85";
  const json spec = small_tokenizer({{"\xC2", "\x85"}, {nel, nel}});
  const auto tokenizer = load(spec);
  const std::vector<int32_t> ids = tokenizer->encode("a" + nel + nel + "b");
  EXPECT_EQ(ids, (std::vector<int32_t>{'a', id_of(spec, nel), id_of(spec, nel), 'b'}));
  EXPECT_EQ(tokenizer->decode(ids), "a" + nel + nel + "b");
}

TEST_F(HfTokenizer, WhatIsNotByteLevelBpeIsRefusedByName) {
  json spec = small_tokenizer({});
  spec["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_NE(
      error_of([&] { load(spec); }).find("test.json: pre_tokenizer Metaspace is not supported"),
      std::string::npos);
  spec = small_tokenizer({});
  spec["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of([&] { load(spec); }).find("model WordPiece is not supported"),
            std::string::npos);
  spec = small_tokenizer({});
  spec["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(error_of([&] { load(spec); }).find("normalizer Lowercase is not supported"),
            std::string::npos);
  spec = small_tokenizer({});
  spec["model"]["merges"] = json::array({json::array({"q", "zz"})});
  EXPECT_NE(error_of([&] { load(spec); }).find("merge part zz is not in the vocab"),
            std::string::npos);
  spec = small_tokenizer({});
  spec["model"]["dropout"] = 0.1;
  EXPECT_NE(error_of([&] { load(spec); }).find("dropout"), std::string::npos);
  EXPECT_NE(error_of([&] {
              load(small_tokenizer({}), "<|eos|>");
            }).find("the EOS token <|eos|> is not in the vocabulary"),
            std::string::npos);
  spec = small_tokenizer({});
  add_token(spec, "<big>", true, {{"id", int64_t{1} << 31}});
  EXPECT_NE(
      error_of([&] { load(spec); }).find("an added token's id is 2147483648, outside [0, 2^24)"),
      std::string::npos);
  spec = small_tokenizer({});
  spec["model"]["vocab"]["zz"] = 1.5;
  EXPECT_NE(error_of([&] { load(spec); }).find("the vocab id of zz is 1.5, not an integer"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_hf_tokenizer("{not json", "", "t.json"); }).find("t.json: not JSON"),
            std::string::npos);
  const auto tokenizer = load(small_tokenizer({}));
  EXPECT_EQ(error_of([&] { tokenizer->encode("ok \xC3(bad"); }),
            "test.json: the text is not valid UTF-8 at byte 3");
  EXPECT_NE(error_of([&] {
              tokenizer->decode({1, 99999});
            }).find("token 99999 at 1"),
            std::string::npos);
}

// prepare-data with a model folder's tokenizer.json: the JSON and the EOS of its
// tokenizer_config.json are stored, and the file's tokenizer decodes its tokens to the text.
TEST_F(HfTokenizer, PrepareDataStoresTheJsonAndItsEos) {
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_tokenizer_prepare";
  fs::remove_all(dir);
  fs::create_directories(dir / "model");
  json spec = small_tokenizer({{"t", "h"}, {"th", "e"}});
  add_token(spec, "<|endoftext|>", true);
  std::ofstream(dir / "model" / "tokenizer.json") << spec.dump();
  std::ofstream(dir / "model" / "tokenizer_config.json")
      << R"({"eos_token": {"content": "<|endoftext|>"}})";
  const std::string text = "the theory of the thing\n";
  std::ofstream(dir / "corpus.txt") << text;

  PrepareOptions options;
  options.inputs = {(dir / "corpus.txt").string()};
  options.format = "text";
  options.output = (dir / "tokens.h5").string();
  options.tokenizer = (dir / "model").string();
  options.val_fraction = 0.5;
  prepare_data(options);
  const TokenData data = read_token_file(options.output);
  EXPECT_EQ(data.tokenizer, "huggingface");
  EXPECT_EQ(data.tokenizer_model, spec.dump());
  EXPECT_EQ(data.tokenizer_model_name, "tokenizer.json");
  EXPECT_EQ(data.tokenizer_eos_token, "<|endoftext|>");
  const auto stored = tokenizer_of(data, options.output);
  EXPECT_EQ(stored->eos_id(), added_id(spec, "<|endoftext|>"));
  EXPECT_EQ(stored->decode(data.train) + stored->decode(data.val), text);

  // sft needs the EOS: without tokenizer_config.json it is refused, naming the tokenizer.
  fs::remove(dir / "model" / "tokenizer_config.json");
  std::ofstream(dir / "sft.jsonl") << R"({"prompt": "the", "response": "thing"})"
                                   << "\n";
  options.inputs = {(dir / "sft.jsonl").string()};
  options.format = "sft";
  options.tokenizer = (dir / "model" / "tokenizer.json").string();
  const std::string error = error_of([&] { prepare_data(options); });
  EXPECT_NE(error.find("tokenizer.json: no EOS token"), std::string::npos) << error;
}

// The pieces encode on several threads (one ICU matcher a call): the same tokens as one thread,
// with pieces small enough that every thread has some.
TEST_F(HfTokenizer, ThreadCountDoesNotChangeTheTokens) {
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_tokenizer_threads";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << small_tokenizer({{"t", "h"}, {"th", "e"}}).dump();
  std::string text;
  for (int line = 0; line < 2000; line++)
    text += "the theory " + std::to_string(line) + " of the thing, caf\xc3\xa9\n";
  std::ofstream(dir / "corpus.txt") << text;
  std::vector<TokenData> results;
  for (int threads : {1, 4}) {
    PrepareOptions options;
    options.inputs = {(dir / "corpus.txt").string()};
    options.format = "text";
    options.output = (dir / ("threads" + std::to_string(threads) + ".h5")).string();
    options.tokenizer = (dir / "tokenizer.json").string();
    options.encode_piece_bytes = 500;
    options.threads = threads;
    prepare_data(options);
    results.push_back(read_token_file(options.output));
  }
  EXPECT_EQ(results[1].train, results[0].train);
  EXPECT_EQ(results[1].val, results[0].val);
  EXPECT_GT(results[0].train.size(), 10000u);
}

// The `tokenizers` library's own encodings (tests/data/hf_tokenizers/, make_fixtures.py): every
// text of every tokenizer gives the same ids, and decoding them gives its decoded text.
TEST_F(HfTokenizer, AgreesWithTheTokenizersLibrary) {
  const fs::path dir = "tests/data/hf_tokenizers";
  std::ifstream in(dir / "expected.json");
  ASSERT_TRUE(in) << "no " << (dir / "expected.json") << " (make_fixtures.py writes it)";
  const json expected = json::parse(in);
  int64_t cases = 0;
  for (const auto& [name, texts] : expected.at("cases").items()) {
    std::ifstream file(dir / (name + ".json"), std::ios::binary);
    ASSERT_TRUE(file) << name;
    std::ostringstream bytes;
    bytes << file.rdbuf();
    const auto tokenizer = load_hf_tokenizer(bytes.str(), "", name + ".json");
    EXPECT_EQ(tokenizer->vocab_size(), expected.at("vocab_sizes").at(name).get<int64_t>()) << name;
    for (const json& item : texts) {
      const std::string text = item.at("text").get<std::string>();
      const std::vector<int32_t> ids = tokenizer->encode(text);
      EXPECT_EQ(ids, item.at("ids").get<std::vector<int32_t>>()) << name << ": " << item.at("text");
      // Where the library's decode has U+FFFD that the text lacks (qwen2, "nai\u0308ve": 1 of
      // 92 cases, tokenizers 0.22 on 2026-12-05), it could not join a token's bytes into UTF-8;
      // ours joins every token's bytes first. There: our decode encodes back to the same ids.
      const std::vector<int32_t> expected_ids = item.at("ids").get<std::vector<int32_t>>();
      const std::string decoded = item.at("decoded").get<std::string>();
      const bool lossy = decoded.find("\xEF\xBF\xBD") != std::string::npos &&
                         text.find("\xEF\xBF\xBD") == std::string::npos;
      if (lossy)
        EXPECT_EQ(tokenizer->encode(tokenizer->decode(expected_ids)), expected_ids)
            << name << ": " << item.at("text");
      else
        EXPECT_EQ(tokenizer->decode(expected_ids), decoded) << name << ": " << item.at("text");
      cases++;
    }
  }
  EXPECT_GT(cases, 100);
}

}  // namespace
}  // namespace sy
