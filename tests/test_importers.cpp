// Tests of the corpus importers (data/importers.*, prepare_data with PrepareOptions): JSONL,
// nanoGPT train.bin/val.bin, Megatron .bin/.idx, --val-fraction. Every input is written here;
// every bad input must fail with one line naming the file and position and leave no output file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/importers.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "tests/compressed_files.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class ImportTest : public test::TempFolderTest {
 protected:
  ImportTest() : TempFolderTest("sy_test_importers") {}
  PrepareOptions options(const std::string& format, std::vector<std::string> inputs) const {
    PrepareOptions options;
    options.format = format;
    options.inputs = std::move(inputs);
    options.output = path("out.h5");
    return options;
  }
  // prepare_data must throw one line holding every fragment and leave neither out.h5 nor
  // out.h5.tmp behind.
  void expect_failure(const PrepareOptions& options, const std::vector<std::string>& fragments) {
    try {
      prepare_data(options);
      ADD_FAILURE() << "no exception; expected one mentioning " << fragments.front();
    } catch (const std::runtime_error& error) {
      const std::string message = error.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      for (const std::string& fragment : fragments)
        EXPECT_NE(message.find(fragment), std::string::npos)
            << "'" << fragment << "' not in: " << message;
    }
    EXPECT_FALSE(fs::exists(options.output));
    EXPECT_FALSE(fs::exists(options.output + ".tmp"));
  }
};

std::vector<int32_t> bytes_of(const std::string& text) {
  std::vector<int32_t> tokens;
  for (char c : text) tokens.push_back(static_cast<unsigned char>(c));
  return tokens;
}

// `value` as `size` little-endian bytes.
void append_le(std::string& out, uint64_t value, int size) {
  for (int k = 0; k < size; k++) out += static_cast<char>((value >> (8 * k)) & 0xff);
}

std::string uint16_file(const std::vector<uint16_t>& tokens) {
  std::string bytes;
  for (uint16_t token : tokens) append_le(bytes, token, 2);
  return bytes;
}

// A Megatron indexed dataset as its writer lays it out: every sequence's tokens back to back in
// the .bin; the .idx header "MMIDIDX\0\0", version 1 (u64), dtype code (u8), sequence count and
// document count (u64), then sequence lengths (i32), byte pointers (i64) and document indices
// (i64: 0, then the sequence count after each document).
struct MegatronFiles {
  std::string bin, idx;
};
MegatronFiles megatron_dataset(const std::vector<std::vector<std::vector<int64_t>>>& documents,
                               int dtype_code, int item_size) {
  MegatronFiles files;
  std::vector<int64_t> lengths, pointers, document_indices = {0};
  for (const auto& document : documents) {
    for (const auto& sequence : document) {
      pointers.push_back(static_cast<int64_t>(files.bin.size()));
      lengths.push_back(static_cast<int64_t>(sequence.size()));
      for (int64_t token : sequence) append_le(files.bin, static_cast<uint64_t>(token), item_size);
    }
    document_indices.push_back(static_cast<int64_t>(lengths.size()));
  }
  files.idx = std::string("MMIDIDX\0\0", 9);
  append_le(files.idx, 1, 8);
  append_le(files.idx, dtype_code, 1);
  append_le(files.idx, lengths.size(), 8);
  append_le(files.idx, document_indices.size(), 8);
  for (int64_t length : lengths) append_le(files.idx, length, 4);
  for (int64_t pointer : pointers) append_le(files.idx, pointer, 8);
  for (int64_t index : document_indices) append_le(files.idx, index, 8);
  return files;
}

// ---- JSONL ----

