// libFuzzer: bytes -> file -> ParquetStrings(path, "text") and every row, as prepare-data
// --format parquet reads them; then ParquetRecordLists(path, "messages", {"content", "role"})
// and every row, as a chat dataset's conversations are read. Every input must end in its values
// or a std::exception naming the file; a crash, a sanitizer report, a hang or a huge allocation
// is a finding. Seeds: the tests' Parquet writer (tests/parquet_files.h) in each layout it
// writes, string columns and list<struct<string, string>> columns.
#include <cstdint>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "data/parquet_input.h"
#include "tests/parquet_files.h"

namespace {

void write_seeds(const std::string& dir) {
  std::vector<std::string> values;
  for (int d = 0; d < 40; ++d) values.push_back("row " + std::to_string(d % 13) + "\nline");
  std::vector<sy::test::ParquetList> chats;
  for (int r = 0; r < 20; ++r) {
    std::vector<sy::test::ParquetRecord> turns;
    for (int t = 0; t < r % 4; ++t)
      turns.push_back(std::vector<sy::test::ParquetValue>{"turn " + std::to_string(t % 3),
                                                          t % 2 ? "assistant" : "user"});
    chats.push_back(turns);
  }
  int seed = 0;
  const auto save = [&](const std::string& bytes) {
    std::ofstream(dir + "/seed" + std::to_string(seed++) + ".parquet", std::ios::binary) << bytes;
  };
  for (const char* codec : {"none", "snappy", "gzip", "zstd", "lz4_raw", "lz4", "brotli"})
    for (const char* encoding : {"plain", "dictionary", "delta_length", "delta"})
      for (bool v2 : {false, true}) {
        if (!sy::parquet_codec_available(codec)) continue;
        sy::test::ParquetLayout layout;
        layout.codec = codec;
        layout.encoding = encoding;
        layout.v2 = v2;
        layout.optional = seed % 2 == 1;
        layout.rows_per_page = 9;
        layout.rows_per_group = 25;
        save(sy::test::parquet_file(values, layout));
        sy::test::ParquetListLayout lists;
        lists.form = seed % 3 == 0 ? "three_level" : seed % 3 == 1 ? "two_level" : "repeated";
        lists.pages = layout;
        lists.pages.rows_per_group = 12;
        lists.entries_per_page = 5;
        lists.pages_split_rows = !v2;
        save(sy::test::parquet_list_file(chats, lists));
      }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("parquet", ".parquet", data, size);
  try {
    sy::ParquetStrings strings(path, "text");
    for (std::string value; strings.next(value);) {
    }
  } catch (const std::exception&) {
  }
  try {
    (void)sy::parquet_list_struct_fields(path, "messages");
    sy::ParquetRecordLists lists(path, "messages", {"content", "role"});
    for (std::vector<std::vector<std::string>> records; lists.next(records);) {
    }
  } catch (const std::exception&) {
  }
  return 0;
}
