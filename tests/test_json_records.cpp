// Tests of data/json_records.*: the records of a prepare-data JSON input, the lines of JSON lines
// or the elements of one JSON array, cut as written, with the line each starts on; and the same
// documents out of both forms through prepare_data.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/json_records.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "tests/compressed_files.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

class JsonRecordsTest : public test::TempFolderTest {
 protected:
  JsonRecordsTest() : TempFolderTest("sy_test_json_records") {}
  // Every record of `contents` as {element, line, text}.
  std::vector<std::tuple<int64_t, int64_t, std::string>> records(const std::string& contents) {
    write_file("in.json", contents);
    JsonRecords reader(path("in.json"));
    std::vector<std::tuple<int64_t, int64_t, std::string>> out;
    for (JsonlLine record; reader.next(record);)
      out.emplace_back(record.element, record.number, record.text);
    return out;
  }
  // The message `contents` fails with (after the file's path), reading every record.
  std::string error(const std::string& contents) {
    try {
      records(contents);
    } catch (const std::runtime_error& failure) {
      const std::string message = failure.what(), prefix = path("in.json") + ": ";
      EXPECT_EQ(message.compare(0, prefix.size(), prefix), 0) << message;
      return message.substr(prefix.size());
    }
    return "no error";
  }
};

using Records = std::vector<std::tuple<int64_t, int64_t, std::string>>;

TEST_F(JsonRecordsTest, LinesAreRecordsAndBlankOnesAreSkipped) {
  EXPECT_EQ(records("{\"a\": 1}\n\n  \t\r\n{\"b\": [1,\n"),
            (Records{{-1, 1, "{\"a\": 1}"}, {-1, 4, "{\"b\": [1,"}}));
  EXPECT_EQ(records("{}\r\n{}"), (Records{{-1, 1, "{}\r"}, {-1, 2, "{}"}}));  // as written
  EXPECT_EQ(records("\xEF\xBB\xBF{\"a\": 1}\n"), (Records{{-1, 1, "{\"a\": 1}"}}));
  EXPECT_EQ(records(""), Records{});
  EXPECT_EQ(records("\n \n"), Records{});
  EXPECT_EQ(record_position({12, "", -1}), "line 12: ");
  EXPECT_EQ(record_position({12, "", 3}), "element 3 (line 12): ");
}

TEST_F(JsonRecordsTest, AnArraysElementsAreRecordsWithTheLineTheyStartOn) {
  // Pretty-printed, as json.dump(rows, indent=4) writes; brackets, braces, commas, quotes and
  // backslashes inside strings are text.
  const std::string pretty =
      "\xEF\xBB\xBF\n  [\n    {\n        \"a\": \"x, ] } [ {\",\n        \"b\": \"q\\\"]\\\\\"\n"
      "    },\n    {\"c\": [1, [2, {}]]},\n  3, \"s\" ,null\n]\n\n";
  EXPECT_EQ(
      records(pretty),
      (Records{{0, 3, "{\n        \"a\": \"x, ] } [ {\",\n        \"b\": \"q\\\"]\\\\\"\n    }"},
               {1, 7, "{\"c\": [1, [2, {}]]}"},
               {2, 8, "3"},
               {3, 8, "\"s\""},
               {4, 8, "null"}}));
  EXPECT_EQ(records("[]"), Records{});
  EXPECT_EQ(records(" [ \n ] \n"), Records{});
  EXPECT_EQ(records("[{}]"), (Records{{0, 1, "{}"}}));
  // An element longer than the reader's 1 MiB reads, and lines after it still counted.
  const std::string long_text(3'000'000, 'y');
  EXPECT_EQ(records("[{\"t\": \"" + long_text + "\"},\n\n{}]"),
            (Records{{0, 1, "{\"t\": \"" + long_text + "\"}"}, {1, 3, "{}"}}));
  // gzip and zstd, read as plain.
  const std::string array = "[{\"t\": 1},\n {\"t\": 2}]";
  const Records expected = {{0, 1, "{\"t\": 1}"}, {1, 2, "{\"t\": 2}"}};
#ifdef SY_HAVE_ZLIB
  EXPECT_EQ(records(test::gzip_member(array)), expected);
#endif
#ifdef SY_HAVE_ZSTD
  EXPECT_EQ(records(test::zstd_frame(array)), expected);
#endif
}

TEST_F(JsonRecordsTest, AMalformedArrayIsRefusedNamingTheLine) {
  EXPECT_EQ(error("[{},\n{},\n]"), "line 3: a comma before the array's closing ']'");
  EXPECT_EQ(error("[{}, ,{}]"), "line 1: an empty element in the array (two commas)");
  EXPECT_EQ(error("[,]"), "line 1: an empty element in the array (two commas)");
  EXPECT_EQ(error("[{}},{}]"), "line 1: a '}' that closes nothing");
  EXPECT_EQ(error("[{},\n{\"a\": \"]"),
            "line 2: the file ends inside its JSON array (no closing ']')");
  EXPECT_EQ(error("[{}\n"), "line 2: the file ends inside its JSON array (no closing ']')");
  EXPECT_EQ(error("[{}]\n[{}]"),
            "line 2: text after the JSON array's closing ']' (a file is one array, or JSON lines)");
}

// The same documents, as JSON lines and as one array (pretty-printed or on one line), give the
// same token file; errors in an array's elements name the element and its line.
TEST_F(JsonRecordsTest, PrepareDataReadsAnArrayAsItsLines) {
  std::string lines, pretty = "[\n", one_line = "[";
  for (int k = 0; k < 30; k++) {
    const std::string object = "{\"text\": \"document " + std::to_string(k) + " [x], {y}\"}";
    lines += object + "\n";
    pretty += "  " + object + (k < 29 ? ",\n" : "\n]\n");
    one_line += object + (k < 29 ? "," : "]");
  }
  const auto tokens = [&](const std::string& name, const std::string& contents) {
    write_file(name, contents);
    PrepareOptions options;
    options.format = "jsonl";
    options.inputs = {path(name)};
    options.output = path(name + ".h5");
    prepare_data(options);
    const TokenData data = read_token_file(options.output);
    return std::make_pair(data.train, data.train_doc_starts);
  };
  const auto expected = tokens("a.jsonl", lines);
  EXPECT_EQ(tokens("b.json", pretty), expected);
  EXPECT_EQ(tokens("c.json", one_line), expected);

  write_file("bad.json", "[\n  {\"text\": \"a\"},\n  {\"text\": 7}\n]");
  PrepareOptions options;
  options.format = "jsonl";
  options.inputs = {path("bad.json")};
  options.output = path("bad.h5");
  try {
    prepare_data(options);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& failure) {
    EXPECT_EQ(std::string(failure.what()),
              path("bad.json") + ": element 1 (line 3): field \"text\" is a number, not a string");
  }
}

}  // namespace
}  // namespace sy
