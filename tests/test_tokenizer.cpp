// SentencePiece tokenizers (issue 13): a tiny model trained on a text the test writes encodes
// losslessly, prepare-data stores it in the token file byte for byte, training refuses a model
// vocabulary below the data's, and generate decodes with the stored model.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/chat_template.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "parallel/local_exchange.h"
#include "tests/compressed_files.h"
#include "trainer/config.h"
#include "trainer/generate.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kVocab = 320;  // 259 byte-fallback and special pieces + characters + merges

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Sentences of 60 made-up words (syllable pairs), deterministic, with digits and punctuation:
// enough distinct substrings for unigram to fill a vocabulary of 320.
std::string corpus_text() {
  const char* syllables[] = {"ka", "ro", "mi", "tel", "sun", "da", "ex", "pert", "gat", "lo"};
  std::vector<std::string> words;
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 6; ++b)
      words.push_back(std::string(syllables[a]) + syllables[(a + b * 3 + 1) % 10]);
  std::string text;
  uint32_t state = 12345;
  for (int line = 0; line < 400; ++line) {
    for (int w = 0; w < 8; ++w) {
      state = state * 1664525u + 1013904223u;
      if (w > 0) text += ' ';
      text += words[(state >> 16) % words.size()];
    }
    text += line % 7 == 0 ? ", step " + std::to_string(line) + ".\n" : ".\n";
  }
  return text;
}

class TokenizerTest : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("sy_tokenizer_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
           "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream((dir / "corpus.txt").string(), std::ios::binary) << corpus_text();
  }
  void TearDown() override { fs::remove_all(dir); }

  // tok.model, or with `symbols` (a chat format's markers) chat.model.
  std::string train_tokenizer(const std::string& model_type = "bpe",
                              const std::vector<std::string>& symbols = {}) const {
    SentencePieceTrainOptions options;
    options.inputs = {(dir / "corpus.txt").string()};
    options.vocab_size = kVocab;
    options.model_type = model_type;
    options.user_defined_symbols = symbols;
    options.output = (dir / (symbols.empty() ? "tok.model" : "chat.model")).string();
    EXPECT_EQ(train_sentencepiece(options), kVocab);
    return options.output;
  }
};

TEST_F(TokenizerTest, TrainedModelRoundTripsText) {
  for (const char* model_type : {"bpe", "unigram"}) {
    SCOPED_TRACE(model_type);
    const std::string model_path = train_tokenizer(model_type);
    ASSERT_TRUE(fs::exists(model_path));
    EXPECT_FALSE(fs::exists(model_path + ".tmp"));
    const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(model_path);
    EXPECT_EQ(tokenizer->name(), "sentencepiece");
    EXPECT_EQ(tokenizer->vocab_size(), kVocab);
    // Whitespace runs, a newline, digits and characters never seen in training (byte fallback).
    const std::string text = "  kaex telda\nsunlo 42 rogat,  caf\xC3\xA9 {zq}\n";
    const std::vector<int32_t> ids = tokenizer->encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < kVocab) << id;
    EXPECT_LT(ids.size(), text.size()) << "merges shorten common words";
    EXPECT_EQ(tokenizer->decode(ids), text);
    EXPECT_THROW(tokenizer->decode({static_cast<int32_t>(kVocab)}), std::runtime_error);
  }
}

// A chat format's markers as user-defined symbols: each one piece wherever it occurs, though the
// corpus never holds them, and decoded back as written.
TEST_F(TokenizerTest, UserDefinedSymbolsAreOnePieceEach) {
  SentencePieceTrainOptions options;
  options.inputs = {(dir / "corpus.txt").string()};
  options.vocab_size = kVocab;
  options.user_defined_symbols = {"<|im_start|>", "<|im_end|>"};
  options.output = (dir / "chat.model").string();
  EXPECT_EQ(train_sentencepiece(options), kVocab);
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(options.output);
  // The symbol's one piece (after the piece of the model's dummy prefix, which decodes to
  // nothing at the start of a text).
  const auto symbol_id = [&](const std::string& symbol) {
    const std::vector<int32_t> ids = tokenizer->encode(symbol);
    EXPECT_EQ(tokenizer->decode({ids.back()}), symbol);
    return ids.back();
  };
  const int32_t start = symbol_id("<|im_start|>"), end = symbol_id("<|im_end|>");
  const std::string text = "<|im_start|>user\nkaex<|im_end|>\n";
  const std::vector<int32_t> ids = tokenizer->encode(text);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), start), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), end), 1);
  EXPECT_EQ(tokenizer->decode(ids), text);
  options.user_defined_symbols = {"<a>", ""};
  EXPECT_THROW(train_sentencepiece(options), std::runtime_error);
}

