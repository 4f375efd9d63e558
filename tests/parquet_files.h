// Parquet files written in the tests, for data/parquet_input.cpp: a required INT64 column "id"
// and a string column, in row groups and pages, as pyarrow and Spark lay them out (dictionary
// plain or delta-encoded values, data pages v1 or v2, optional columns with nulls, each codec);
// or beside "id" a list<struct<string...>> column as chat datasets keep conversations, in the
// standard 3-level form or a legacy one, with nulls at each level.
// The reader was also checked by hand against apache/parquet-testing's files (docs/data.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef SY_HAVE_BROTLI
#include <brotli/encode.h>
#endif
#ifdef SY_HAVE_LZ4
#include <lz4.h>
#endif
#ifdef SY_HAVE_SNAPPY
#include <snappy-c.h>
#endif
#include "tests/compressed_files.h"

namespace sy::test {

// Thrift's compact protocol, the writing half.
class CompactWriter {
 public:
  std::string bytes;
  void i32(int16_t id, int64_t value) { integer_field(id, 5, value); }
  void i64(int16_t id, int64_t value) { integer_field(id, 6, value); }
  void binary(int16_t id, const std::string& value) {
    header(id, 8);
    varint(value.size());
    bytes += value;
  }
  void boolean(int16_t id, bool value) { header(id, value ? 1 : 2); }
  void begin_struct(int16_t id) {
    header(id, 12);
    last_ids_.push_back(0);
  }
  void end_struct() {
    bytes += '\0';
    last_ids_.pop_back();
  }
  void begin_list(int16_t id, int element_type, size_t count) {
    header(id, 9);
    if (count < 15) {
      bytes += static_cast<char>(count << 4 | element_type);
    } else {
      bytes += static_cast<char>(0xf0 | element_type);
      varint(count);
    }
  }
  void list_struct_begin() { last_ids_.push_back(0); }  // an element: no field header
  void list_i32(int64_t value) { varint(zigzag(value)); }
  void list_binary(const std::string& value) {
    varint(value.size());
    bytes += value;
  }
  void varint(uint64_t value) {
    while (value >= 0x80) {
      bytes += static_cast<char>(value | 0x80);
      value >>= 7;
    }
    bytes += static_cast<char>(value);
  }
  static uint64_t zigzag(int64_t value) {
    return (static_cast<uint64_t>(value) << 1) ^ static_cast<uint64_t>(value >> 63);
  }

