// prepare-data --format parquet (data/parquet_input.cpp): a Parquet file's string column read
// row by row, in every layout the common writers use, the same documents as JSON lines holding
// the same text; files this reader does not decode, nulls and damaged files refused by name.
// And a chat dataset's list<struct<string...>> column (ParquetRecordLists), in the standard and
// legacy list forms: read back row by row, each kind of null and each refusal named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
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

using Records = std::vector<std::vector<std::string>>;

// Chats of every length from 0 (an empty list), one long enough to span many pages, turns of
// many lengths (repeats for the dictionary), newlines and UTF-8.
std::vector<test::ParquetList> chats(size_t count) {
  std::vector<test::ParquetList> rows;
  for (size_t r = 0; r < count; r++) {
    std::vector<test::ParquetRecord> turns;
    const size_t length = r % 7 == 3 ? 0 : r % 5 + 1 + (r == 11 ? 60 : 0);
    for (size_t t = 0; t < length; t++)
      turns.push_back(std::vector<test::ParquetValue>{
          "turn " + std::to_string(t % 6) + std::string((r * t) % 37, 'x') + "\n\xC3\xA9",
          t % 2 ? "assistant" : "user"});
    rows.push_back(turns);
  }
  return rows;
}

// What `rows` (without nulls) read as: each element's values of the struct's fields at
// `fields`, in that order.
std::vector<Records> records_of(const std::vector<test::ParquetList>& rows,
                                const std::vector<size_t>& fields) {
  std::vector<Records> out;
  for (const test::ParquetList& row : rows) {
    Records records;
    for (const test::ParquetRecord& record : *row) {
      records.emplace_back();
      for (const size_t field : fields) records.back().push_back(*(*record)[field]);
    }
    out.push_back(records);
  }
  return out;
}