TEST_F(ImportTest, JsonlDocumentsSplitWhole) {
  // Blank lines are skipped, CRLF endings accepted, escapes decoded, other members ignored.
  write_file("a.jsonl",
              "{\"text\": \"one\"}\n\n{\"id\": 7, \"text\": \"two\\nlines\"}\r\n"
              "  \n{\"text\": \"caf\\u00e9\"}\n");
  write_file("b.jsonl", "{\"text\": \"four\"}\n{\"text\": \"\"}");  // no final newline
  PrepareOptions jsonl = options("jsonl", {path("a.jsonl"), path("b.jsonl")});
  jsonl.val_fraction = 0.25;  // 5 documents: floor(0.75 * 5) = 3 train, 2 val
  const PrepareStats stats = prepare_data(jsonl);
  EXPECT_EQ(stats.files, 2);
  EXPECT_EQ(stats.documents, 5);
  EXPECT_EQ(stats.val_documents, 2);
  const std::string train = "one\ntwo\nlines\ncaf\xc3\xa9\n", val = "four\n\n";
  EXPECT_EQ(stats.bytes, static_cast<int64_t>(train.size() + val.size()));
  const TokenData data = read_token_file(jsonl.output);
  EXPECT_EQ(data.train, bytes_of(train));
  EXPECT_EQ(data.val, bytes_of(val));
  EXPECT_EQ(data.vocab_size, 256);
  EXPECT_EQ(data.tokenizer, "bytes");
  // Each document starts one, the empty one ("\n" alone) too, across the files.
  EXPECT_TRUE(data.documents);
  EXPECT_EQ(data.train_doc_starts, (std::vector<int64_t>{0, 4, 14}));
  EXPECT_EQ(data.val_doc_starts, (std::vector<int64_t>{0, 5}));

  // Another member, and the default fraction 0.05: floor(0.95 * 2) = 1 train document.
  write_file("c.jsonl", "{\"body\": \"x\", \"text\": 1}\n{\"body\": \"y\"}\n");
  PrepareOptions field = options("jsonl", {path("c.jsonl")});
  field.field = "body";
  prepare_data(field);
  const TokenData body = read_token_file(field.output);
  EXPECT_EQ(body.train, bytes_of("x\n"));
  EXPECT_EQ(body.val, bytes_of("y\n"));
}

TEST_F(ImportTest, JsonlBadInputs) {
  const std::string good = "{\"text\": \"fine\"}\n";
  write_file("invalid.jsonl", good + good + "{\"text\": \"unterminated}\n" + good);
  expect_failure(options("jsonl", {path("invalid.jsonl")}),
                 {path("invalid.jsonl"), "line 3", "invalid JSON"});
  write_file("missing.jsonl", good + "{\"content\": \"x\"}\n");
  expect_failure(options("jsonl", {path("missing.jsonl")}),
                 {path("missing.jsonl"), "line 2", "no field \"text\""});
  write_file("number.jsonl", "{\"text\": 12}\n");
  expect_failure(options("jsonl", {path("number.jsonl")}),
                 {path("number.jsonl"), "line 1", "field \"text\" is a number, not a string"});
  write_file("array.jsonl", "[\"text\"]\n");
  expect_failure(options("jsonl", {path("array.jsonl")}),
                 {path("array.jsonl"), "line 1", "not an object"});
  write_file("bad_utf8.jsonl", "{\"text\": \"\xff\"}\n");
  expect_failure(options("jsonl", {path("bad_utf8.jsonl")}),
                 {path("bad_utf8.jsonl"), "line 1", "invalid JSON"});
  // The error names the second file when the first was fine.
  write_file("good.jsonl", good + good);
  expect_failure(options("jsonl", {path("good.jsonl"), path("number.jsonl")}),
                 {path("number.jsonl"), "line 1"});

  write_file("empty.jsonl", "");
  write_file("blank.jsonl", "\n  \n\r\n");
  expect_failure(options("jsonl", {path("empty.jsonl"), path("blank.jsonl")}),
                 {path("empty.jsonl"), path("blank.jsonl"), "no documents"});
  expect_failure(options("jsonl", {path("absent.jsonl")}), {path("absent.jsonl"), "no such file"});
  // One document leaves nothing to train on after any validation share.
  write_file("one.jsonl", good);
  expect_failure(options("jsonl", {path("one.jsonl")}),
                 {path("one.jsonl"), "1 documents are too few for --val-fraction"});
}

// ---- nanoGPT ----

