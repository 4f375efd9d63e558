// prepare-data --format parquet (data/parquet_input.cpp): a Parquet file's string column read
// row by row, in every layout the common writers use, the same documents as JSON lines holding
// the same text; files this reader does not decode, nulls and damaged files refused by name.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/parquet_input.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "tests/parquet_files.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

// Documents of every length from 0, repeats (for the dictionary), newlines and UTF-8.
std::vector<std::string> documents(size_t count) {
  std::vector<std::string> values;
  for (size_t d = 0; d < count; d++) {
    if (d % 5 == 4) values.push_back(values[d / 2]);  // a repeat
    else
      values.push_back("doc " + std::to_string(d) + std::string(d % 41, 'x') + "\nline \xC3\xA9");
  }
  values[3].clear();
  return values;
}

std::vector<std::string> read_all(const std::string& path, const std::string& column = "text") {
  ParquetStrings strings(path, column);
  std::vector<std::string> values;
  for (std::string value; strings.next(value);) values.push_back(value);
  EXPECT_EQ(static_cast<int64_t>(values.size()), strings.rows());
  return values;
}

std::vector<std::string> codecs() {
  std::vector<std::string> found{"none"};
  for (const char* codec : {"snappy", "gzip", "zstd", "lz4_raw", "lz4", "brotli"})
    if (parquet_codec_available(codec)) found.push_back(codec);
  if (parquet_codec_available("lz4")) found.push_back("lz4_block");
  return found;
}