std::vector<Records> read_lists(const std::string& path,
                                const std::vector<std::string>& fields = {"content", "role"},
                                const std::string& column = "messages") {
  ParquetRecordLists lists(path, column, fields);
  std::vector<Records> rows;
  for (Records records; lists.next(records);) rows.push_back(records);
  EXPECT_EQ(static_cast<int64_t>(rows.size()), lists.rows());
  Records after;
  EXPECT_FALSE(lists.next(after));
  return rows;
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
  void expect_damage_fails_cleanly(
      const std::string& bytes, const std::function<void(const std::string&)>& read =
                                    [](const std::string& path) { read_all(path); });
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

// --format sft over a chat dataset's Parquet shards: each row's messages rendered and masked as
// the same conversations in JSON lines, in either field order and in ShareGPT's form, the chat
// template recorded; a row with nothing to train on, and inputs of both kinds, refused by name.
TEST_F(ParquetTest, PrepareDataSftReadsConversationsAsJsonlMessages) {
  std::vector<test::ParquetList> rows;  // {content, role}
  std::string jsonl;
  for (int r = 0; r < 60; r++) {
    std::vector<test::ParquetRecord> messages;
    std::string line;
    const int turns = 1 + r % 3;
    for (int t = 0; t < 2 * turns + (r % 4 == 0 ? 1 : 0); t++) {
      const std::string role = r % 4 == 0 && t == 0 ? "system" : (t % 2 ? "assistant" : "user");
      const std::string content =
          role + " " + std::to_string(r) + "." + std::to_string(t) + std::string(r % 7, 'z');
      messages.push_back(std::vector<test::ParquetValue>{content, role});
      line += std::string(line.empty() ? "" : ", ") + "{\"role\": \"" + role +
              "\", \"content\": \"" + content + "\"}";
    }
    rows.push_back(messages);
    jsonl += "{\"messages\": [" + line + "]}\n";
  }
  write("chat.jsonl", jsonl);
  PrepareOptions from_jsonl;
  from_jsonl.format = "sft";
  from_jsonl.inputs = {path("chat.jsonl")};
  from_jsonl.output = path("jsonl.h5");
  from_jsonl.sft.chat_template = ChatTemplate::kLlama3;
  const PrepareStats jsonl_stats = prepare_data(from_jsonl);
  const TokenFile expected = open_token_file(from_jsonl.output);
  EXPECT_EQ(expected.chat_template, "llama3");
  const auto masked = [](const TokenFile& file, bool val) {
    const TokenSource& split = val ? *file.val : *file.train;
    std::vector<int32_t> tokens(static_cast<size_t>(split.size()));
    std::vector<uint8_t> mask(tokens.size());
    split.read(0, split.size(), tokens.data());
    split.read_mask(0, split.size(), mask.data());
    return std::make_pair(tokens, mask);
  };
  test::ParquetListLayout layout;
  layout.pages.rows_per_group = 25;
  layout.entries_per_page = 17;
  test::ParquetListLayout sharegpt = layout;
  sharegpt.column = "conversations";
  sharegpt.fields = {"value", "from"};
  std::vector<test::ParquetList> sharegpt_rows = rows;
  for (test::ParquetList& row : sharegpt_rows)
    for (test::ParquetRecord& message : *row)
      (*message)[1] = (*message)[1] == "user"        ? "human"
                      : (*message)[1] == "assistant" ? "gpt"
                                                     : "system";
  write("shards/a.parquet",
        test::parquet_list_file(std::vector<test::ParquetList>(rows.begin(), rows.begin() + 45),
                                layout));
  write("shards/b.parquet",
        test::parquet_list_file(std::vector<test::ParquetList>(rows.begin() + 45, rows.end()),
                                layout));
  write("sharegpt/a.parquet", test::parquet_list_file(sharegpt_rows, sharegpt));
  for (const char* shards : {"shards", "sharegpt"}) {
    SCOPED_TRACE(shards);
    PrepareOptions options = from_jsonl;
    options.inputs = {path(shards)};
    options.output = path(std::string(shards) + ".h5");
    options.threads = 3;
    options.encode_piece_bytes = 200;  // runs of a few rows: many tasks
    if (std::string(shards) == "sharegpt") options.sft.messages = "conversations";
    const PrepareStats stats = prepare_data(options);
    EXPECT_EQ(stats.documents, 60);
    EXPECT_EQ(stats.val_documents, jsonl_stats.val_documents);
    EXPECT_EQ(stats.train_targets, jsonl_stats.train_targets);
    const TokenFile file = open_token_file(options.output);
    EXPECT_EQ(file.chat_template, "llama3");
    for (bool val : {false, true}) EXPECT_EQ(masked(file, val), masked(expected, val));
    EXPECT_EQ(*file.train->document_starts(), *expected.train->document_starts());
  }

  rows[7] = std::vector<test::ParquetRecord>{std::vector<test::ParquetValue>{"hi", "user"}};
  const std::string unanswered = write("unanswered.parquet", test::parquet_list_file(rows, layout));
  PrepareOptions options = from_jsonl;
  options.inputs = {unanswered};
  options.output = path("unanswered.h5");
  test::expect_error([&] { prepare_data(options); },
                     {unanswered + ": row 7: no assistant message, nothing to train on"});
  EXPECT_FALSE(fs::exists(options.output));
  options.inputs = {path("shards/a.parquet"), path("chat.jsonl")};
  test::expect_error([&] { prepare_data(options); },
                     {"chat.jsonl is not a .parquet file, as the other inputs are"});
  test::ParquetListLayout turns = layout;
  turns.fields = {"content", "speaker"};
  options.inputs = {write("turns.parquet", test::parquet_list_file(rows, turns))};
  test::expect_error([&] { prepare_data(options); },
                     {"turns.parquet: column \"messages\" holds messages of content, speaker, not "
                      "role and content (or from and value)"});
}

// An instruction dataset's shards (Alpaca's instruction, input and output string columns) read
// as the same rows in JSON lines are, in row groups and pages that the columns do not share.
TEST_F(ParquetTest, PrepareDataSftReadsInstructionColumnsAsJsonlPairs) {
  // An empty input or system message is null in the Parquet shard (as a nullable column holds
  // one), and in the JSON lines null or "", by turns: each is read as an empty one.
  std::vector<std::string> instruction, input, output, system;
  std::vector<size_t> null_input, null_system;
  std::string jsonl;
  const auto json_string = [](const std::string& value, int r) {
    return value.empty() && r % 2 == 0 ? std::string("null") : "\"" + value + "\"";
  };
  for (int r = 0; r < 50; r++) {
    instruction.push_back("do " + std::to_string(r) + std::string(r % 5, 'i'));
    input.push_back(r % 3 ? "with " + std::string(r % 11, 'n') : "");
    output.push_back("done " + std::to_string(r) + std::string(r % 13, 'o'));
    system.push_back(r % 4 ? "be terse " + std::to_string(r) : "");
    if (input.back().empty()) null_input.push_back(r);
    if (system.back().empty()) null_system.push_back(r);
    jsonl += "{\"instruction\": \"" + instruction.back() +
             "\", \"input\": " + json_string(input.back(), r) + ", \"output\": \"" + output.back() +
             "\", \"sys\": " + json_string(system.back(), r) + "}\n";
  }
  write("alpaca.jsonl", jsonl);
  test::ParquetLayout layout;
  layout.optional = true;
  layout.column_nulls = {{"input", null_input}, {"sys", null_system}};
  layout.rows_per_group = 20;
  layout.rows_per_page = 7;
  layout.encoding = "dictionary";
  layout.codec = parquet_codec_available("zstd") ? "zstd" : "none";
  write("shards/a.parquet",
        test::parquet_columns_file(
            {{"instruction", instruction}, {"output", output}, {"sys", system}, {"input", input}},
            layout));
  PrepareOptions from_jsonl;
  from_jsonl.format = "sft";
  from_jsonl.inputs = {path("alpaca.jsonl")};
  from_jsonl.output = path("jsonl.h5");
  from_jsonl.sft.prompt = {"instruction", "input"};
  from_jsonl.sft.response = "output";
  for (const bool in_template : {false, true}) {
    SCOPED_TRACE(in_template);
    from_jsonl.sft.pairs_in_template = in_template;
    if (in_template) {  // each row's own system message, else the default
      from_jsonl.sft.system_field = "sys";
      from_jsonl.sft.system = "Default.";
    }
    const PrepareStats expected_stats = prepare_data(from_jsonl);
    PrepareOptions options = from_jsonl;
    options.inputs = {path("shards")};
    options.output = path(in_template ? "chatml.h5" : "pairs.h5");
    options.threads = 3;
    options.encode_piece_bytes = 100;
    const PrepareStats stats = prepare_data(options);
    EXPECT_EQ(stats.documents, 50);
    EXPECT_EQ(stats.train_targets, expected_stats.train_targets);
    const TokenFile file = open_token_file(options.output);
    const TokenFile expected = open_token_file(from_jsonl.output);
    EXPECT_EQ(file.chat_template, in_template ? "chatml" : "");
    EXPECT_EQ(expected.chat_template, file.chat_template);
    for (const bool val : {false, true}) {
      const TokenSource& got = val ? *file.val : *file.train;
      const TokenSource& want = val ? *expected.val : *expected.train;
      ASSERT_EQ(got.size(), want.size());
      std::vector<int32_t> tokens(got.size()), want_tokens(got.size());
      std::vector<uint8_t> mask(got.size()), want_mask(got.size());
      got.read(0, got.size(), tokens.data());
      want.read(0, want.size(), want_tokens.data());
      got.read_mask(0, got.size(), mask.data());
      want.read_mask(0, want.size(), want_mask.data());
      EXPECT_EQ(tokens, want_tokens);
      EXPECT_EQ(mask, want_mask);
    }
  }

  PrepareOptions options = from_jsonl;
  options.sft.system_field.clear();
  options.output = path("bad.h5");
  options.inputs = {write("text.parquet", test::parquet_file(instruction))};
  test::expect_error([&] { prepare_data(options); },
                     {"text.parquet: no column \"messages\", nor \"instruction\", \"input\" and "
                      "\"output\" (columns: id, text)"});
  options.inputs = {write("half.parquet", test::parquet_columns_file(
                                              {{"instruction", instruction}, {"output", output}}))};
  test::expect_error([&] { prepare_data(options); },
                     {"half.parquet: no column \"input\" (columns: id, instruction, output)"});
  test::ParquetLayout with_null;
  with_null.optional = true;
  with_null.nulls = {4};
  options.inputs = {
      write("null.parquet",
            test::parquet_columns_file(
                {{"instruction", instruction}, {"input", input}, {"output", output}}, with_null))};
  test::expect_error([&] { prepare_data(options); }, {"null.parquet: row 4: \"output\" is null"});
  EXPECT_FALSE(fs::exists(options.output));
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

// The list column in each form a writer may give it, every codec and encoding, v1 and v2 pages:
// row groups of 40 rows, pages of 9 entries (a row's list crossing pages, or pages ending only
// where rows start as Arrow's v2 pages do), one list of 61 elements over seven pages.
TEST_F(ParquetTest, ListsOfStructsReadBackInEveryLayout) {
  const std::vector<test::ParquetList> rows = chats(90);
  const std::vector<Records> expected = records_of(rows, {0, 1});
  for (const std::string& codec : codecs())
    for (const char* encoding : {"plain", "dictionary", "delta_length", "delta"})
      for (const char* form : {"three_level", "bag", "two_level", "tuple", "repeated"})
        for (bool v2 : {false, true})
          for (bool split_rows : {false, true}) {
            test::ParquetListLayout layout;
            layout.form = form;
            layout.pages.codec = codec;
            layout.pages.encoding = encoding;
            layout.pages.v2 = v2;
            layout.pages.rows_per_group = 40;
            layout.entries_per_page = 9;
            layout.pages_split_rows = split_rows;
            SCOPED_TRACE(codec + " " + encoding + " " + form + (v2 ? " v2" : " v1") +
                         (split_rows ? " rows split" : " rows whole"));
            EXPECT_EQ(read_lists(write("a.parquet", test::parquet_list_file(rows, layout))),
                      expected);
          }
}

// Required or optional at each level (list, element, value), fields asked in any order or
// alone, members not asked for (a number among them) left unread.
TEST_F(ParquetTest, ListsOfStructsAtEveryOptionalityAndFieldOrder) {
  const std::vector<test::ParquetList> rows = chats(50);
  for (const char* form : {"three_level", "two_level", "repeated"})
    for (int optional = 0; optional < 8; optional++) {
      test::ParquetListLayout layout;
      layout.form = form;
      layout.list_optional = optional & 1;
      layout.element_optional = optional & 2;
      layout.fields_optional = optional & 4;
      layout.number_field = "turn";
      layout.pages.encoding = "dictionary";
      layout.pages.rows_per_group = 20;
      layout.entries_per_page = 5;
      SCOPED_TRACE(std::string(form) + " levels optional: " + std::to_string(optional));
      const std::string file = write("a.parquet", test::parquet_list_file(rows, layout));
      EXPECT_EQ(read_lists(file), records_of(rows, {0, 1}));
      EXPECT_EQ(read_lists(file, {"role", "content"}), records_of(rows, {1, 0}));
      EXPECT_EQ(read_lists(file, {"role"}), records_of(rows, {1}));
      EXPECT_EQ(parquet_list_struct_fields(file, "messages"),
                (std::vector<std::string>{"content", "role"}));
    }
  // ShareGPT's names, and a struct of one string in the legacy form named "array".
  test::ParquetListLayout sharegpt;
  sharegpt.column = "conversations";
  sharegpt.fields = {"from", "value"};
  const std::string file = write("sharegpt.parquet", test::parquet_list_file(rows, sharegpt));
  EXPECT_EQ(parquet_list_struct_fields(file, "conversations"),
            (std::vector<std::string>{"from", "value"}));
  EXPECT_EQ(read_lists(file, {"from", "value"}, "conversations"), records_of(rows, {0, 1}));
  std::vector<test::ParquetList> contents;
  for (const test::ParquetList& row : rows) {
    std::vector<test::ParquetRecord> records;
    for (const test::ParquetRecord& record : *row)
      records.push_back(std::vector<test::ParquetValue>{(*record)[0]});
    contents.push_back(records);
  }
  test::ParquetListLayout one_field;
  one_field.form = "two_level";
  one_field.fields = {"content"};
  EXPECT_EQ(
      read_lists(write("one.parquet", test::parquet_list_file(contents, one_field)), {"content"}),
      records_of(contents, {0}));
}

TEST_F(ParquetTest, EmptyListsAndFilesWithoutRows) {
  const std::vector<test::ParquetList> empty(30, std::vector<test::ParquetRecord>{});
  for (bool v2 : {false, true}) {
    test::ParquetListLayout layout;
    layout.pages.v2 = v2;
    layout.pages.rows_per_group = 7;
    layout.entries_per_page = 4;
    EXPECT_EQ(read_lists(write("empty.parquet", test::parquet_list_file(empty, layout))),
              std::vector<Records>(30));
    EXPECT_EQ(read_lists(write("none.parquet", test::parquet_list_file({}, layout))),
              std::vector<Records>());
  }
}

// A null list, a null element and a null value each fail their row, naming it, the element and
// the field, after the rows before it; a null in a field not asked for is not read.
TEST_F(ParquetTest, ListNullsNameTheRowAndWhatIsNull) {
  const std::vector<test::ParquetList> rows = chats(40);
  std::vector<test::ParquetList> null_list = rows, null_element = rows, null_value = rows;
  null_list[5] = std::nullopt;
  (*null_element[7])[2] = std::nullopt;
  (*(*null_value[9])[1])[1] = std::nullopt;
  for (bool v2 : {false, true}) {
    test::ParquetListLayout layout;
    layout.pages.v2 = v2;
    layout.pages.encoding = "dictionary";
    layout.entries_per_page = 3;
    SCOPED_TRACE(v2 ? "v2" : "v1");
    const std::string list = write("list.parquet", test::parquet_list_file(null_list, layout));
    ParquetRecordLists lists(list, "messages", {"content", "role"});
    Records records;
    for (size_t r = 0; r < 5; r++) {
      ASSERT_TRUE(lists.next(records));
      EXPECT_EQ(records, records_of({rows[r]}, {0, 1})[0]);
    }
    expect_error([&] { lists.next(records); }, list + ": row 5: \"messages\" is null");
    const std::string element =
        write("element.parquet", test::parquet_list_file(null_element, layout));
    expect_error([&] { read_lists(element); },
                 element + ": row 7: element 2 of \"messages\" is null");
    const std::string value = write("value.parquet", test::parquet_list_file(null_value, layout));
    expect_error([&] { read_lists(value); },
                 value + ": row 9: \"role\" is null in element 1 of \"messages\"");
    EXPECT_EQ(read_lists(value, {"content"}), records_of(rows, {0}));
  }
}

TEST_F(ParquetTest, ListRefusalsNameTheFileAndWhy) {
  test::ParquetListLayout layout;
  layout.number_field = "turn";
  const std::string chat = write("chat.parquet", test::parquet_list_file(chats(10), layout));
  const std::string text = write("text.parquet", test::parquet_file(documents(10)));
  expect_error(
      [&] {
        ParquetRecordLists(chat, "conversations", {"from", "value"});
      },
      chat + ": no column \"conversations\" (columns: id, messages)");
  expect_error([&] { ParquetRecordLists(text, "text", {"content"}); },
               text + ": column \"text\" is not a list of structs (it holds strings)");
  expect_error(
      [&] { parquet_list_struct_fields(text, "id"); },
      text + ": column \"id\" is not a list of structs (it holds values that are not strings)");
  expect_error(
      [&] {
        ParquetRecordLists(chat, "messages", {"from", "value"});
      },
      chat +
          ": column \"messages\": no field \"from\" in its structs (fields: content, "
          "turn, role)");
  expect_error(
      [&] {
        ParquetRecordLists(chat, "messages", {"content", "turn"});
      },
      chat + ": column \"messages\": field \"turn\" does not hold strings");
  expect_error([&] { read_all(chat, "messages"); },
               chat + ": column \"messages\" is nested, not strings");
  EXPECT_EQ(parquet_list_struct_fields(chat, "messages"),
            (std::vector<std::string>{"content", "role"}));
  const std::string not_parquet = write("a.txt", "not parquet at all");
  expect_error([&] { parquet_list_struct_fields(not_parquet, "messages"); },
               not_parquet + ": not a Parquet file");
  test::ParquetListLayout lzo;
  lzo.pages.declared_codec = 3;
  const std::string in_lzo = write("lzo.parquet", test::parquet_list_file(chats(10), lzo));
  expect_error([&] { ParquetRecordLists(in_lzo, "messages", {"content"}); },
               in_lzo + ": compression lzo is not read");

  // Columns nested otherwise: only their schemas matter (files without row groups).
  const auto schema_only = [&](const std::string& name,
                               std::vector<test::ParquetSchemaElement> column) {
    std::vector<test::ParquetSchemaElement> schema{{"schema", -1, -1, 1}};
    schema.insert(schema.end(), column.begin(), column.end());
    return write(name, "PAR1" + test::parquet_footer(schema, 0, {}));
  };
  const std::string list_of_strings = schema_only(
      "strings.parquet", {{"tags", -1, 1, 1, 3, 3}, {"list", -1, 2, 1}, {"element", 6, 1, 0, 0}});
  expect_error(
      [&] { parquet_list_struct_fields(list_of_strings, "tags"); },
      list_of_strings + ": column \"tags\" is not a list of structs (it holds a list of strings)");
  // parquet-mr's 2-level list of lists (apache/parquet-testing's old_list_structure.parquet).
  const std::string list_of_lists = schema_only(
      "lists.parquet", {{"a", -1, 0, 1, 3}, {"array", -1, 2, 1, 3}, {"array", 1, 2, 0}});
  expect_error(
      [&] { parquet_list_struct_fields(list_of_lists, "a"); },
      list_of_lists + ": column \"a\" is not a list of structs (it holds a list of lists)");
  const std::string map = schema_only("map.parquet", {{"m", -1, 1, 1, 1, 2},
                                                      {"key_value", -1, 2, 2, 2},
                                                      {"key", 6, 0, 0, 0},
                                                      {"value", 6, 1, 0, 0}});
  expect_error(
      [&] {
        ParquetRecordLists(map, "m", {"key", "value"});
      },
      map + ": column \"m\" is not a list of structs (it holds a map)");
  const std::string structure =
      schema_only("struct.parquet", {{"s", -1, 1, 2}, {"a", 6, 1, 0, 0}, {"b", 6, 1, 0, 0}});
  expect_error([&] { parquet_list_struct_fields(structure, "s"); },
               structure + ": column \"s\" is not a list of structs (it holds a struct)");
}

// Each field's column must repeat the list's shape; a list longer than 2^20 elements is refused
// before it is all held.
TEST_F(ParquetTest, ListColumnsThatDisagreeOrRunLongFail) {
  std::vector<test::ParquetList> rows = chats(10);
  rows[0] = rows[2];  // three elements, so that row 0 keeps two
  test::ParquetListLayout shifted;
  shifted.shift_second_field = true;
  const std::string file = write("shifted.parquet", test::parquet_list_file(rows, shifted));
  expect_error([&] { read_lists(file); },
               file +
                   ": row 0: columns \"messages.list.element.content\" and "
                   "\"messages.list.element.role\" disagree on its list");
  rows.resize(2);
  rows[1] = std::vector<test::ParquetRecord>((size_t{1} << 20) + 1,
                                             std::vector<test::ParquetValue>{"x", "user"});
  test::ParquetListLayout layout;
  layout.pages.encoding = "dictionary";
  layout.entries_per_page = 1 << 16;
  const std::string longest = write("long.parquet", test::parquet_list_file(rows, layout));
  ParquetRecordLists lists(longest, "messages", {"content"});
  Records records;
  EXPECT_TRUE(lists.next(records));
  expect_error([&] { lists.next(records); },
               longest + ": row 1: a list of more than 1048576 elements");
}

// Cut at every length and with bytes flipped, in both page versions and list forms.
TEST_F(ParquetTest, DamagedListFilesFailCleanly) {
  std::vector<test::ParquetList> rows = chats(12);
  for (const char* form : {"three_level", "two_level"}) {
    test::ParquetListLayout layout;
    layout.form = form;
    layout.pages.encoding = form == std::string("two_level") ? "delta" : "dictionary";
    layout.pages.v2 = form == std::string("two_level");
    layout.pages.rows_per_group = 7;
    layout.pages.codec = codecs().back();
    layout.entries_per_page = 5;
    SCOPED_TRACE(form);
    expect_damage_fails_cleanly(test::parquet_list_file(rows, layout),
                                [](const std::string& path) { read_lists(path); });
  }
}

// Every cut of `bytes` fails, every flip of one byte fails or reads, naming the file.
void ParquetTest::expect_damage_fails_cleanly(const std::string& bytes,
                                              const std::function<void(const std::string&)>& read) {
  const std::string damaged = path("damaged.parquet");
  for (size_t length = 0; length < bytes.size(); length++) {
    std::ofstream(damaged, std::ios::binary | std::ios::trunc) << bytes.substr(0, length);
    EXPECT_THROW(read(damaged), std::runtime_error) << "cut at " << length;
  }
  for (size_t at = 4; at + 8 < bytes.size(); at++) {
    std::string flipped = bytes;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x5a);
    std::ofstream(damaged, std::ios::binary | std::ios::trunc) << flipped;
    try {
      read(damaged);
    } catch (const std::runtime_error& error) {
      EXPECT_EQ(std::string(error.what()).rfind(damaged + ": ", 0), 0u) << error.what();
    }
  }
}

}  // namespace
}  // namespace sy