// Progress lines, here one per document (progress_seconds 0): both passes, counted up to the
// total the first found.
// A folder of shards reads as its files in name order (not the order they were written).
TEST_F(ImportTest, AFolderOfShardsReadsAsItsFilesInNameOrder) {
  fs::create_directories(path("shards"));
  write_file("shards/b.jsonl", "{\"text\": \"two\", \"prompt\": \"p2\", \"response\": \"r2\"}\n");
  write_file("shards/a.jsonl", "{\"text\": \"one\", \"prompt\": \"p1\", \"response\": \"r1\"}\n");
  write_file("shards/c.jsonl", "{\"text\": \"three\", \"prompt\": \"p3\", \"response\": \"r3\"}\n");
  for (const char* format : {"jsonl", "sft"}) {
    SCOPED_TRACE(format);
    PrepareOptions files =
        options(format, {path("shards/a.jsonl"), path("shards/b.jsonl"), path("shards/c.jsonl")});
    files.val_fraction = 0.3;  // floor(0.7 * 3) = 2 training documents
    const PrepareStats listed = prepare_data(files);
    const TokenData expected = read_token_file(files.output);
    fs::remove(files.output);
    PrepareOptions folder = files;
    folder.inputs = {path("shards")};
    const PrepareStats read = prepare_data(folder);
    const TokenData data = read_token_file(folder.output);
    fs::remove(folder.output);
    EXPECT_EQ(data.train, expected.train);
    EXPECT_EQ(data.val, expected.val);
    EXPECT_EQ(data.train_doc_starts, expected.train_doc_starts);
    EXPECT_EQ(read.files, 3);
    EXPECT_EQ(read.documents, listed.documents);
    if (std::string(format) == "jsonl") {
      EXPECT_EQ(data.train, bytes_of("one\ntwo\n"));
    }
  }
}

TEST_F(ImportTest, ProgressLinesCountBothPasses) {
  write_file("a.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n");
  std::vector<std::string> lines;
  PrepareOptions prepare = options("jsonl", {path("a.jsonl")});
  prepare.val_fraction = 0.34;
  prepare.progress = [&](const std::string& line) { lines.push_back(line); };
  prepare.progress_seconds = 0;
  prepare.encode_piece_bytes = 1;  // lines are read in runs of a piece's bytes: here one line
  prepare_data(prepare);
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[0].rfind("prepare-data: counting, 1 documents, ", 0), 0u) << lines[0];
  EXPECT_EQ(lines[3].rfind("prepare-data: encoding, 1 of 3 documents, ", 0), 0u) << lines[3];
  EXPECT_EQ(lines[5].rfind("prepare-data: encoding, 3 of 3 documents, ", 0), 0u) << lines[5];
  lines.clear();
  prepare.progress_seconds = 3600;  // none within the hour
  fs::remove(prepare.output);
  prepare_data(prepare);
  EXPECT_TRUE(lines.empty());
}

// ---- Compressed inputs (data/compressed_input.*) ----

// Several MiB of JSON lines, so that lines straddle the reader's 1 MiB blocks.
std::string many_jsonl_documents() {
  std::string lines;
  for (int d = 0; lines.size() < (size_t{3} << 20); d++) {
    lines += "{\"id\": " + std::to_string(d) + ", \"text\": \"document " + std::to_string(d);
    for (int w = 0; w < d % 97; w++) lines += " w" + std::to_string(w * d % 1009);
    lines += "\"}\n";
  }
  return lines;
}

// Two members or frames, cut inside a line: one stream to the reader.
template <class Pack>
std::string packed_in_two(const std::string& text, Pack pack) {
  const size_t cut = text.size() / 3 + 7;
  return pack(text.substr(0, cut)) + pack(text.substr(cut));
}