 private:
  void header(int16_t id, int type) {
    const int delta = id - last_ids_.back();
    if (delta > 0 && delta <= 15) {
      bytes += static_cast<char>(delta << 4 | type);
    } else {
      bytes += static_cast<char>(type);
      varint(zigzag(id));
    }
    last_ids_.back() = id;
  }
  void integer_field(int16_t id, int type, int64_t value) {
    header(id, type);
    varint(zigzag(value));
  }
  std::vector<int16_t> last_ids_{0};
};

struct ParquetLayout {
  std::string column = "text";
  bool optional = false;       // definition levels
  std::vector<size_t> nulls;   // rows written as null (optional only)
  // parquet_columns_file: the rows written as null in the named column, instead of `nulls`
  std::map<std::string, std::vector<size_t>> column_nulls;
  // plain; dictionary: RLE_DICTIONARY over a dictionary page; delta_length:
  // DELTA_LENGTH_BYTE_ARRAY; delta: DELTA_BYTE_ARRAY; int64: PLAIN 8-byte values (the values
  // are their bytes)
  std::string encoding = "plain";
  bool v2 = false;             // data pages v2
  // none, snappy, gzip, zstd, lz4_raw, lz4 (Hadoop's frames), lz4_block (LZ4 as one bare
  // block, as old Arrow wrote it), brotli
  std::string codec = "none";
  int delta_block = 128, delta_miniblocks = 4;  // DELTA_BINARY_PACKED's layout
  int declared_codec = -1;     // else the codec id the footer names (a file one cannot read)
  int declared_encoding = -1;  // else the encoding id the data pages name
  size_t rows_per_page = 1000, rows_per_group = size_t{1} << 30;
};

inline std::string parquet_compress(const std::string& codec, const std::string& plain) {
  if (codec == "none") return plain;
#ifdef SY_HAVE_SNAPPY
  if (codec == "snappy") {
    std::string packed(snappy_max_compressed_length(plain.size()), '\0');
    size_t length = packed.size();
    if (snappy_compress(plain.data(), plain.size(), packed.data(), &length) != SNAPPY_OK)
      throw std::runtime_error("snappy_compress failed");
    packed.resize(length);
    return packed;
  }
#endif
#ifdef SY_HAVE_ZLIB
  if (codec == "gzip") return gzip_member(plain);
#endif
#ifdef SY_HAVE_LZ4
  if (codec == "lz4_raw" || codec == "lz4" || codec == "lz4_block") {
    std::string packed(static_cast<size_t>(LZ4_compressBound(static_cast<int>(plain.size()))),
                       '\0');
    packed.resize(static_cast<size_t>(LZ4_compress_default(plain.data(), packed.data(),
                                                           static_cast<int>(plain.size()),
                                                           static_cast<int>(packed.size()))));
    if (codec != "lz4") return packed;
    std::string framed;  // one Hadoop frame: big-endian sizes, plain then stored
    for (const size_t size : {plain.size(), packed.size()})
      for (int shift = 24; shift >= 0; shift -= 8) framed += static_cast<char>(size >> shift);
    return framed + packed;
  }
#endif
#ifdef SY_HAVE_BROTLI
  if (codec == "brotli") {
    std::string packed(BrotliEncoderMaxCompressedSize(plain.size()), '\0');
    size_t length = packed.size();
    if (!BrotliEncoderCompress(BROTLI_DEFAULT_QUALITY, BROTLI_DEFAULT_WINDOW, BROTLI_MODE_GENERIC,
                               plain.size(), reinterpret_cast<const uint8_t*>(plain.data()),
                               &length, reinterpret_cast<uint8_t*>(packed.data())))
      throw std::runtime_error("BrotliEncoderCompress failed");
    packed.resize(length);
    return packed;
  }
#endif
#ifdef SY_HAVE_ZSTD
  if (codec == "zstd") return zstd_frame(plain);
#endif
  throw std::runtime_error("codec " + codec + " not in this build");
}

inline int parquet_codec_id(const std::string& codec) {
  const std::map<std::string, int> ids{{"none", 0},    {"snappy", 1},   {"gzip", 2},
                                       {"brotli", 4},  {"lz4", 5},      {"zstd", 6},
                                       {"lz4_raw", 7}, {"lz4_block", 5}};
  return ids.at(codec);
}

// Values with bit_width bits each, RLE/bit-packed hybrid: runs of 8 or more equal values as RLE
// runs, the rest bit-packed in groups of 8 (padded with zeros).
inline std::string parquet_hybrid(const std::vector<uint32_t>& values, int bit_width) {
  CompactWriter out;
  size_t k = 0;
  while (k < values.size()) {
    size_t run = 1;
    while (k + run < values.size() && values[k + run] == values[k]) run++;
    if (run >= 8) {
      out.varint(run << 1);
      for (int b = 0; b < (bit_width + 7) / 8; b++)
        out.bytes += static_cast<char>(values[k] >> (8 * b));
      k += run;
      continue;
    }
    const size_t count = std::min<size_t>(values.size() - k, 8);  // one group
    out.varint(1 << 1 | 1);
    std::string packed(static_cast<size_t>(bit_width), '\0');
    for (size_t v = 0; v < 8; v++) {
      const uint32_t value = v < count ? values[k + v] : 0;
      for (int bit = 0; bit < bit_width; bit++)
        if (value >> bit & 1) {
          const size_t at = v * static_cast<size_t>(bit_width) + static_cast<size_t>(bit);
          packed[at / 8] = static_cast<char>(packed[at / 8] | 1 << (at % 8));
        }
    }
    out.bytes += packed;
    k += count;
  }
  return out.bytes;
}

inline std::string parquet_plain_strings(const std::vector<std::string>& values) {
  std::string out;
  for (const std::string& value : values) {
    const uint32_t length = static_cast<uint32_t>(value.size());
    out.append(reinterpret_cast<const char*>(&length), 4);
    out += value;
  }
  return out;
}

// DELTA_BINARY_PACKED: the header, then blocks of `block` deltas in `miniblocks` miniblocks,
// each at the width its largest delta less the block's least needs.
inline std::string parquet_delta_binary_packed(const std::vector<int64_t>& values, int block,
                                               int miniblocks) {
  CompactWriter out;
  const auto zigzag = CompactWriter::zigzag;
  out.varint(static_cast<uint64_t>(block));
  out.varint(static_cast<uint64_t>(miniblocks));
  out.varint(values.size());
  out.varint(zigzag(values.empty() ? 0 : values[0]));
  const size_t per_miniblock = static_cast<size_t>(block / miniblocks);
  for (size_t first = 1; first < values.size(); first += static_cast<size_t>(block)) {
    const size_t last = std::min(values.size(), first + static_cast<size_t>(block));
    std::vector<uint64_t> deltas;
    for (size_t k = first; k < last; k++)
      deltas.push_back(static_cast<uint64_t>(values[k]) - static_cast<uint64_t>(values[k - 1]));
    const int64_t least = static_cast<int64_t>(*std::min_element(
        deltas.begin(), deltas.end(),
        [](uint64_t a, uint64_t b) { return static_cast<int64_t>(a) < static_cast<int64_t>(b); }));
    out.varint(zigzag(least));
    std::string widths(static_cast<size_t>(miniblocks), '\0'), packed;
    for (size_t m = 0; m * per_miniblock < deltas.size(); m++) {
      const size_t begin = m * per_miniblock, end = std::min(deltas.size(), begin + per_miniblock);
      int width = 0;
      for (size_t k = begin; k < end; k++)
        while (width < 64 && (deltas[k] - static_cast<uint64_t>(least)) >> width) width++;
      widths[m] = static_cast<char>(width);
      std::string bits(per_miniblock * static_cast<size_t>(width) / 8, '\0');
      for (size_t k = begin; k < end; k++)
        for (int b = 0; b < width; b++)
          if ((deltas[k] - static_cast<uint64_t>(least)) >> b & 1) {
            const size_t at = (k - begin) * static_cast<size_t>(width) + static_cast<size_t>(b);
            bits[at / 8] = static_cast<char>(bits[at / 8] | 1 << (at % 8));
          }
      packed += bits;
    }
    out.bytes += widths + packed;
  }
  return out.bytes;
}

inline std::string parquet_delta_length_strings(const std::vector<std::string>& values,
                                                const ParquetLayout& layout) {
  std::vector<int64_t> lengths;
  std::string bytes;
  for (const std::string& value : values) {
    lengths.push_back(static_cast<int64_t>(value.size()));
    bytes += value;
  }
  return parquet_delta_binary_packed(lengths, layout.delta_block, layout.delta_miniblocks) + bytes;
}

// DELTA_BYTE_ARRAY: each value's prefix shared with the one before it, then the suffixes.
inline std::string parquet_delta_strings(const std::vector<std::string>& values,
                                         const ParquetLayout& layout) {
  std::vector<int64_t> prefixes;
  std::vector<std::string> suffixes;
  for (size_t k = 0; k < values.size(); k++) {
    size_t shared = 0;
    if (k > 0)
      while (shared < values[k].size() && shared < values[k - 1].size() &&
             values[k][shared] == values[k - 1][shared])
        shared++;
    prefixes.push_back(static_cast<int64_t>(shared));
    suffixes.push_back(values[k].substr(shared));
  }
  return parquet_delta_binary_packed(prefixes, layout.delta_block, layout.delta_miniblocks) +
         parquet_delta_length_strings(suffixes, layout);
}

// A page: its header, then its stored bytes.
inline std::string parquet_page(int type, size_t plain_size, const std::string& stored,
                                const std::function<void(CompactWriter&)>& body) {
  CompactWriter header;
  header.i32(1, type);
  header.i32(2, static_cast<int64_t>(plain_size));
  header.i32(3, static_cast<int64_t>(stored.size()));
  body(header);
  header.bytes += '\0';
  return header.bytes + stored;
}

struct ParquetChunk {
  int64_t data_offset = 0, dictionary_offset = -1, size = 0, values = 0;
};

// One entry of a leaf column: its levels, and its value where the definition level is the
// column's maximum (else null).
struct ParquetLeafEntry {
  uint32_t repetition = 0, definition = 0;
  const std::string* value = nullptr;
};

inline int parquet_level_width(uint32_t max_level) {
  int width = 0;
  while ((uint32_t{1} << width) <= max_level) width++;
  return width;
}

// A leaf column's chunk: its dictionary page (dictionary encoding), then a data page for each
// run of entries from one of `page_starts` to the next.
inline std::string parquet_leaf_chunk(const std::vector<ParquetLeafEntry>& entries,
                                      uint32_t max_repetition, uint32_t max_definition,
                                      const std::vector<size_t>& page_starts,
                                      const ParquetLayout& layout, int64_t offset,
                                      ParquetChunk& chunk) {
  std::string out;
  std::map<std::string, uint32_t> index;
  std::vector<std::string> dictionary_values;
  const bool dictionary = layout.encoding == "dictionary";
  if (dictionary) {
    for (const ParquetLeafEntry& entry : entries)
      if (entry.value &&
          index.emplace(*entry.value, static_cast<uint32_t>(dictionary_values.size())).second)
        dictionary_values.push_back(*entry.value);
    const std::string plain = parquet_plain_strings(dictionary_values);
    chunk.dictionary_offset = offset;
    out +=
        parquet_page(2, plain.size(), parquet_compress(layout.codec, plain), [&](CompactWriter& w) {
          w.begin_struct(7);
          w.i32(1, static_cast<int64_t>(dictionary_values.size()));
          w.i32(2, 0);
          w.end_struct();
        });
  }
  chunk.data_offset = offset + static_cast<int64_t>(out.size());
  for (size_t p = 0; p < page_starts.size(); p++) {
    const size_t begin = page_starts[p];
    const size_t end = p + 1 < page_starts.size() ? page_starts[p + 1] : entries.size();
    std::vector<uint32_t> repetitions, definitions, indices;
    std::vector<std::string> present;
    size_t nulls = 0, rows = 0;
    for (size_t k = begin; k < end; k++) {
      repetitions.push_back(entries[k].repetition);
      definitions.push_back(entries[k].definition);
      rows += entries[k].repetition == 0;
      if (!entries[k].value) {
        nulls++;
        continue;
      }
      present.push_back(*entries[k].value);
      if (dictionary) indices.push_back(index[*entries[k].value]);
    }
    std::string values;
    int encoding = 0;
    if (dictionary) {
      int width = 0;
      while ((size_t{1} << width) < dictionary_values.size()) width++;
      values = std::string(1, static_cast<char>(width)) + parquet_hybrid(indices, width);
      encoding = 8;
    } else if (layout.encoding == "delta_length") {
      values = parquet_delta_length_strings(present, layout);
      encoding = 6;
    } else if (layout.encoding == "delta") {
      values = parquet_delta_strings(present, layout);
      encoding = 7;
    } else if (layout.encoding == "int64") {
      for (const std::string& value : present) values += value;
    } else {
      values = parquet_plain_strings(present);
    }
    if (layout.declared_encoding >= 0) encoding = layout.declared_encoding;
    const std::string repetition_bytes =
        max_repetition > 0 ? parquet_hybrid(repetitions, parquet_level_width(max_repetition)) : "";
    const std::string definition_bytes =
        max_definition > 0 ? parquet_hybrid(definitions, parquet_level_width(max_definition)) : "";
    const int64_t count = static_cast<int64_t>(end - begin);
    if (layout.v2) {
      const std::string stored =
          repetition_bytes + definition_bytes + parquet_compress(layout.codec, values);
      const size_t plain_size = repetition_bytes.size() + definition_bytes.size() + values.size();
      out += parquet_page(3, plain_size, stored, [&](CompactWriter& w) {
        w.begin_struct(8);
        w.i32(1, count);
        w.i32(2, static_cast<int64_t>(nulls));
        w.i32(3, static_cast<int64_t>(rows));
        w.i32(4, encoding);
        w.i32(5, static_cast<int64_t>(definition_bytes.size()));
        w.i32(6, static_cast<int64_t>(repetition_bytes.size()));
        w.boolean(7, true);
        w.end_struct();
      });
    } else {
      // v1: each kind of levels behind its 4-byte length, then the values, compressed together.
      std::string plain;
      for (const std::string* levels : {&repetition_bytes, &definition_bytes}) {
        if (levels->empty()) continue;
        const uint32_t length = static_cast<uint32_t>(levels->size());
        plain.append(reinterpret_cast<const char*>(&length), 4);
        plain += *levels;
      }
      plain += values;
      out += parquet_page(0, plain.size(), parquet_compress(layout.codec, plain),
                          [&](CompactWriter& w) {
                            w.begin_struct(5);
                            w.i32(1, count);
                            w.i32(2, encoding);
                            w.i32(3, 3);
                            w.i32(4, 3);
                            w.end_struct();
                          });
    }
  }
  chunk.size = static_cast<int64_t>(out.size());
  chunk.values = static_cast<int64_t>(entries.size());
  return out;
}

// The string column's pages for rows [first, last).
inline std::string parquet_text_chunk(const std::vector<std::string>& all, size_t first,
                                      size_t last, const ParquetLayout& layout, int64_t offset,
                                      ParquetChunk& chunk) {
  const auto is_null = [&](size_t row) {
    return std::find(layout.nulls.begin(), layout.nulls.end(), row) != layout.nulls.end();
  };
  std::vector<ParquetLeafEntry> entries;
  std::vector<size_t> page_starts;
  for (size_t r = first; r < last; r++) {
    if ((r - first) % layout.rows_per_page == 0) page_starts.push_back(r - first);
    const bool null = layout.optional && is_null(r);
    entries.push_back({0, layout.optional && !null ? 1u : 0u, null ? nullptr : &all[r]});
  }
  return parquet_leaf_chunk(entries, 0, layout.optional ? 1 : 0, page_starts, layout, offset,
                            chunk);
}

// The "id" column's one page for rows [first, last): each row's index.
inline std::string parquet_id_chunk(size_t first, size_t last, int64_t offset,
                                    ParquetChunk& chunk) {
  std::string ids;
  for (size_t r = first; r < last; r++) {
    const int64_t id = static_cast<int64_t>(r);
    ids.append(reinterpret_cast<const char*>(&id), 8);
  }
  chunk.data_offset = offset;
  const std::string page = parquet_page(0, ids.size(), ids, [&](CompactWriter& w) {
    w.begin_struct(5);
    w.i32(1, static_cast<int64_t>(last - first));
    w.i32(2, 0);
    w.i32(3, 3);
    w.i32(4, 3);
    w.end_struct();
  });
  chunk.size = static_cast<int64_t>(page.size());
  chunk.values = static_cast<int64_t>(last - first);
  return page;
}

// A schema element as the footer lists it (-1: not written; the root has no type or
// repetition). logical_type: the id of LogicalType's member (3: LIST).
struct ParquetSchemaElement {
  std::string name;
  int type = -1, repetition = -1, children = 0, converted_type = -1, logical_type = -1;
};

struct ParquetColumnChunk {
  int type = 6;
  std::vector<std::string> path;
  int codec = 0;
  ParquetChunk chunk;
};

struct ParquetRowGroup {
  size_t rows = 0;
  std::vector<ParquetColumnChunk> columns;
};

inline void parquet_column_meta(CompactWriter& w, const ParquetColumnChunk& column) {
  w.list_struct_begin();
  w.i64(2, column.chunk.data_offset);
  w.begin_struct(3);
  w.i32(1, column.type);
  w.begin_list(2, 5, 2);
  w.list_i32(0);
  w.list_i32(3);
  w.begin_list(3, 8, column.path.size());
  for (const std::string& part : column.path) w.list_binary(part);
  w.i32(4, column.codec);
  w.i64(5, column.chunk.values);
  w.i64(6, column.chunk.size);
  w.i64(7, column.chunk.size);
  w.i64(9, column.chunk.data_offset);
  if (column.chunk.dictionary_offset >= 0) w.i64(11, column.chunk.dictionary_offset);
  w.end_struct();
  w.end_struct();
}

// The footer (schema, rows, row groups), its length and the closing magic.
inline std::string parquet_footer(const std::vector<ParquetSchemaElement>& schema, size_t rows,
                                  const std::vector<ParquetRowGroup>& groups) {
  CompactWriter footer;
  footer.i32(1, 1);
  footer.begin_list(2, 12, schema.size());
  for (const ParquetSchemaElement& element : schema) {
    footer.list_struct_begin();
    if (element.type >= 0) footer.i32(1, element.type);
    if (element.repetition >= 0) footer.i32(3, element.repetition);
    footer.binary(4, element.name);
    if (element.children > 0) footer.i32(5, element.children);
    if (element.converted_type >= 0) footer.i32(6, element.converted_type);
    if (element.logical_type >= 0) {
      footer.begin_struct(10);
      footer.begin_struct(static_cast<int16_t>(element.logical_type));
      footer.end_struct();
      footer.end_struct();
    }
    footer.end_struct();
  }
  footer.i64(3, static_cast<int64_t>(rows));
  footer.begin_list(4, 12, groups.size());
  for (const ParquetRowGroup& group : groups) {
    footer.list_struct_begin();
    footer.begin_list(1, 12, group.columns.size());
    int64_t bytes = 0;
    for (const ParquetColumnChunk& column : group.columns) {
      parquet_column_meta(footer, column);
      bytes += column.chunk.size;
    }
    footer.i64(2, bytes);
    footer.i64(3, static_cast<int64_t>(group.rows));
    footer.end_struct();
  }
  footer.end_struct();
  const uint32_t footer_size = static_cast<uint32_t>(footer.bytes.size());
  footer.bytes.append(reinterpret_cast<const char*>(&footer_size), 4);
  return footer.bytes + "PAR1";
}

// A file of string columns, each {name, values} (as many values each), beside an INT64 "id"
// column (the row's index); layout.column is not used, the rest applies to every string column.
inline std::string parquet_columns_file(
    const std::vector<std::pair<std::string, std::vector<std::string>>>& columns,
    const ParquetLayout& layout = {}) {
  std::string file = "PAR1";
  const int codec =
      layout.declared_codec >= 0 ? layout.declared_codec : parquet_codec_id(layout.codec);
  const size_t rows = columns.front().second.size();
  std::vector<ParquetRowGroup> groups;
  for (size_t first = 0; first < rows || groups.empty(); first += layout.rows_per_group) {
    const size_t last = std::min(rows, first + layout.rows_per_group);
    ParquetColumnChunk id{2, {"id"}, 0, {}};
    file += parquet_id_chunk(first, last, static_cast<int64_t>(file.size()), id.chunk);
    groups.push_back({last - first, {id}});
    for (const auto& [name, values] : columns) {
      ParquetColumnChunk text{6, {name}, codec, {}};
      ParquetLayout column_layout = layout;
      if (const auto nulls = layout.column_nulls.find(name); nulls != layout.column_nulls.end())
        column_layout.nulls = nulls->second;
      file += parquet_text_chunk(values, first, last, column_layout,
                                 static_cast<int64_t>(file.size()), text.chunk);
      groups.back().columns.push_back(text);
    }
    if (last == rows) break;
  }
  std::vector<ParquetSchemaElement> schema = {
      {"schema", -1, -1, 1 + static_cast<int>(columns.size())}, {"id", 2, 0}};
  for (const auto& column : columns) schema.push_back({column.first, 6, layout.optional ? 1 : 0});
  return file + parquet_footer(schema, rows, groups);
}

// A file of `values` as the string column layout.column, beside an INT64 "id" column.
inline std::string parquet_file(const std::vector<std::string>& values,
                                const ParquetLayout& layout = {}) {
  return parquet_columns_file({{layout.column, values}}, layout);
}

// A row of a list<struct<string...>> column: null, or its elements, each null or the values of
// the struct's string fields in order, each null or a string.
using ParquetValue = std::optional<std::string>;
using ParquetRecord = std::optional<std::vector<ParquetValue>>;
using ParquetList = std::optional<std::vector<ParquetRecord>>;

struct ParquetListLayout {
  std::string column = "messages";
  std::vector<std::string> fields{"content", "role"};  // the struct's strings, in order
  // three_level: optional group messages (LIST) { repeated group list { optional group element
  // { fields } } }, as pyarrow writes; bag: the same as Hive names it (bag, array_element);
  // two_level: optional group messages (LIST) { repeated group array { fields } }, as
  // parquet-mr's Avro writer did; tuple: the same with the group named messages_tuple (Thrift);
  // repeated: repeated group messages { fields } without a LIST annotation (protobuf).
  std::string form = "three_level";
  bool list_optional = true, element_optional = true, fields_optional = true;
  std::string number_field;  // else an INT64 member, second in the struct: the element's index
  // The values' encoding and codec (or declared codec), v1 or v2 pages, rows a row group (its
  // other members unused).
  ParquetLayout pages;
  size_t entries_per_page = 1000;  // level entries (elements, or a null or empty list) a page
  // Whether a page may end within a row's list, as v1 pages may; else only where a row starts.
  bool pages_split_rows = true;
  // Damage: the second field's column moves row 0's last element to the start of row 1, so that
  // the fields disagree on where rows end (row 0 needs two elements, row 1 one).
  bool shift_second_field = false;
};

// A file of `rows` as the list column `layout.column`, beside an INT64 "id" column.
inline std::string parquet_list_file(const std::vector<ParquetList>& rows,
                                     const ParquetListLayout& layout = {}) {
  const bool annotated = layout.form != "repeated";
  const bool element_group = layout.form == "three_level" || layout.form == "bag";
  const uint32_t list_level = annotated && layout.list_optional ? 1 : 0;
  const uint32_t elements_level = list_level + 1;
  const uint32_t element_level =
      elements_level + (element_group && layout.element_optional ? 1 : 0);
  const uint32_t max_definition = element_level + (layout.fields_optional ? 1 : 0);

  std::vector<std::string> members = layout.fields;
  if (!layout.number_field.empty())
    members.insert(members.begin() + (members.empty() ? 0 : 1), layout.number_field);
  std::vector<ParquetSchemaElement> schema{{"schema", -1, -1, 2}, {"id", 2, 0}};
  std::vector<std::string> path{layout.column};
  const int member_count = static_cast<int>(members.size());
  if (!annotated) {
    schema.push_back({layout.column, -1, 2, member_count});
  } else {
    schema.push_back({layout.column, -1, layout.list_optional ? 1 : 0, 1, 3, 3});
    const std::string middle = layout.form == "three_level" ? "list"
                               : layout.form == "bag"       ? "bag"
                               : layout.form == "tuple"     ? layout.column + "_tuple"
                                                            : "array";
    schema.push_back({middle, -1, 2, element_group ? 1 : member_count});
    path.push_back(middle);
    if (element_group) {
      const std::string element = layout.form == "bag" ? "array_element" : "element";
      schema.push_back({element, -1, layout.element_optional ? 1 : 0, member_count});
      path.push_back(element);
    }
  }
  for (const std::string& member : members) {
    const bool number = member == layout.number_field;
    schema.push_back({member, number ? 2 : 6, layout.fields_optional ? 1 : 0, 0, number ? -1 : 0});
  }

  std::vector<ParquetList> shifted;
  if (layout.shift_second_field) {
    shifted = rows;
    shifted[1]->insert(shifted[1]->begin(), shifted[0]->back());
    shifted[0]->pop_back();
  }
  std::deque<std::string> numbers;  // the number field's values, where entries point
  // The member's entries for rows [first, last): one for a null or empty list, else one an
  // element.
  const auto shred = [&](const std::string& member, size_t first, size_t last) {
    const auto field = std::find(layout.fields.begin(), layout.fields.end(), member);
    const std::vector<ParquetList>& lists =
        layout.shift_second_field && member == layout.fields[1] ? shifted : rows;
    std::vector<ParquetLeafEntry> entries;
    for (size_t r = first; r < last; r++) {
      if (!lists[r]) {
        if (list_level == 0) throw std::runtime_error("a null list where the list is required");
        entries.push_back({0, list_level - 1, nullptr});
      } else if (lists[r]->empty()) {
        entries.push_back({0, list_level, nullptr});
      }
      for (size_t k = 0; lists[r] && k < lists[r]->size(); k++) {
        const uint32_t repetition = k == 0 ? 0 : 1;
        const ParquetRecord& record = (*lists[r])[k];
        if (!record) {
          if (element_level == elements_level)
            throw std::runtime_error("a null element where elements are required");
          entries.push_back({repetition, elements_level, nullptr});
        } else if (field == layout.fields.end()) {
          const int64_t index = static_cast<int64_t>(k);
          numbers.emplace_back(reinterpret_cast<const char*>(&index), 8);
          entries.push_back({repetition, max_definition, &numbers.back()});
        } else {
          const ParquetValue& value = (*record)[static_cast<size_t>(field - layout.fields.begin())];
          if (!value && max_definition == element_level)
            throw std::runtime_error("a null value where values are required");
          entries.push_back(value ? ParquetLeafEntry{repetition, max_definition, &*value}
                                  : ParquetLeafEntry{repetition, element_level, nullptr});
        }
      }
    }
    return entries;
  };
  const auto page_starts = [&](const std::vector<ParquetLeafEntry>& entries) {
    std::vector<size_t> starts;
    for (size_t k = 0; k < entries.size(); k++)
      if (starts.empty() || (k - starts.back() >= layout.entries_per_page &&
                             (layout.pages_split_rows || entries[k].repetition == 0)))
        starts.push_back(k);
    return starts;
  };

  std::string file = "PAR1";
  const size_t per_group = layout.pages.rows_per_group;
  std::vector<ParquetRowGroup> groups;
  for (size_t first = 0; first < rows.size() || groups.empty(); first += per_group) {
    const size_t last = std::min(rows.size(), first + per_group);
    ParquetRowGroup group{last - first, {{2, {"id"}, 0, {}}}};
    file +=
        parquet_id_chunk(first, last, static_cast<int64_t>(file.size()), group.columns[0].chunk);
    for (const std::string& member : members) {
      ParquetLayout pages = layout.pages;
      const bool number = member == layout.number_field;
      if (number) pages.encoding = "int64";
      std::vector<std::string> member_path = path;
      member_path.push_back(member);
      const int codec =
          pages.declared_codec >= 0 ? pages.declared_codec : parquet_codec_id(pages.codec);
      ParquetColumnChunk column{number ? 2 : 6, member_path, codec, {}};
      const std::vector<ParquetLeafEntry> entries = shred(member, first, last);
      file += parquet_leaf_chunk(entries, 1, max_definition, page_starts(entries), pages,
                                 static_cast<int64_t>(file.size()), column.chunk);
      group.columns.push_back(column);
    }
    groups.push_back(group);
    if (last == rows.size()) break;
  }
  return file + parquet_footer(schema, rows.size(), groups);
}

}  // namespace sy::test
