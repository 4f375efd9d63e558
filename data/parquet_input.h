// The string column of a Parquet file, row by row: how prepare-data --format parquet reads the
// corpora that Hugging Face datasets ship (FineWeb, The Stack, Cosmopedia). The reader is ours
// (Debian packages no Parquet library); docs/data.md says what it reads and what it refuses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace sy {

class ParquetStrings {
 public:
  // Reads the footer of `path` and finds `column`: a top-level column of strings (BYTE_ARRAY),
  // required or optional. Throws "<path>: ..." for a file that is not Parquet, a missing column,
  // one of another type or nested, and anything this reader does not decode (named).
  ParquetStrings(const std::string& path, const std::string& column);
  ~ParquetStrings();
  ParquetStrings(const ParquetStrings&) = delete;
  ParquetStrings& operator=(const ParquetStrings&) = delete;

  // The rows of the file (its footer's count).
  int64_t rows() const;
  // The next row's value, in file order; false after the last. Throws "<path>: row N: ..." for a
  // null value, and "<path>: ..." for damaged pages.
  bool next(std::string& value);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Whether this build decodes Parquet's `codec` ("snappy", "gzip", "zstd"): each library is
// optional, as for compressed text inputs.
bool parquet_codec_available(const std::string& codec);

}  // namespace sy