TEST_F(ImportTest, CompressedJsonlAndTextReadAsPlain) {
  const std::string jsonl = many_jsonl_documents();
  write_file("plain.jsonl", jsonl);
  const TokenData plain = [&] {
    prepare_data(options("jsonl", {path("plain.jsonl")}));
    return read_token_file(path("out.h5"));
  }();
  std::vector<std::string> compressed;
#ifdef SY_HAVE_ZLIB
  write_file("docs.jsonl.gz", packed_in_two(jsonl, test::gzip_member));
  write_file("text.txt.gz", packed_in_two(jsonl, test::gzip_member));
  compressed.push_back("gz");
#endif
#ifdef SY_HAVE_ZSTD
  write_file("docs.jsonl.zst", packed_in_two(jsonl, test::zstd_frame));
  write_file("text.txt.zst", packed_in_two(jsonl, test::zstd_frame));
  compressed.push_back("zst");
#endif
  if (compressed.empty()) GTEST_SKIP() << "built without zlib and libzstd";
  for (const std::string& suffix : compressed) {
    SCOPED_TRACE(suffix);
    const PrepareStats stats = prepare_data(options("jsonl", {path("docs.jsonl." + suffix)}));
    const TokenData data = read_token_file(path("out.h5"));
    EXPECT_EQ(data.train, plain.train);
    EXPECT_EQ(data.val, plain.val);
    EXPECT_EQ(data.train_doc_starts, plain.train_doc_starts);
    EXPECT_EQ(data.val_doc_starts, plain.val_doc_starts);
    EXPECT_GT(stats.documents, 10000);
    // --format text splits the decompressed bytes.
    fs::remove(path("out.h5"));
    prepare_data(options("text", {path("plain.jsonl")}));
    const TokenData text_plain = read_token_file(path("out.h5"));
    fs::remove(path("out.h5"));
    prepare_data(options("text", {path("text.txt." + suffix)}));
    const TokenData text = read_token_file(path("out.h5"));
    EXPECT_EQ(text.train, text_plain.train);
    EXPECT_EQ(text.val, text_plain.val);
    fs::remove(path("out.h5"));
  }
}

// Pieces are encoded on several threads and written in order: the same token file whatever the
// count, with pieces small enough that the queue runs many times and documents span pieces.
TEST_F(ImportTest, ThreadCountDoesNotChangeTheTokens) {
  const std::string documents = many_jsonl_documents();
  write_file("docs.jsonl", documents.substr(0, documents.rfind('\n', size_t{1} << 20) + 1));
  for (const char* format : {"jsonl", "text"}) {
    SCOPED_TRACE(format);
    std::vector<TokenData> results;
    for (int threads : {1, 3, 8}) {
      PrepareOptions prepare = options(format, {path("docs.jsonl")});
      prepare.threads = threads;
      prepare.encode_piece_bytes = 3000;
      prepare_data(prepare);
      results.push_back(read_token_file(prepare.output));
      fs::remove(prepare.output);
    }
    for (size_t k = 1; k < results.size(); k++) {
      EXPECT_EQ(results[k].train, results[0].train);
      EXPECT_EQ(results[k].val, results[0].val);
      EXPECT_EQ(results[k].train_doc_starts, results[0].train_doc_starts);
      EXPECT_EQ(results[k].val_doc_starts, results[0].val_doc_starts);
    }
  }
  // sft: examples parsed and encoded on the threads, their loss masks written in order.
  {
    std::ofstream out(path("chat.jsonl"));
    for (int e = 0; e < 400; e++)
      out << "{\"prompt\": \"question " << e << std::string(e % 37, 'q') << "\", \"response\": \""
          << std::string(e % 53, 'a') << " answer " << e << "\"}\n";
  }
  std::vector<std::vector<uint8_t>> masks;
  std::vector<PrepareStats> stats;
  std::vector<TokenData> results;
  for (int threads : {1, 3, 8}) {
    PrepareOptions prepare = options("sft", {path("chat.jsonl")});
    prepare.threads = threads;
    prepare.encode_piece_bytes = 3000;  // runs of lines of about 3000 bytes: many tasks
    stats.push_back(prepare_data(prepare));
    results.push_back(read_token_file(prepare.output));
    const TokenFile opened = open_token_file(prepare.output);
    masks.emplace_back(opened.train->size());
    opened.train->read_mask(0, opened.train->size(), masks.back().data());
    fs::remove(prepare.output);
  }
  for (size_t k = 1; k < results.size(); k++) {
    EXPECT_EQ(results[k].train, results[0].train);
    EXPECT_EQ(results[k].val, results[0].val);
    EXPECT_EQ(results[k].train_doc_starts, results[0].train_doc_starts);
    EXPECT_EQ(masks[k], masks[0]);
    EXPECT_EQ(stats[k].train_targets, stats[0].train_targets);
  }
  EXPECT_EQ(results[0].train_doc_starts.size(), 380u);  // floor(0.95 * 400) examples

  PrepareOptions negative = options("jsonl", {path("docs.jsonl")});
  negative.threads = -1;
  expect_failure(negative, {"--threads -1"});
}

