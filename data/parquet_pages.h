// The pages of one leaf column of a Parquet file, each data page as its levels and values
// whatever its codec, encoding and page version (LeafPages), and the open file they are read
// from, with the schema walks that find a column's leaves and chunks. Internal to data/: the
// column readers of data/parquet_input.cpp are built on it. Apart from them because decoding a
// page does not depend on the column's shape; apart from data/parquet_format.h (the file's
// layout) because decoding needs the codecs' libraries (SY_HAVE_*, in parquet_pages.cpp only).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/parquet_format.h"

namespace sy::parquet {

// An open Parquet file: its footer, and its bytes read where asked.
struct ParquetFile {
  std::string path;
  std::ifstream file;
  uint64_t size = 0;
  FileMetaData meta;

  explicit ParquetFile(const std::string& path_) : path(path_) {
    file.open(path, std::ios::binary);
    if (!file) fail("cannot open for reading");
    file.seekg(0, std::ios::end);
    size = static_cast<uint64_t>(file.tellg());
    if (size < 12 || read_bytes(0, 4) != "PAR1" || read_bytes(size - 4, 4) != "PAR1")
      fail("not a Parquet file (no PAR1 at its start and end)");
    const std::string length_bytes = read_bytes(size - 8, 4);
    uint32_t footer_size;
    std::memcpy(&footer_size, length_bytes.data(), 4);
    if (footer_size > size - 12) fail("a footer larger than the file");
    const std::string footer = read_bytes(size - 8 - footer_size, footer_size);
    const auto* begin = reinterpret_cast<const uint8_t*>(footer.data());
    CompactReader in(begin, begin + footer.size(), path);
    meta = read_file_metadata(in);
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(path + ": " + why);
  }
  std::string read_bytes(uint64_t offset, uint64_t bytes) {
    if (offset > size || bytes > size - offset)
      fail("a page at byte " + std::to_string(offset) + " runs past the end of the file");
    std::string out(bytes, '\0');
    file.seekg(static_cast<std::streamoff>(offset));
    if (!file.read(out.data(), static_cast<std::streamsize>(bytes))) fail("read failed");
    return out;
  }
  int64_t rows() const {
    int64_t rows = 0;
    for (const RowGroup& group : meta.row_groups) rows += group.rows;
    return rows;
  }
};

// The schema elements that are `element`'s children, in schema order.
std::vector<size_t> schema_children(const ParquetFile& file, size_t element);

// A top-level column: its schema element, and the index among leaf columns of its first leaf
// (its subtree's leaves follow in schema order).
struct TopLevelColumn {
  size_t element = 0, first_leaf = 0;
};

// The top-level column `column`; throws listing the columns where there is none.
TopLevelColumn find_top_level_column(const ParquetFile& file, const std::string& column);

// The index among leaf columns of `leaf`, a leaf under `column`.
size_t leaf_index(const ParquetFile& file, const TopLevelColumn& column, size_t leaf);

// Row group `group`'s chunk of leaf column `leaf`, whose path in the schema is `path`.
const ColumnChunk& leaf_chunk(const ParquetFile& file, size_t group, size_t leaf,
                              const std::vector<std::string>& path);

// Throws where this build cannot decompress the chunk's pages, naming what to install.
void check_codec(const ParquetFile& file, const ColumnChunk& chunk);

// A data page of a leaf column: each entry's repetition and definition levels (none where the
// column's maximum is 0), and the values of the entries whose definition level is the maximum.
struct LeafPage {
  size_t entries = 0;
  std::vector<uint8_t> repetition, definition;
  // The values as decoded, or (dictionary encoding) their indices into the chunk's dictionary:
  // a short page may repeat a long dictionary string many times, so each is copied only when
  // taken.
  std::vector<std::string> strings;
  std::vector<uint32_t> indices;
  std::shared_ptr<const std::vector<std::string>> dictionary;

  size_t values() const { return dictionary ? indices.size() : strings.size(); }
  size_t value_size(size_t k) const {
    return dictionary ? (*dictionary)[indices[k]].size() : strings[k].size();
  }
  std::string take(size_t k) {
    return dictionary ? (*dictionary)[indices[k]] : std::move(strings[k]);
  }
};

// The pages of one leaf column's chunk, a row group at a time: whatever their codec, encoding
// and page version, each data page comes out as its levels and values. ParquetStrings reads its
// column with one; ParquetRecordLists one for each field.
class LeafPages {
 public:
  LeafPages(ParquetFile& file, int max_repetition, int max_definition)
      : file_(file), max_repetition_(max_repetition), max_definition_(max_definition) {}

  void start(const ColumnChunk& chunk, size_t row_group) {
    chunk_ = &chunk;
    row_group_ = row_group;
    dictionary_ = std::make_shared<std::vector<std::string>>();
    page_offset_ = static_cast<uint64_t>(chunk.dictionary_offset > 0 &&
                                                 chunk.dictionary_offset < chunk.data_offset
                                             ? chunk.dictionary_offset
                                             : chunk.data_offset);
    values_left_ = chunk.values;
    chunk_end_ = page_offset_ + static_cast<uint64_t>(std::max<int64_t>(chunk.compressed_size, 0));
  }
  bool started() const { return chunk_ != nullptr; }
  // Whether the chunk's values (level entries) are all read.
  bool chunk_done() const { return values_left_ == 0; }
  // Reads the chunk's next page: true for a data page, then held in `page`; false for a
  // dictionary page (kept for the data pages after it) or an index page (skipped).
  bool read_page(LeafPage& page);

 private:
  [[noreturn]] void fail(const std::string& why) const { file_.fail(why); }
  std::string where() const { return file_.path + ": row group " + std::to_string(row_group_); }
  void read_dictionary(const PageHeader& header, const std::string& stored);
  // A v1 page's levels: a 4-byte length, then the levels; moves `at` past them.
  void take_v1_levels(const uint8_t*& at, const uint8_t* end, int64_t encoding, const char* kind,
                      const uint8_t*& levels, const uint8_t*& levels_end) const;
  void decode_levels(const uint8_t* begin, const uint8_t* end, int max, const char* kind,
                     size_t count, std::vector<uint8_t>& out) const;
  void decode_values(const PageHeader& header, const uint8_t* at, const uint8_t* end, size_t count,
                     LeafPage& page) const;

  ParquetFile& file_;
  int max_repetition_, max_definition_;
  const ColumnChunk* chunk_ = nullptr;
  size_t row_group_ = 0;
  uint64_t page_offset_ = 0, chunk_end_ = 0;  // the next page; where the chunk's pages end
  int64_t values_left_ = 0;
  std::shared_ptr<std::vector<std::string>> dictionary_;
};

}  // namespace sy::parquet