// --format brown learns from the words without their tags: the same model as training on the
// text prepare-data --format brown tokenises, and no tag ("/at") becomes a piece.
TEST_F(TokenizerTest, BrownFormatLearnsFromTheDetaggedText) {
  fs::create_directories(dir / "brown");
  std::string tagged, plain;
  std::istringstream lines(corpus_text());
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string row;
    for (std::string word; words >> word;) row += (row.empty() ? "" : " ") + word + "/nn";
    tagged += "\n\t" + row + "\n";
  }
  std::ofstream((dir / "brown" / "ca01").string(), std::ios::binary) << tagged;
  std::ofstream((dir / "brown" / "README").string(), std::ios::binary) << "not a corpus file";
  SentencePieceTrainOptions options;
  options.format = "brown";
  options.inputs = {(dir / "brown").string()};
  options.vocab_size = kVocab;
  options.output = (dir / "brown.model").string();
  EXPECT_EQ(train_sentencepiece(options), kVocab);
  {
    std::ofstream detagged((dir / "detagged.txt").string(), std::ios::binary);
    CorpusLines lines({(dir / "brown").string()}, "brown");
    for (std::string line; lines.next(line);) detagged << line << "\n";
  }
  SentencePieceTrainOptions from_text = options;
  from_text.format = "text";
  from_text.inputs = {(dir / "detagged.txt").string()};
  from_text.output = (dir / "text.model").string();
  EXPECT_EQ(train_sentencepiece(from_text), kVocab);
  // The same pieces (the model files differ only in the input path they record).
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(options.output);
  const std::unique_ptr<Tokenizer> from_text_tokenizer = tokenizer_from_option(from_text.output);
  const std::string detagged = read_bytes(dir / "detagged.txt");
  EXPECT_EQ(tokenizer->encode(detagged), from_text_tokenizer->encode(detagged));
  for (int32_t id = 0; id < kVocab; ++id)
    ASSERT_EQ(tokenizer->decode({id}), from_text_tokenizer->decode({id})) << id;
  for (int32_t id : tokenizer->encode("kaex telda sunlo"))
    EXPECT_EQ(tokenizer->decode({id}).find('/'), std::string::npos) << id;
  options.format = "csv";
  EXPECT_THROW(train_sentencepiece(options), std::runtime_error);
}

// A compressed text input trains the model its plain text trains.
TEST_F(TokenizerTest, CompressedTextTrainsAsPlain) {
  std::vector<std::string> packed;
#ifdef SY_HAVE_ZLIB
  std::ofstream((dir / "corpus.txt.gz").string(), std::ios::binary)
      << test::gzip_member(corpus_text());
  packed.push_back("corpus.txt.gz");
#endif
#ifdef SY_HAVE_ZSTD
  std::ofstream((dir / "corpus.txt.zst").string(), std::ios::binary)
      << test::zstd_frame(corpus_text());
  packed.push_back("corpus.txt.zst");
#endif
  if (packed.empty()) GTEST_SKIP() << "built without zlib and libzstd";
  const std::unique_ptr<Tokenizer> plain = tokenizer_from_option(train_tokenizer());
  for (const std::string& name : packed) {
    SCOPED_TRACE(name);
    SentencePieceTrainOptions options;
    options.inputs = {(dir / name).string()};
    options.vocab_size = kVocab;
    options.output = (dir / (name + ".model")).string();
    EXPECT_EQ(train_sentencepiece(options), kVocab);
    const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(options.output);
    for (int32_t id = 0; id < kVocab; ++id)
      ASSERT_EQ(tokenizer->decode({id}), plain->decode({id})) << id;
  }
}