// Lines are parsed on the threads in runs, yet the error is the one a single thread meets
// first: the earliest bad line, also when a later line is bad or the file is cut short.
TEST_F(ImportTest, FirstErrorInInputOrderWhateverTheThreads) {
  std::string lines;  // 3 MB, lines for jsonl and sft alike
  for (int d = 1; lines.size() < (size_t{3} << 20); d++) {
    const std::string words(d % 300, 'w');
    lines += d == 150 ? "{\"text\": 150,}\n"
             : d == 9000
                 ? "[1]\n"
                 : "{\"text\": \"" + words + "\", \"prompt\": \"p\", \"response\": \"r\"}\n";
  }
  write_file("bad.jsonl", lines);
  std::vector<std::string> files{"bad.jsonl"};
#ifdef SY_HAVE_ZLIB
  // Cut inside the member: the reader fails at the end, 3 MB after line 150.
  const std::string gzip = test::gzip_member(lines);
  write_file("bad.jsonl.gz", gzip.substr(0, gzip.size() - 20));
  files.push_back("bad.jsonl.gz");
#endif
  for (const std::string& file : files)
    for (const char* format : {"jsonl", "sft"})
      for (int threads : {1, 8})
        for (int64_t piece_bytes : {int64_t{500}, int64_t{16} << 20}) {
          SCOPED_TRACE(file + " " + format + " " + std::to_string(threads) + " threads, pieces " +
                       std::to_string(piece_bytes));
          PrepareOptions prepare = options(format, {path(file)});
          prepare.threads = threads;
          // 500: runs of a line or two, a few queued; 16 MiB: runs of 1 MiB, the reader ahead.
          prepare.encode_piece_bytes = piece_bytes;
          expect_failure(prepare, {path(file) + ": line 150: invalid JSON at byte 14"});
        }
}

TEST_F(ImportTest, CompressedBadInputs) {
  const std::string jsonl = "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n";
  std::vector<std::pair<std::string, std::string>> packed;  // (suffix, two members or frames)
#ifdef SY_HAVE_ZLIB
  packed.emplace_back("gz", packed_in_two(jsonl, test::gzip_member));
#endif
#ifdef SY_HAVE_ZSTD
  packed.emplace_back("zst", packed_in_two(jsonl, test::zstd_frame));
#endif
  if (packed.empty()) GTEST_SKIP() << "built without zlib and libzstd";
  for (const auto& [suffix, bytes] : packed) {
    const std::string name = suffix == "gz" ? "gzip" : "zstd";
    // Cut at every length: an error naming the file, never a short token file.
    for (size_t length = 4; length < bytes.size(); length++) {
      SCOPED_TRACE(suffix + " cut at " + std::to_string(length));
      write_file("cut.jsonl." + suffix, bytes.substr(0, length));
      expect_failure(options("jsonl", {path("cut.jsonl." + suffix)}),
                     {path("cut.jsonl." + suffix)});
    }
    write_file("cut.jsonl." + suffix, bytes.substr(0, bytes.size() - 3));
    expect_failure(options("jsonl", {path("cut.jsonl." + suffix)}),
                   {path("cut.jsonl." + suffix), name + " data ends early"});
    // A flipped byte in the second member's data is caught by its checksum.
    std::string flipped = bytes;
    flipped[flipped.size() - 12] = static_cast<char>(flipped[flipped.size() - 12] ^ 0x40);
    write_file("flipped.jsonl." + suffix, flipped);
    expect_failure(options("jsonl", {path("flipped.jsonl." + suffix)}),
                   {path("flipped.jsonl." + suffix), "corrupt " + name + " data"});
    // Bytes after the last member that start no other.
    write_file("tail.jsonl." + suffix, bytes + "trailing");
    expect_failure(options("jsonl", {path("tail.jsonl." + suffix)}),
                   {path("tail.jsonl." + suffix), "corrupt " + name + " data"});
  }
}

