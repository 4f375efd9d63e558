// Parquet's file format, as far as our reader needs it: Thrift's compact protocol, the footer's
// metadata (schema, row groups, column chunks), the page header, and the names of codecs and
// encodings for messages. Internal to data/: data/parquet_pages.cpp reads a file's footer and
// page headers with it, and data/parquet_input.cpp walks the schema's structs. Apart from them
// because it is only what parquet.thrift lays out, with no decoding of values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy::parquet {

// Parquet's enums (parquet.thrift), the values this reader meets.
enum Type { kByteArray = 6 };
enum Repetition { kRequired = 0, kOptional = 1, kRepeated = 2 };
enum ConvertedType { kMap = 1, kMapKeyValue = 2, kList = 3 };
enum LogicalType { kLogicalMap = 2, kLogicalList = 3 };
enum Codec {
  kUncompressed = 0,
  kSnappy = 1,
  kGzip = 2,
  kBrotli = 4,
  kLz4 = 5,
  kZstd = 6,
  kLz4Raw = 7
};
enum PageType { kDataPage = 0, kDictionaryPage = 2, kDataPageV2 = 3 };
enum Encoding {
  kPlain = 0,
  kPlainDictionary = 2,
  kRle = 3,
  kDeltaLengthByteArray = 6,
  kDeltaByteArray = 7,
  kRleDictionary = 8
};

// Names for messages ("snappy", "RLE_DICTIONARY"); "unknown" for a value not listed.
const char* codec_name(int64_t codec);
const char* encoding_name(int64_t encoding);

// Thrift's compact protocol, which Parquet's footer and page headers are written in: a struct is
// fields (a header byte of id delta and type, then the value) up to a stop byte.
class CompactReader {
 public:
  CompactReader(const uint8_t* begin, const uint8_t* end, const std::string& what)
      : at_(begin), end_(end), what_(what) {}
  const uint8_t* position() const { return at_; }

  // The next field of the struct being read: false at its end. Field ids and types as Thrift's.
  bool next_field(int16_t& last_id, int16_t& id, int& type) {
    const uint8_t header = byte();
    if (header == 0) return false;
    type = header & 0x0f;
    const int delta = header >> 4;
    id = delta ? static_cast<int16_t>(last_id + delta) : static_cast<int16_t>(zigzag());
    last_id = id;
    return true;
  }
  int64_t integer() { return zigzag(); }
  // An unsigned ULEB128 number, as Thrift's lengths and Parquet's DELTA_BINARY_PACKED write them.
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t next = byte();
      value |= static_cast<uint64_t>(next & 0x7f) << shift;
      if (!(next & 0x80)) return value;
    }
    fail("a number longer than 64 bits");
  }
  // The next `bytes` bytes, passed over.
  const uint8_t* take(size_t bytes) {
    if (bytes > static_cast<size_t>(end_ - at_)) fail("ends early");
    const uint8_t* taken = at_;
    at_ += bytes;
    return taken;
  }
  std::string binary() {
    const uint64_t size = varint();
    if (size > static_cast<uint64_t>(end_ - at_)) fail("a string runs past its end");
    std::string value(reinterpret_cast<const char*>(at_), size);
    at_ += size;
    return value;
  }
  // A list's element count and element type.
  void list_header(uint64_t& count, int& type) {
    const uint8_t header = byte();
    type = header & 0x0f;
    count = header >> 4;
    if (count == 15) count = varint();
    if (count > static_cast<uint64_t>(end_ - at_)) fail("a list longer than its bytes");
  }
  void skip(int type, int depth = 0) {
    if (depth > 32) fail("structures nested too deeply");
    switch (type) {
      case 1:
      case 2:
        return;  // booleans: the value is the type
      case 3:
        byte();
        return;
      case 4:
      case 5:
      case 6:
        varint();
        return;
      case 7:
        take(8);
        return;
      case 8:
        binary();
        return;
      case 9:
      case 10: {
        uint64_t count;
        int element;
        list_header(count, element);
        for (uint64_t k = 0; k < count; k++) skip_element(element, depth + 1);
        return;
      }
      case 11: {
        const uint64_t count = varint();
        if (count == 0) return;
        if (count > static_cast<uint64_t>(end_ - at_)) fail("a map longer than its bytes");
        const uint8_t types = byte();
        for (uint64_t k = 0; k < count; k++) {
          skip_element(types >> 4, depth + 1);
          skip_element(types & 0x0f, depth + 1);
        }
        return;
      }
      case 12: {
        int16_t last = 0, id;
        int field;
        while (next_field(last, id, field)) skip(field, depth + 1);
        return;
      }
      default:
        fail("an unknown field type " + std::to_string(type));
    }
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(what_ + ": " + why + " (not a Parquet file, or a damaged one)");
  }

 private:
  // An element of a list or map: a boolean there is a byte, so every element takes at least
  // one byte and skipping is linear in the input, however the lists nest.
  void skip_element(int type, int depth) {
    if (type == 1 || type == 2) byte();
    else skip(type, depth);
  }
  uint8_t byte() {
    if (at_ == end_) fail("ends early");
    return *at_++;
  }
  int64_t zigzag() {
    const uint64_t value = varint();
    return static_cast<int64_t>(value >> 1) ^ -static_cast<int64_t>(value & 1);
  }

  const uint8_t* at_;
  const uint8_t* end_;
  const std::string& what_;
};

struct SchemaElement {
  int64_t type = -1, repetition = kRequired, children = 0;
  int64_t converted_type = -1;  // the older annotation: kList, kMap, kMapKeyValue among others
  int64_t logical_type = -1;    // the newer one: the id of LogicalType's member (kLogicalList...)
  std::string name;
};

struct ColumnChunk {
  int64_t type = -1, codec = 0, values = 0, data_offset = -1, dictionary_offset = -1,
          compressed_size = 0;
  std::vector<std::string> path;
  bool external = false;  // in another file (file_path set)
};

struct RowGroup {
  int64_t rows = 0;
  std::vector<ColumnChunk> columns;
};

struct FileMetaData {
  std::vector<SchemaElement> schema;
  int64_t rows = 0;
  std::vector<RowGroup> row_groups;
};

// The footer (a FileMetaData struct); the fields this reader does not use are skipped.
FileMetaData read_file_metadata(CompactReader& in);

struct PageHeader {
  int64_t type = -1, uncompressed_size = -1, compressed_size = -1, values = 0, encoding = -1,
          definition_encoding = kRle, repetition_encoding = kRle, definition_bytes = 0,
          repetition_bytes = 0;
  bool values_compressed = true;  // data page v2's is_compressed
};

// A page's header, read from where the page starts; in.position() is then where its bytes start.
PageHeader read_page_header(CompactReader& in);

}  // namespace sy::parquet
