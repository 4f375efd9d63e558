// The string column of a Parquet file, row by row: how prepare-data --format parquet reads the
// corpora that Hugging Face datasets ship (FineWeb, The Stack, Cosmopedia); and a column of lists
// of structs of strings, as chat datasets keep their conversations. The reader is ours (Debian
// packages no Parquet library); docs/data.md says what it reads and what it refuses.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  // The next row's value, in file order, nullopt for a null; false after the last. Throws
  // "<path>: ..." for damaged pages.
  bool next(std::optional<std::string>& value);
  // The same for a column that must hold a value in every row: throws "<path>: row N: ..." for a
  // null.
  bool next(std::string& value);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A column of lists of structs of strings, row by row: how chat datasets keep their
// conversations (messages: list<struct<role: string, content: string>>).
class ParquetRecordLists {
 public:
  // `column` is a top-level LIST of STRUCTs (the standard 3-level form
  // `optional group messages (LIST) { repeated group list { optional group element {...} } }`, and
  // the legacy 2-level forms the Parquet spec's backward-compatibility rules describe, e.g.
  // `repeated group array { ... }` / `repeated group bag`), each of whose members named in
  // `fields` is a string (BYTE_ARRAY leaf; other members are ignored and not read).
  // Throws "<path>: ..." for a file that is not Parquet, a missing column (listing the columns, as
  // ParquetStrings does), one that is not a list of structs, a missing field (listing the struct's
  // members), a field that is not a string, and whatever this reader does not decode (named).
  ParquetRecordLists(const std::string& path, const std::string& column,
                     const std::vector<std::string>& fields);
  ~ParquetRecordLists();
  ParquetRecordLists(const ParquetRecordLists&) = delete;
  ParquetRecordLists& operator=(const ParquetRecordLists&) = delete;

  // The rows of the file (its footer's count).
  int64_t rows() const;
  // The next row's list, in file order: one record per element, each the values of `fields` in
  // that order. false after the last row. An empty list gives no records. Throws
  // "<path>: row N: ..." for a null list, a null element or a null field value (saying which
  // field), and "<path>: ..." for damaged pages (e.g. the leaves disagree on a row's elements).
  bool next(std::vector<std::vector<std::string>>& records);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The string members of the struct under list column `column` of `path`, in schema order
// (e.g. {"content", "role"}), for a caller choosing between the {role, content} and {from, value}
// forms. Throws as the constructor does for a missing column or one that is not a list of structs.
std::vector<std::string> parquet_list_struct_fields(const std::string& path,
                                                    const std::string& column);

// The names of the top-level columns of `path`, in schema order; throws "<path>: ..." for a file
// that is not Parquet.
std::vector<std::string> parquet_columns(const std::string& path);

// Whether this build decodes Parquet's `codec` ("snappy", "gzip", "zstd"): each library is
// optional, as for compressed text inputs.
bool parquet_codec_available(const std::string& codec);

}  // namespace sy