TEST_F(ImportTest, NanogptTrainAndVal) {
  write_file("shakespeare/train.bin", uint16_file({0, 1, 64, 2, 65535}));
  write_file("shakespeare/val.bin", uint16_file({3, 300}));
  PrepareOptions nanogpt = options("nanogpt", {path("shakespeare")});
  nanogpt.vocab_size = 65536;
  const PrepareStats stats = prepare_data(nanogpt);
  EXPECT_EQ(stats.train_tokens, 5);
  EXPECT_EQ(stats.val_tokens, 2);
  const TokenData data = read_token_file(nanogpt.output);
  EXPECT_EQ(data.train, (std::vector<int32_t>{0, 1, 64, 2, 65535}));
  EXPECT_EQ(data.val, (std::vector<int32_t>{3, 300}));
  EXPECT_EQ(data.vocab_size, 65536);
  EXPECT_EQ(data.tokenizer, "unknown");
  EXPECT_FALSE(data.documents) << "a flat stream of tokens records no documents";

  // The path of train.bin works too, an empty val.bin is an empty split, and a label is stored.
  write_file("small/train.bin", uint16_file({5, 6}));
  write_file("small/val.bin", "");
  PrepareOptions by_file = options("nanogpt", {path("small/train.bin")});
  by_file.vocab_size = 7;
  by_file.tokenizer = "char-7";
  prepare_data(by_file);
  const TokenData small = read_token_file(by_file.output);
  EXPECT_EQ(small.train, (std::vector<int32_t>{5, 6}));
  EXPECT_TRUE(small.val.empty());
  EXPECT_EQ(small.tokenizer, "char-7");
}

TEST_F(ImportTest, NanogptBadInputs) {
  write_file("d/train.bin", uint16_file({1, 2, 3}));
  write_file("d/val.bin", uint16_file({1, 2, 50257, 4}));
  PrepareOptions nanogpt = options("nanogpt", {path("d")});
  nanogpt.vocab_size = 50257;
  expect_failure(nanogpt, {path("d/val.bin"), "token 50257 at position 2 (byte 4)",
                           "outside [0, 50257)"});

  write_file("odd/train.bin", uint16_file({1}) + "x");
  write_file("odd/val.bin", "");
  nanogpt.inputs = {path("odd")};
  expect_failure(nanogpt, {path("odd/train.bin"), "size 3 bytes is odd"});

  write_file("empty/train.bin", "");
  write_file("empty/val.bin", uint16_file({1}));
  nanogpt.inputs = {path("empty")};
  expect_failure(nanogpt, {path("empty/train.bin"), "no tokens"});

  write_file("noval/train.bin", uint16_file({1}));
  nanogpt.inputs = {path("noval")};
  expect_failure(nanogpt, {path("noval/val.bin"), "no such file"});

  nanogpt.inputs = {path("d")};
  nanogpt.val_fraction = 0.1;
  expect_failure(nanogpt, {"--val-fraction does not apply to --format nanogpt"});
  nanogpt.val_fraction.reset();
  nanogpt.vocab_size = 0;
  expect_failure(nanogpt, {"--format nanogpt needs --vocab-size in [1, 65536], got 0"});
  nanogpt.vocab_size = 50304;
  nanogpt.tokenizer = "bytes";
  expect_failure(nanogpt, {"--tokenizer bytes has vocabulary 256", "50304"});
}

// ---- Megatron ----