// --format jsonl learns from the documents' text: the model the same text as a file trains,
// whatever else the lines hold; a bad line stops it, named.
TEST_F(TokenizerTest, JsonlTrainsOnTheDocuments) {
  const std::unique_ptr<Tokenizer> plain = tokenizer_from_option(train_tokenizer());
  // Documents of a few lines each, with characters JSON escapes.
  std::istringstream lines(corpus_text());
  std::string jsonl, document;
  int count = 0;
  for (std::string line; std::getline(lines, line);) {
    document += line + "\\n";
    if (++count % 5 == 0) {
      jsonl += "{\"id\": " + std::to_string(count) + ", \"body\": \"" + document + "\"}\n\n";
      document.clear();
    }
  }
  ASSERT_TRUE(document.empty());
  std::ofstream((dir / "corpus.jsonl").string(), std::ios::binary) << jsonl;
  SentencePieceTrainOptions options;
  options.format = "jsonl";
  options.field = "body";
  options.inputs = {(dir / "corpus.jsonl").string()};
  options.vocab_size = kVocab;
  options.output = (dir / "jsonl.model").string();
  EXPECT_EQ(train_sentencepiece(options), kVocab);
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(options.output);
  for (int32_t id = 0; id < kVocab; ++id)
    ASSERT_EQ(tokenizer->decode({id}), plain->decode({id})) << id;

  std::ofstream((dir / "bad.jsonl").string(), std::ios::binary) << jsonl << "{\"text\": 1}\n";
  options.inputs = {(dir / "bad.jsonl").string()};
  options.output = (dir / "bad.model").string();
  try {
    train_sentencepiece(options);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& error) {
    EXPECT_EQ(std::string(error.what()),
              options.inputs[0] + ": line " + std::to_string(2 * 80 + 1) + ": no field \"body\"");
  }
  EXPECT_FALSE(fs::exists(options.output));
}

// --sample-lines: a uniform sample, the same every run; fewer lines make another model.
TEST_F(TokenizerTest, SampledLinesAreTheSameEveryRun) {
  std::vector<std::string> models;
  for (int64_t sample_lines : {0, 150, 150}) {
    SentencePieceTrainOptions options;
    options.inputs = {(dir / "corpus.txt").string()};
    options.vocab_size = kVocab;
    options.sample_lines = sample_lines;
    options.output = (dir / ("sampled" + std::to_string(models.size()) + ".model")).string();
    EXPECT_EQ(train_sentencepiece(options), kVocab);
    models.push_back(read_bytes(options.output));
  }
  EXPECT_EQ(models[1], models[2]);
  EXPECT_NE(models[0], models[1]);
  SentencePieceTrainOptions negative;
  negative.inputs = {(dir / "corpus.txt").string()};
  for (int64_t sample_lines : {-1, 100}) {
    negative.sample_lines = sample_lines;
    EXPECT_THROW(train_sentencepiece(negative), std::runtime_error);
  }
}

// SentencePiece encodes pieces on several threads: the token file is the one a single thread
// writes, with pieces small enough that many are in flight at once.
TEST_F(TokenizerTest, ThreadCountDoesNotChangeTheTokens) {
  const std::string model_path = train_tokenizer();
  std::vector<TokenData> results;
  for (int threads : {1, 4}) {
    PrepareOptions options;
    options.inputs = {(dir / "corpus.txt").string()};
    options.format = "text";
    options.tokenizer = model_path;
    options.output = (dir / ("threads" + std::to_string(threads) + ".h5")).string();
    options.encode_piece_bytes = 200;
    options.threads = threads;
    prepare_data(options);
    results.push_back(read_token_file(options.output));
  }
  EXPECT_EQ(results[1].train, results[0].train);
  EXPECT_EQ(results[1].val, results[0].val);
  EXPECT_GT(results[0].train.size(), 100u);
  // Cut into pieces of about 200 bytes, the text still decodes exactly: the pieces after a
  // split's first continue it, without a second dummy prefix.
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(model_path);
  EXPECT_EQ(tokenizer->decode(results[0].train) + tokenizer->decode(results[0].val), corpus_text());
}

