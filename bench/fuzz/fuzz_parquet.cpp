// libFuzzer: bytes -> file -> ParquetStrings(path, "text") and every row, as prepare-data
// --format parquet reads them. Every input must end in its values or a std::exception naming
// the file; a crash, a sanitizer report, a hang or a huge allocation is a finding. Seeds: the
// tests' Parquet writer (tests/parquet_files.h) in each layout it writes.
#include <cstdint>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "data/parquet_input.h"
#include "tests/parquet_files.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) {
    std::vector<std::string> values;
    for (int d = 0; d < 40; ++d) values.push_back("row " + std::to_string(d % 13) + "\nline");
    int seed = 0;
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
          std::ofstream(std::string(dir) + "/seed" + std::to_string(seed++) + ".parquet",
                        std::ios::binary)
              << sy::test::parquet_file(values, layout);
        }
  }
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
  return 0;
}