TEST_F(ImportTest, MegatronDocumentsKeptWhole) {
  // Four documents, the second of two sequences, the third empty.
  const std::vector<std::vector<std::vector<int64_t>>> documents = {
      {{1, 2, 3}}, {{4}, {5, 6}}, {}, {{7, 8, 60000}}};
  for (const auto& [code, size] : std::vector<std::pair<int, int>>{{4, 4}, {5, 8}, {8, 2}}) {
    SCOPED_TRACE("dtype code " + std::to_string(code));
    const MegatronFiles files = megatron_dataset(documents, code, size);
    write_file("corpus_text_document.bin", files.bin);
    write_file("corpus_text_document.idx", files.idx);
    PrepareOptions megatron = options("megatron", {path("corpus_text_document")});
    megatron.vocab_size = 100000;
    megatron.val_fraction = 0.3;  // floor(0.7 * 4) = 2 train documents
    const PrepareStats stats = prepare_data(megatron);
    EXPECT_EQ(stats.documents, 4);
    EXPECT_EQ(stats.val_documents, 2);
    const TokenData data = read_token_file(megatron.output);
    EXPECT_EQ(data.train, (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(data.val, (std::vector<int32_t>{7, 8, 60000}));
    EXPECT_EQ(data.vocab_size, 100000);
    // Each document of the index starts one (its sequences are one document); the empty third
    // document, the first of the validation split, has no token to start.
    EXPECT_TRUE(data.documents);
    EXPECT_EQ(data.train_doc_starts, (std::vector<int64_t>{0, 3}));
    EXPECT_EQ(data.val_doc_starts, (std::vector<int64_t>{0}));
    fs::remove(megatron.output);
  }
  // PREFIX.idx names the same dataset, and a multimodal index (one int8 mode per sequence after
  // the document indices) reads the same.
  const MegatronFiles files = megatron_dataset(documents, 4, 4);
  write_file("mm.bin", files.bin);
  write_file("mm.idx", files.idx + std::string(4, '\0'));  // 4 sequences
  PrepareOptions by_idx = options("megatron", {path("mm.idx")});
  by_idx.vocab_size = 100000;
  by_idx.val_fraction = 0.3;
  prepare_data(by_idx);
  EXPECT_EQ(read_token_file(by_idx.output).val, (std::vector<int32_t>{7, 8, 60000}));
}

TEST_F(ImportTest, MegatronTruncatedIndexAtEveryLength) {
  const MegatronFiles files = megatron_dataset({{{1, 2}}, {{3}, {4, 5}}}, 8, 2);
  write_file("t.bin", files.bin);
  PrepareOptions megatron = options("megatron", {path("t")});
  megatron.vocab_size = 10;
  megatron.val_fraction = 0.5;
  // The header, lengths, pointers and document indices each cut anywhere.
  for (size_t length = 0; length < files.idx.size(); length++) {
    SCOPED_TRACE("idx of " + std::to_string(length) + " bytes");
    write_file("t.idx", files.idx.substr(0, length));
    expect_failure(megatron, {path("t.idx"), "at byte"});
  }
  write_file("t.idx", files.idx.substr(0, 40));  // 3 lengths of 4 bytes from byte 34
  expect_failure(megatron, {path("t.idx"), "truncated at byte 34: sequence_lengths needs 3 x 4"});
  write_file("t.idx", files.idx);
  prepare_data(megatron);
  EXPECT_EQ(read_token_file(megatron.output).train, (std::vector<int32_t>{1, 2}));
}

TEST_F(ImportTest, MegatronInconsistentInputs) {
  const std::vector<std::vector<std::vector<int64_t>>> documents = {{{1, 2}}, {{3}}};
  const MegatronFiles files = megatron_dataset(documents, 4, 4);  // int32 tokens
  write_file("m.bin", files.bin);
  PrepareOptions megatron = options("megatron", {path("m")});
  megatron.vocab_size = 10;
  megatron.val_fraction = 0.5;
  const auto with_idx = [&](std::string idx, const std::vector<std::string>& fragments) {
    write_file("m.idx", idx);
    expect_failure(megatron, fragments);
  };
  // Layout of this index: header 0-33, lengths 34-41, pointers 42-57, document indices 58-81.
  std::string idx = files.idx;
  idx[0] = 'X';
  with_idx(idx, {path("m.idx"), "at byte 0", "MMIDIDX"});
  idx = files.idx;
  idx[9] = 2;
  with_idx(idx, {path("m.idx"), "at byte 9", "version 2"});
  idx = files.idx;
  idx[17] = 7;
  with_idx(idx, {path("m.idx"), "at byte 17", "float32"});
  idx = files.idx;
  idx[17] = 9;
  with_idx(idx, {path("m.idx"), "at byte 17", "unknown dtype code 9"});
  idx = files.idx;
  idx[42 + 8] = 12;  // the second sequence at byte 12 runs past the 12-byte .bin
  with_idx(idx, {path("m.idx"), "at byte 50", "sequence 1 spans bytes [12, 16)", path("m.bin"),
                 "which has 12 bytes"});
  idx = files.idx;
  idx[42 + 8] = 6;
  with_idx(idx, {path("m.idx"), "at byte 50", "not a multiple of 4"});
  idx = files.idx;
  idx[58] = 1;
  with_idx(idx, {path("m.idx"), "at byte 58", "document_indices[0] is 1"});
  idx = files.idx;
  idx[74] = 1;  // document indices 0, 1, 1: ends before the 2 sequences
  with_idx(idx, {path("m.idx"), "at byte 74", "not sequence_count 2"});
  idx = files.idx;
  idx[66] = 2;
  idx[74] = 1;  // 0, 2, 1
  with_idx(idx, {path("m.idx"), "at byte 74", "below document_indices[1] = 2"});
  with_idx(files.idx + "xyz", {path("m.idx"), "at byte 82", "3 bytes follow document_indices"});

  // Tokens outside the vocabulary, negative ones included, name the element and the document.
  write_file("m.idx", files.idx);
  megatron.vocab_size = 3;
  expect_failure(megatron, {path("m.bin"), "token 3 at element 2 (byte 8, document 1)",
                            "outside [0, 3)"});
  write_file("n.bin", megatron_dataset({{{1, -1}}, {{0}}}, 4, 4).bin);
  write_file("n.idx", megatron_dataset({{{1, -1}}, {{0}}}, 4, 4).idx);
  PrepareOptions negative = options("megatron", {path("n")});
  negative.vocab_size = 10;
  expect_failure(negative, {path("n.bin"), "token -1 at element 1"});

  // No documents, and too few for the fraction.
  write_file("e.bin", "");
  write_file("e.idx", megatron_dataset({}, 4, 4).idx);
  PrepareOptions empty = options("megatron", {path("e")});
  empty.vocab_size = 10;
  expect_failure(empty, {path("e.idx"), "no documents"});
  write_file("m.idx", files.idx);
  megatron.vocab_size = 10;
  megatron.val_fraction = 0.6;  // floor(0.4 * 2) = 0 train documents
  expect_failure(megatron, {"2 documents are too few for --val-fraction"});
  PrepareOptions absent = options("megatron", {path("absent")});
  absent.vocab_size = 10;
  expect_failure(absent, {path("absent.bin"), "no such file"});
}

// ---- options shared by every format ----

TEST_F(ImportTest, ValFractionAndOptionChecks) {
  write_file("plain.txt", std::string(100, 'a'));
  PrepareOptions text = options("text", {path("plain.txt")});
  text.val_fraction = 0.25;  // plain text splits by bytes: floor(0.75 * 100) = 75
  const PrepareStats stats = prepare_data(text);
  EXPECT_EQ(stats.train_tokens, 75);
  EXPECT_EQ(stats.val_tokens, 25);

  for (double bad : {0.0, 1.0, -0.5, 2.0}) {
    text.val_fraction = bad;
    fs::remove(text.output);
    expect_failure(text, {"--val-fraction", "is outside (0, 1)"});
  }
  text.val_fraction.reset();
  text.vocab_size = 300;
  expect_failure(text, {"--vocab-size applies to --format nanogpt and megatron only"});
  text.vocab_size = 0;
  text.inputs = {path("plain.txt"), path("plain.txt")};
  expect_failure(text, {"--format text reads one --input, got 2"});
  expect_failure(options("csv", {path("plain.txt")}), {"unknown data format 'csv'"});
}

}  // namespace
}  // namespace sy