// Text that follows other text of the same sequence (docs/data.md, SentencePiece tokenizers):
// encoded without the dummy prefix, it gives what encoding the whole gives, where the join falls
// on a token boundary (before a space, at a user-defined symbol), and decodes to the whole text
// wherever it falls. Encoded as a text of its own, it would start with a space of its own.
TEST_F(TokenizerTest, ContinuationsEncodeAsTheWholeTextWould) {
  for (const char* model_type : {"bpe", "unigram"}) {
    SCOPED_TRACE(model_type);
    const std::unique_ptr<Tokenizer> tokenizer =
        tokenizer_from_option(train_tokenizer(model_type, {"<|im_start|>", "<|im_end|>"}));
    const std::vector<std::pair<std::string, std::string>> joins{
        {"kaex telda", " sunlo rogat."},
        {"<|im_start|>user\nkaex", "<|im_end|>\n<|im_start|>assistant\n"},
        {"<|im_start|>assistant\n", "<|im_end|> telda"}};
    for (const auto& [first, second] : joins) {
      SCOPED_TRACE(second);
      std::vector<int32_t> ids = tokenizer->encode(first);
      const std::vector<int32_t> continuation = tokenizer->encode_continuation(second);
      ids.insert(ids.end(), continuation.begin(), continuation.end());
      EXPECT_EQ(ids, tokenizer->encode(first + second));
      EXPECT_EQ(tokenizer->decode(ids), first + second);
      EXPECT_NE(tokenizer->encode(second), continuation) << "a text of its own has the prefix";
    }
    // Anywhere, even inside a word: the ids differ from the whole's, the text does not.
    const std::string text = "kaex telda\nsunlo, rogat.";
    for (size_t cut = 1; cut < text.size(); ++cut) {
      std::vector<int32_t> ids = tokenizer->encode(text.substr(0, cut));
      const std::vector<int32_t> rest = tokenizer->encode_continuation(text.substr(cut));
      ids.insert(ids.end(), rest.begin(), rest.end());
      EXPECT_EQ(tokenizer->decode(ids), text) << "cut at " << cut;
    }
  }
  // The same model with a second normalizer_spec (fields merge) that removes extra whitespace:
  // the spaces at a part's ends are dropped, so a continuation keeps its prefix in their place.
  const std::string model = read_bytes(dir / "chat.model");
  const std::unique_ptr<Tokenizer> normalizing =
      load_sentencepiece(model + std::string("\x1a\x02\x20\x01", 4), "normalizing.model");
  EXPECT_EQ(normalizing->encode_continuation("telda"), normalizing->encode("telda"));
  EXPECT_EQ(normalizing->decode(normalizing->encode("kaex  telda ")), "kaex telda");
  // And one without a dummy prefix at all encodes a continuation as any text.
  const std::unique_ptr<Tokenizer> unprefixed =
      load_sentencepiece(model + std::string("\x1a\x02\x18\x00", 4), "unprefixed.model");
  EXPECT_EQ(unprefixed->encode(" telda"),
            tokenizer_from_option((dir / "chat.model").string())->encode_continuation(" telda"));
  EXPECT_EQ(unprefixed->encode_continuation("telda"), unprefixed->encode("telda"));
}

TEST_F(TokenizerTest, TrainingErrorsNameTheProblem) {
  SentencePieceTrainOptions options;
  options.inputs = {(dir / "missing.txt").string()};
  options.vocab_size = kVocab;
  options.output = (dir / "tok.model").string();
  try {
    train_sentencepiece(options);
    FAIL() << "a missing input must be refused";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("missing.txt"), std::string::npos) << error.what();
  }
  options.inputs = {(dir / "corpus.txt").string()};
  options.vocab_size = 100;  // below the byte-fallback pieces
  EXPECT_THROW(train_sentencepiece(options), std::runtime_error);
  EXPECT_FALSE(fs::exists(options.output));
  EXPECT_THROW(tokenizer_from_option((dir / "corpus.txt").string()), std::runtime_error)
      << "a text file is not a model";
  EXPECT_THROW(tokenizer_from_option((dir / "nothing.model").string()), std::runtime_error);
}