class ParquetTest : public test::TempFolderTest {
 protected:
  ParquetTest() : TempFolderTest("sy_test_parquet") {}
  std::string write(const std::string& name, const std::string& bytes) {
    write_file(name, bytes);
    return path(name);
  }
  void expect_error(const std::function<void()>& run, const std::string& fragment) {
    try {
      run();
      ADD_FAILURE() << "no error; expected one with: " << fragment;
    } catch (const std::runtime_error& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(fragment), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
  void expect_damage_fails_cleanly(const std::string& bytes);
};

TEST_F(ParquetTest, EveryLayoutReadsBackTheValues) {
  const std::vector<std::string> values = documents(300);
  for (const std::string& codec : codecs())
    for (const char* encoding : {"plain", "dictionary", "delta_length", "delta"})
      for (bool v2 : {false, true})
        for (bool optional : {false, true}) {
          test::ParquetLayout layout;
          layout.codec = codec;
          layout.encoding = encoding;
          layout.v2 = v2;
          layout.optional = optional;
          layout.rows_per_page = 37;  // pages that end mid-group of 8, several a row group
          layout.rows_per_group = 120;
          SCOPED_TRACE(codec + " " + encoding + (v2 ? " v2" : " v1") +
                       (optional ? " optional" : " required"));
          EXPECT_EQ(read_all(write("a.parquet", test::parquet_file(values, layout))), values);
        }
}

// DELTA_BINARY_PACKED in the layouts writers choose (Arrow: blocks of 128 in 4 miniblocks;
// parquet-mr: 128 in 4; larger blocks), one value a page or many, long strings (wide lengths)
// and strings that share long prefixes.
TEST_F(ParquetTest, DeltaEncodingsInEveryBlockLayout) {
  std::vector<std::string> values = documents(700);
  values[100] = std::string(70000, 'y');  // a 17-bit length among short ones
  for (size_t d = 200; d < 300; d++)
    values[d] = "https://example.org/a/long/shared/path/" + values[d];
  for (const char* encoding : {"delta_length", "delta"})
    for (const auto& [block, miniblocks] :
         std::vector<std::pair<int, int>>{{128, 4}, {128, 1}, {256, 8}, {512, 2}})
      for (size_t rows_per_page : {1, 33, 1000}) {
        test::ParquetLayout layout;
        layout.encoding = encoding;
        layout.delta_block = block;
        layout.delta_miniblocks = miniblocks;
        layout.rows_per_page = rows_per_page;
        SCOPED_TRACE(std::string(encoding) + " blocks of " + std::to_string(block) + " in " +
                     std::to_string(miniblocks) + ", " + std::to_string(rows_per_page) +
                     " rows a page");
        EXPECT_EQ(read_all(write("a.parquet", test::parquet_file(values, layout))), values);
      }
}

// The same documents as JSON lines give the same token file, split and document starts
// included, on one thread or several.
TEST_F(ParquetTest, PrepareDataReadsRowsAsJsonlReadsLines) {
  const std::vector<std::string> values = documents(500);
  test::ParquetLayout layout;
  layout.encoding = "dictionary";
  layout.rows_per_group = 200;
  const std::vector<std::string> first(values.begin(), values.begin() + 320);
  const std::vector<std::string> second(values.begin() + 320, values.end());
  write("shards/a.parquet", test::parquet_file(first, layout));
  write("shards/b.parquet", test::parquet_file(second, layout));
  std::string jsonl;
  for (const std::string& value : values) {
    std::string escaped;
    for (char c : value) escaped += c == '\n' ? std::string("\\n") : std::string(1, c);
    jsonl += "{\"text\": \"" + escaped + "\"}\n";
  }
  write("docs.jsonl", jsonl);
  PrepareOptions from_jsonl;
  from_jsonl.format = "jsonl";
  from_jsonl.inputs = {path("docs.jsonl")};
  from_jsonl.output = path("jsonl.h5");
  const PrepareStats jsonl_stats = prepare_data(from_jsonl);
  const TokenData expected = read_token_file(from_jsonl.output);
  for (int threads : {1, 4}) {
    PrepareOptions options = from_jsonl;
    options.format = "parquet";
    options.inputs = {path("shards")};
    options.output = path("parquet.h5");
    options.threads = threads;
    options.encode_piece_bytes = 300;  // runs of a few rows: many tasks
    const PrepareStats stats = prepare_data(options);
    const TokenData data = read_token_file(options.output);
    fs::remove(options.output);
    EXPECT_EQ(stats.files, 2);
    EXPECT_EQ(stats.documents, 500);
    EXPECT_EQ(stats.val_documents, jsonl_stats.val_documents);
    EXPECT_EQ(stats.bytes, jsonl_stats.bytes);
    EXPECT_EQ(data.train, expected.train);
    EXPECT_EQ(data.val, expected.val);
    EXPECT_EQ(data.train_doc_starts, expected.train_doc_starts);
    EXPECT_EQ(data.val_doc_starts, expected.val_doc_starts);
  }
  // tokenizer train reads the same lines as from the JSON lines.
  std::vector<std::string> parquet_lines, jsonl_lines;
  std::string line;
  for (CorpusLines lines({path("shards")}, "parquet"); lines.next(line);)
    parquet_lines.push_back(line);
  for (CorpusLines lines({path("docs.jsonl")}, "jsonl"); lines.next(line);)
    jsonl_lines.push_back(line);
  EXPECT_EQ(parquet_lines, jsonl_lines);
}

TEST_F(ParquetTest, RefusalsNameTheFileAndWhy) {
  const std::vector<std::string> values = documents(40);
  test::ParquetLayout optional;
  optional.optional = true;
  optional.nulls = {17};
  optional.rows_per_page = 10;
  const std::string with_null = write("null.parquet", test::parquet_file(values, optional));
  expect_error([&] { read_all(with_null); }, with_null + ": row 17: \"text\" is null");
  const std::string plain = write("plain.parquet", test::parquet_file(values));
  expect_error([&] { read_all(plain, "body"); },
               plain + ": no column \"body\" (columns: id, text)");
  expect_error([&] { read_all(plain, "id"); }, plain + ": column \"id\" does not hold strings");
  test::ParquetLayout lzo;
  lzo.declared_codec = 3;
  const std::string in_lzo = write("lzo.parquet", test::parquet_file(values, lzo));
  expect_error([&] { read_all(in_lzo); },
               in_lzo +
                   ": compression lzo is not read (uncompressed, snappy, gzip, zstd, lz4, "
                   "lz4_raw and brotli are)");
  // A build without a codec's library names the package.
  for (const auto& [codec, package] : std::vector<std::pair<std::string, std::string>>{
           {"snappy", "libsnappy-dev"}, {"lz4", "liblz4-dev"}, {"brotli", "libbrotli-dev"}}) {
    if (parquet_codec_available(codec)) continue;
    test::ParquetLayout layout;
    layout.declared_codec = test::parquet_codec_id(codec);
    const std::string file = write(codec + ".parquet", test::parquet_file(values, layout));
    expect_error([&] { read_all(file); }, file + ": compression " + codec +
                                              " is not read by this build (apt-get install " +
                                              package + ")");
  }
  test::ParquetLayout byte_stream_split;  // an encoding for numbers, not strings
  byte_stream_split.declared_encoding = 9;
  const std::string split = write("split.parquet", test::parquet_file(values, byte_stream_split));
  expect_error([&] { read_all(split); },
               split + ": values in BYTE_STREAM_SPLIT, which this reader does not decode");
  const std::string text = write("a.txt", "not parquet at all");
  expect_error([&] { read_all(text); }, text + ": not a Parquet file");

  // prepare-data: the null fails the run, and no token file is left.
  PrepareOptions options;
  options.format = "parquet";
  options.inputs = {with_null};
  options.output = path("out.h5");
  expect_error([&] { prepare_data(options); }, "row 17: \"text\" is null");
  EXPECT_FALSE(fs::exists(options.output));
  EXPECT_FALSE(fs::exists(options.output + ".tmp"));
}

// Cut at every length and with bytes flipped: an error naming the file, or (a flip inside a
// value's bytes) other values; never a crash or a hang.
TEST_F(ParquetTest, DamagedFilesFailCleanly) {
  for (const char* encoding : {"dictionary", "delta"}) {
    test::ParquetLayout layout;
    layout.encoding = encoding;
    layout.optional = true;
    layout.rows_per_page = 7;
    layout.codec = codecs().back();
    SCOPED_TRACE(encoding);
    expect_damage_fails_cleanly(test::parquet_file(documents(30), layout));
  }
}

// Every cut of `bytes` fails, every flip of one byte fails or reads, naming the file.
void ParquetTest::expect_damage_fails_cleanly(const std::string& bytes) {
  const std::string damaged = path("damaged.parquet");
  for (size_t length = 0; length < bytes.size(); length++) {
    std::ofstream(damaged, std::ios::binary | std::ios::trunc) << bytes.substr(0, length);
    EXPECT_THROW(read_all(damaged), std::runtime_error) << "cut at " << length;
  }
  for (size_t at = 4; at + 8 < bytes.size(); at++) {
    std::string flipped = bytes;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x5a);
    std::ofstream(damaged, std::ios::binary | std::ios::trunc) << flipped;
    try {
      read_all(damaged);
    } catch (const std::runtime_error& error) {
      EXPECT_EQ(std::string(error.what()).rfind(damaged + ": ", 0), 0u) << error.what();
    }
  }
}

}  // namespace
}  // namespace sy