TEST_F(TokenizerTest, PrepareDataStoresTheModelInTheTokenFile) {
  const std::string model_path = train_tokenizer();
  const std::string token_path = (dir / "tokens.h5").string();
  const PrepareStats stats =
      prepare_data((dir / "corpus.txt").string(), "text", token_path, model_path, 0.1);
  EXPECT_EQ(stats.tokenizer, "sentencepiece");
  EXPECT_EQ(stats.vocab_size, kVocab);

  const TokenData data = read_token_file(token_path);
  EXPECT_EQ(data.tokenizer, "sentencepiece");
  EXPECT_EQ(data.vocab_size, kVocab);
  EXPECT_EQ(data.tokenizer_model, read_bytes(model_path)) << "the model file, byte for byte";
  EXPECT_EQ(data.tokenizer_model_name, "tok.model");
  EXPECT_EQ(static_cast<int64_t>(data.train.size()), stats.train_tokens);
  EXPECT_EQ(static_cast<int64_t>(data.val.size()), stats.val_tokens);

  // The stored model alone decodes the file back to the text (each split was encoded apart).
  const std::unique_ptr<Tokenizer> stored = tokenizer_of(data, token_path);
  EXPECT_EQ(stored->decode(data.train) + stored->decode(data.val), corpus_text());

  // A bytes token file carries no model and still gives the byte tokenizer.
  const std::string bytes_path = (dir / "bytes.h5").string();
  prepare_data((dir / "corpus.txt").string(), "text", bytes_path);
  const TokenData bytes = read_token_file(bytes_path);
  EXPECT_TRUE(bytes.tokenizer_model.empty());
  EXPECT_EQ(tokenizer_of(bytes, bytes_path)->name(), "bytes");
}

// prepare-data --format sft with a SentencePiece model (docs/data.md, "Loss masks"): each
// example is the prompt and the response encoded apart (the response continuing the prompt's
// text), then EOS; the mask is 1 on the response and EOS only, and the example decodes to the
// prompt and the response as they are.
TEST_F(TokenizerTest, SftExamplesEndWithTheModelsEos) {
  const std::string model_path = train_tokenizer();
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(model_path);
  ASSERT_GE(tokenizer->eos_id(), 0) << "SentencePiece's default </s>";
  const std::vector<std::pair<std::string, std::string>> examples{
      {"kaex telda sunlo?", " rogat caf."}, {"telda", " kaex kaex."}, {"x", " y"}};
  const std::string input = (dir / "chat.jsonl").string();
  {
    std::ofstream out(input);
    for (const auto& [prompt, response] : examples)
      out << "{\"prompt\": \"" << prompt << "\", \"response\": \"" << response << "\"}\n";
  }
  PrepareOptions options;
  options.inputs = {input};
  options.format = "sft";
  options.output = (dir / "sft.h5").string();
  options.tokenizer = model_path;
  options.val_fraction = 0.3;  // the last example
  const PrepareStats stats = prepare_data(options);
  std::vector<int32_t> expected;
  std::vector<uint8_t> expected_mask;
  for (size_t e = 0; e < 2; ++e) {
    const std::vector<int32_t> prompt = tokenizer->encode(examples[e].first);
    const std::vector<int32_t> response = tokenizer->encode_continuation(examples[e].second);
    expected.insert(expected.end(), prompt.begin(), prompt.end());
    expected.insert(expected.end(), response.begin(), response.end());
    expected.push_back(tokenizer->eos_id());
    expected_mask.insert(expected_mask.end(), prompt.size(), 0);
    expected_mask.insert(expected_mask.end(), response.size() + 1, 1);
  }
  const TokenFile opened = open_token_file(options.output);
  ASSERT_EQ(opened.train->size(), static_cast<int64_t>(expected.size()));
  std::vector<int32_t> tokens(expected.size());
  std::vector<uint8_t> mask(expected.size());
  opened.train->read(0, opened.train->size(), tokens.data());
  opened.train->read_mask(0, opened.train->size(), mask.data());
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(mask, expected_mask);
  // Each example decodes alone (decoded together, the second would start with its prefix's
  // space); EOS decodes to nothing.
  const size_t first_length = tokenizer->encode(examples[0].first).size() +
                              tokenizer->encode_continuation(examples[0].second).size() + 1;
  EXPECT_EQ(tokenizer->decode({tokens.begin(), tokens.begin() + first_length}),
            examples[0].first + examples[0].second);
  EXPECT_EQ(tokenizer->decode({tokens.begin() + first_length, tokens.end()}),
            examples[1].first + examples[1].second);
  EXPECT_EQ(stats.train_targets,
            static_cast<int64_t>(std::count(expected_mask.begin(), expected_mask.end(), 1)));
  EXPECT_EQ(opened.tokenizer_model, read_bytes(model_path));
}

// A conversation in ChatML with a SentencePiece model that keeps its markers whole: the example
// is its rendering's segments, each after the first continuing the text, so it decodes to the
// rendering exactly (no space before a marker or an answer; EOS decodes to nothing) and holds
// each marker once a turn.
TEST_F(TokenizerTest, ChatExamplesDecodeToTheirRendering) {
  const std::string model_path = train_tokenizer("bpe", {"<|im_start|>", "<|im_end|>"});
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_from_option(model_path);
  const std::string input = (dir / "chat.jsonl").string();
  std::ofstream(input) << R"({"messages": [{"role": "user", "content": "kaex telda?"}, )"
                       << R"({"role": "assistant", "content": "sunlo rogat."}, )"
                       << R"({"role": "user", "content": "caf"}, )"
                       << R"({"role": "assistant", "content": " telda"}]})"
                       << "\n"
                       << R"({"messages": [{"role": "user", "content": "x"}, )"
                       << R"({"role": "assistant", "content": "y"}]})"
                       << "\n";
  PrepareOptions options;
  options.inputs = {input};
  options.format = "sft";
  options.output = (dir / "chat.h5").string();
  options.tokenizer = model_path;
  options.val_fraction = 0.5;  // the second conversation
  options.sft.chat_template = ChatTemplate::kChatml;
  prepare_data(options);
  const TokenData data = read_token_file(options.output);
  const std::vector<SftSegment> segments = render_chat({{"user", "kaex telda?"},
                                                        {"assistant", "sunlo rogat."},
                                                        {"user", "caf"},
                                                        {"assistant", " telda"}},
                                                       ChatTemplate::kChatml, "");
  std::string rendering;
  for (const SftSegment& segment : segments) rendering += segment.text;
  EXPECT_EQ(tokenizer->decode(data.train), rendering);
  EXPECT_EQ(std::count(data.train.begin(), data.train.end(), tokenizer->eos_id()), 2);
  const int32_t start = tokenizer->encode_continuation("<|im_start|>").at(0);
  EXPECT_EQ(tokenizer->encode_continuation("<|im_start|>").size(), 1u);
  EXPECT_EQ(std::count(data.train.begin(), data.train.end(), start), 4);
}

TEST_F(TokenizerTest, ModelVocabularyBelowTheDataIsRefusedNamingBoth) {
  const std::string model_path = train_tokenizer();
  const std::string token_path = (dir / "tokens.h5").string();
  prepare_data((dir / "corpus.txt").string(), "text", token_path, model_path, 0.1);
  Config config;
  config.model = {256, 16, 32, 2, 2, 64, true};
  config.train.steps = 2;
  config.data.path = token_path;
  config.eval.batches = 1;
  config.run.dir = (dir / "run").string();
  try {
    train(config, {.print = false});
    FAIL() << "model.vocab_size 256 under the data's 320 must be refused";
  } catch (const std::runtime_error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("320"), std::string::npos) << message;
    EXPECT_NE(message.find("256"), std::string::npos) << message;
  }
}

TEST_F(TokenizerTest, GenerateDecodesWithTheStoredModel) {
  const std::string model_path = train_tokenizer();
  const std::string token_path = (dir / "tokens.h5").string();
  prepare_data((dir / "corpus.txt").string(), "text", token_path, model_path, 0.1);
  const std::unique_ptr<Tokenizer> tokenizer =
      tokenizer_of(read_token_file(token_path), token_path);

  std::unique_ptr<Backend> backend = make_cpu_backend();
  TransformerOptions options;
  options.model = {kVocab, 12, 16, 2, 2, 24, true};
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 2;
  options.moe.expert_hidden = 8;
  options.moe_layers = {true, false};
  LocalExchange exchange(*backend, 4);
  Transformer model(*backend, options, &exchange);
  model.init_parameters(5);

  const GenerateOptions greedy{"kaex telda sunlo", 20, 0.0, 1, {}};
  const std::string text = generate(model, *tokenizer, greedy);
  EXPECT_EQ(text.rfind(greedy.prompt, 0), 0u) << text;
  // The continuation is what the tokenizer's ids decode to, not bytes: re-encoding the prompt
  // gives fewer ids than its bytes, and the whole text decodes from SentencePiece ids.
  EXPECT_LT(tokenizer->encode(greedy.prompt).size(), greedy.prompt.size());
  EXPECT_EQ(generate(model, *tokenizer, greedy), text) << "greedy is deterministic";
}

}  // namespace
}  // namespace sy
