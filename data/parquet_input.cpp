#include "data/parquet_input.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <vector>

#include "data/compressed_input.h"

#ifdef SY_HAVE_BROTLI
#include <brotli/decode.h>
#endif
#ifdef SY_HAVE_LZ4
#include <lz4.h>
#endif
#ifdef SY_HAVE_SNAPPY
#include <snappy-c.h>
#endif
#ifdef SY_HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef SY_HAVE_ZSTD
#include <zstd.h>
#endif

namespace sy {
namespace {

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

const char* codec_name(int64_t codec) {
  switch (codec) {
    case 0:
      return "uncompressed";
    case 1:
      return "snappy";
    case 2:
      return "gzip";
    case 3:
      return "lzo";
    case 4:
      return "brotli";
    case 5:
      return "lz4";
    case 6:
      return "zstd";
    case 7:
      return "lz4_raw";
    default:
      return "unknown";
  }
}

const char* encoding_name(int64_t encoding) {
  switch (encoding) {
    case 0:
      return "PLAIN";
    case 2:
      return "PLAIN_DICTIONARY";
    case 3:
      return "RLE";
    case 4:
      return "BIT_PACKED";
    case 5:
      return "DELTA_BINARY_PACKED";
    case 6:
      return "DELTA_LENGTH_BYTE_ARRAY";
    case 7:
      return "DELTA_BYTE_ARRAY";
    case 8:
      return "RLE_DICTIONARY";
    case 9:
      return "BYTE_STREAM_SPLIT";
    default:
      return "unknown";
  }
}

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

template <class Read>
void read_list(CompactReader& in, Read read_element) {
  uint64_t count;
  int type;
  in.list_header(count, type);
  for (uint64_t k = 0; k < count; k++) read_element(type);
}

// LogicalType is a union: the id of its one member says which annotation it is.
int64_t read_logical_type(CompactReader& in) {
  int64_t member = -1;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (member < 0) member = id;
    in.skip(type);
  }
  return member;
}

SchemaElement read_schema_element(CompactReader& in) {
  SchemaElement element;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) element.type = in.integer();
    else if (id == 3 && type == 5) element.repetition = in.integer();
    else if (id == 4 && type == 8) element.name = in.binary();
    else if (id == 5 && type == 5) element.children = in.integer();
    else if (id == 6 && type == 5) element.converted_type = in.integer();
    else if (id == 10 && type == 12) element.logical_type = read_logical_type(in);
    else in.skip(type);
  }
  return element;
}

void read_column_meta(CompactReader& in, ColumnChunk& chunk) {
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) chunk.type = in.integer();
    else if (id == 3 && type == 9)
      read_list(in, [&](int element) {
        if (element != 8) in.fail("a column path that is not strings");
        chunk.path.push_back(in.binary());
      });
    else if (id == 4 && type == 5) chunk.codec = in.integer();
    else if (id == 5 && type == 6) chunk.values = in.integer();
    else if (id == 7 && type == 6) chunk.compressed_size = in.integer();
    else if (id == 9 && type == 6) chunk.data_offset = in.integer();
    else if (id == 11 && type == 6) chunk.dictionary_offset = in.integer();
    else in.skip(type);
  }
}

ColumnChunk read_column_chunk(CompactReader& in) {
  ColumnChunk chunk;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 8) {
      in.binary();
      chunk.external = true;
    } else if (id == 3 && type == 12) {
      read_column_meta(in, chunk);
    } else {
      in.skip(type);
    }
  }
  return chunk;
}

RowGroup read_row_group(CompactReader& in) {
  RowGroup group;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a column chunk that is not a struct");
        group.columns.push_back(read_column_chunk(in));
      });
    else if (id == 3 && type == 6) group.rows = in.integer();
    else in.skip(type);
  }
  return group;
}

FileMetaData read_file_metadata(CompactReader& in) {
  FileMetaData meta;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 2 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a schema element that is not a struct");
        meta.schema.push_back(read_schema_element(in));
      });
    else if (id == 3 && type == 6) meta.rows = in.integer();
    else if (id == 4 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a row group that is not a struct");
        meta.row_groups.push_back(read_row_group(in));
      });
    else in.skip(type);
  }
  return meta;
}

struct PageHeader {
  int64_t type = -1, uncompressed_size = -1, compressed_size = -1, values = 0, encoding = -1,
          definition_encoding = kRle, repetition_encoding = kRle, definition_bytes = 0,
          repetition_bytes = 0;
  bool values_compressed = true;  // data page v2's is_compressed
};

void read_page_struct(CompactReader& in, PageHeader& page, bool v2) {
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) page.values = in.integer();
    else if (!v2 && id == 2 && type == 5) page.encoding = in.integer();
    else if (!v2 && id == 3 && type == 5) page.definition_encoding = in.integer();
    else if (!v2 && id == 4 && type == 5) page.repetition_encoding = in.integer();
    else if (v2 && id == 4 && type == 5) page.encoding = in.integer();
    else if (v2 && id == 5 && type == 5) page.definition_bytes = in.integer();
    else if (v2 && id == 6 && type == 5) page.repetition_bytes = in.integer();
    else if (v2 && id == 7 && (type == 1 || type == 2)) page.values_compressed = type == 1;
    else in.skip(type);
  }
}

PageHeader read_page_header(CompactReader& in) {
  PageHeader page;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) page.type = in.integer();
    else if (id == 2 && type == 5) page.uncompressed_size = in.integer();
    else if (id == 3 && type == 5) page.compressed_size = in.integer();
    else if ((id == 5 || id == 7) && type == 12) read_page_struct(in, page, false);
    else if (id == 8 && type == 12) read_page_struct(in, page, true);
    else in.skip(type);
  }
  return page;
}

// Parquet's RLE / bit-packed hybrid: definition levels and dictionary indices.
class HybridDecoder {
 public:
  HybridDecoder(const uint8_t* begin, const uint8_t* end, int bit_width, const std::string& what)
      : at_(begin), end_(end), bit_width_(bit_width), what_(what) {
    if (bit_width < 0 || bit_width > 32) fail("a bit width of " + std::to_string(bit_width));
  }
  uint32_t next() {
    if (run_left_ == 0) start_run();
    run_left_--;
    if (!packed_) return run_value_;
    uint32_t value = 0;
    for (int bit = 0; bit < bit_width_; bit++, packed_bit_++) {
      const size_t byte = packed_bit_ / 8;
      if (byte >= packed_bytes_) fail("bit-packed values run past their bytes");
      value |= static_cast<uint32_t>((packed_[byte] >> (packed_bit_ % 8)) & 1) << bit;
    }
    return value;
  }

 private:
  void start_run() {
    uint64_t header = 0;
    for (int shift = 0;; shift += 7) {
      if (at_ == end_ || shift > 35) fail("ends early");
      const uint8_t next = *at_++;
      header |= static_cast<uint64_t>(next & 0x7f) << shift;
      if (!(next & 0x80)) break;
    }
    if (header & 1) {  // bit-packed groups of 8 values
      const uint64_t groups = header >> 1;
      packed_bytes_ = static_cast<size_t>(std::min<uint64_t>(
          groups * static_cast<uint64_t>(bit_width_), static_cast<uint64_t>(end_ - at_)));
      packed_ = at_;
      packed_bit_ = 0;
      at_ += packed_bytes_;
      run_left_ = groups * 8;
    } else {  // one value repeated
      packed_ = nullptr;
      run_left_ = header >> 1;
      const int bytes = (bit_width_ + 7) / 8;
      if (bytes > end_ - at_) fail("ends early");
      run_value_ = 0;
      for (int k = 0; k < bytes; k++) run_value_ |= static_cast<uint32_t>(*at_++) << (8 * k);
    }
    if (run_left_ == 0) fail("an empty run");
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(what_ + ": " + why + " in RLE/bit-packed data (a damaged page)");
  }

  const uint8_t* at_;
  const uint8_t* end_;
  int bit_width_;
  const std::string& what_;
  uint64_t run_left_ = 0;
  uint32_t run_value_ = 0;
  const uint8_t* packed_ = nullptr;
  size_t packed_bytes_ = 0, packed_bit_ = 0;
};

// Parquet's DELTA_BINARY_PACKED integers: the lengths in DELTA_LENGTH_BYTE_ARRAY and the prefix
// lengths in DELTA_BYTE_ARRAY. A header (block size, miniblocks a block, the value count, the
// first value), then blocks: the block's least delta, one bit width a miniblock, and each
// miniblock's deltas less that least, bit-packed. Values past the count pad the last miniblock
// that holds any; later miniblocks are not stored. Returns where the encoded integers end.
const uint8_t* read_delta_binary_packed(const uint8_t* at, const uint8_t* end, size_t count,
                                        std::vector<int64_t>& values, const std::string& what) {
  CompactReader in(at, end, what);
  const auto fail = [&](const std::string& why) {
    throw std::runtime_error(what + ": " + why + " in DELTA_BINARY_PACKED data (a damaged page)");
  };
  const uint64_t block_size = in.varint(), miniblocks = in.varint(), total = in.varint();
  // Unsigned: the deltas wrap as the writer's did.
  uint64_t value = static_cast<uint64_t>(in.integer());
  if (block_size == 0 || block_size % 128 != 0 || block_size > (uint64_t{1} << 30) ||
      miniblocks == 0 || block_size % miniblocks != 0 || block_size / miniblocks % 32 != 0)
    fail("blocks of " + std::to_string(block_size) + " values in " + std::to_string(miniblocks) +
         " miniblocks");
  if (total != count)
    fail(std::to_string(total) + " values where the page holds " + std::to_string(count));
  values.clear();
  if (total == 0) return in.position();
  values.reserve(count);
  values.push_back(static_cast<int64_t>(value));
  const uint64_t per_miniblock = block_size / miniblocks;
  while (values.size() < count) {
    const uint64_t least = static_cast<uint64_t>(in.integer());
    const uint8_t* widths = in.take(miniblocks);
    for (uint64_t m = 0; m < miniblocks && values.size() < count; m++) {
      const int width = widths[m];
      if (width > 64) fail("a bit width of " + std::to_string(width));
      const uint8_t* packed = in.take(per_miniblock * static_cast<uint64_t>(width) / 8);
      const uint64_t take = std::min<uint64_t>(per_miniblock, count - values.size());
      for (uint64_t k = 0, bit = 0; k < take; k++) {
        uint64_t delta = 0;
        for (int b = 0; b < width; b++, bit++)
          delta |= static_cast<uint64_t>(packed[bit / 8] >> (bit % 8) & 1) << b;
        value += least + delta;
        values.push_back(static_cast<int64_t>(value));
      }
    }
  }
  return in.position();
}

// DELTA_LENGTH_BYTE_ARRAY: the lengths, DELTA_BINARY_PACKED, then the strings' bytes end to end.
// Returns where the bytes end.
const uint8_t* delta_length_strings(const uint8_t* at, const uint8_t* end, size_t count,
                                    std::vector<std::string>& out, const std::string& what) {
  std::vector<int64_t> lengths;
  at = read_delta_binary_packed(at, end, count, lengths, what);
  for (const int64_t length : lengths) {
    if (length < 0 || length > end - at)
      throw std::runtime_error(what + ": a string of " + std::to_string(length) +
                               " bytes runs past its page (DELTA_LENGTH_BYTE_ARRAY)");
    out.emplace_back(reinterpret_cast<const char*>(at), static_cast<size_t>(length));
    at += length;
  }
  return at;
}

// DELTA_BYTE_ARRAY: each string is a prefix of the one before it (in this page) and a suffix.
// The prefix lengths are DELTA_BINARY_PACKED, the suffixes DELTA_LENGTH_BYTE_ARRAY.
void delta_strings(const uint8_t* at, const uint8_t* end, size_t count,
                   std::vector<std::string>& out, const std::string& what) {
  const auto fail = [&](const std::string& why) {
    throw std::runtime_error(what + ": " + why + " (DELTA_BYTE_ARRAY)");
  };
  std::vector<int64_t> prefixes;
  at = read_delta_binary_packed(at, end, count, prefixes, what);
  std::vector<std::string> suffixes;
  delta_length_strings(at, end, count, suffixes, what);
  // Shared prefixes let a small page stand for many bytes: a damaged one could ask for terabytes.
  constexpr uint64_t kMostPageBytes = uint64_t{1} << 30;
  uint64_t page_bytes = 0;
  for (size_t k = 0; k < count; k++) {
    const std::string* previous = k > 0 ? &out[out.size() - 1] : nullptr;
    const uint64_t prefix = static_cast<uint64_t>(prefixes[k]);
    if (prefixes[k] < 0 || prefix > (previous ? previous->size() : 0))
      fail("a prefix of " + std::to_string(prefixes[k]) + " bytes of a string of " +
           std::to_string(previous ? previous->size() : 0));
    page_bytes += prefix + suffixes[k].size();
    if (page_bytes > kMostPageBytes) fail("a page whose strings take more than 1 GiB");
    std::string value = previous ? previous->substr(0, prefix) : std::string();
    value += suffixes[k];
    out.push_back(std::move(value));
  }
}

// Why pages in `codec` cannot be read here; a codec this build lacks names its package.
std::string unreadable_codec(int64_t codec) {
  const std::string name = codec_name(codec);
  const char* package = name == "snappy"                     ? "libsnappy-dev"
                        : name == "gzip"                     ? "zlib1g-dev"
                        : name == "zstd"                     ? "libzstd-dev"
                        : name == "lz4" || name == "lz4_raw" ? "liblz4-dev"
                        : name == "brotli"                   ? "libbrotli-dev"
                                                             : nullptr;
  if (package)
    return "compression " + name + " is not read by this build (apt-get install " + package + ")";
  return "compression " + name +
         " is not read (uncompressed, snappy, gzip, zstd, lz4, lz4_raw and brotli are)";
}

// The most bytes `size` stored bytes can hold once decompressed: checked before the page's
// claimed size is allocated, so that a damaged header cannot ask for gigabytes.
uint64_t decompressed_bound(int64_t codec, const uint8_t* data, size_t size) {
  switch (codec) {
#ifdef SY_HAVE_SNAPPY
    case kSnappy: {
      size_t length = 0;
      return snappy_uncompressed_length(reinterpret_cast<const char*>(data), size, &length) ==
                     SNAPPY_OK
                 ? length
                 : 0;
    }
#endif
#ifdef SY_HAVE_ZSTD
    case kZstd: {  // the frame's own size; a frame without one (streamed), up to 1 GiB
      const unsigned long long content = ZSTD_getFrameContentSize(data, size);
      if (content == ZSTD_CONTENTSIZE_ERROR) return 0;
      return content == ZSTD_CONTENTSIZE_UNKNOWN ? uint64_t{1} << 30 : content;
    }
#endif
    case kGzip:
      return 1032 * static_cast<uint64_t>(size) + 1024;  // deflate's largest ratio
    case kLz4:
    case kLz4Raw:
      return 255 * static_cast<uint64_t>(size) + 1024;  // an LZ4 block's largest ratio
    case kBrotli:
      return uint64_t{1} << 30;  // no bound from the stream's head: up to 1 GiB
    default:
      return size;
  }
}

#ifdef SY_HAVE_LZ4
// One LZ4 block of exactly `size` bytes that decompresses to exactly `uncompressed`.
bool lz4_block(const uint8_t* data, size_t size, char* out, size_t uncompressed) {
  if (size > INT32_MAX || uncompressed > INT32_MAX) return false;
  return LZ4_decompress_safe(reinterpret_cast<const char*>(data), out, static_cast<int>(size),
                             static_cast<int>(uncompressed)) == static_cast<int>(uncompressed);
}

// Hadoop's LZ4 frames, one after another: a big-endian 32-bit decompressed size, a compressed
// size, then that LZ4 block.
bool lz4_hadoop_frames(const uint8_t* data, size_t size, char* out, size_t uncompressed) {
  const auto big_endian = [](const uint8_t* at) {
    return static_cast<size_t>(at[0]) << 24 | static_cast<size_t>(at[1]) << 16 |
           static_cast<size_t>(at[2]) << 8 | at[3];
  };
  size_t read = 0, written = 0;
  while (read < size) {
    if (size - read < 8) return false;
    const size_t frame_plain = big_endian(data + read), frame_stored = big_endian(data + read + 4);
    read += 8;
    if (frame_stored > size - read || frame_plain > uncompressed - written ||
        !lz4_block(data + read, frame_stored, out + written, frame_plain))
      return false;
    read += frame_stored;
    written += frame_plain;
  }
  return written == uncompressed;
}
#endif

std::string decompress(int64_t codec, const uint8_t* data, size_t size, size_t uncompressed,
                       const std::string& what) {
  const auto damaged = [&](const std::string& why) {
    return std::runtime_error(what + ": " + codec_name(codec) + " page does not decompress (" +
                              why + ")");
  };
  if (parquet_codec_available(codec_name(codec)) &&
      uncompressed > decompressed_bound(codec, data, size))
    throw damaged("its header claims " + std::to_string(uncompressed) + " bytes, more than " +
                  std::to_string(size) + " stored bytes hold");
  std::string out(uncompressed, '\0');
  switch (codec) {
    case kUncompressed:
      if (size != uncompressed) throw damaged("its sizes differ");
      std::memcpy(out.data(), data, size);
      return out;
#ifdef SY_HAVE_SNAPPY
    case kSnappy: {
      size_t length = uncompressed;
      if (snappy_uncompress(reinterpret_cast<const char*>(data), size, out.data(), &length) !=
              SNAPPY_OK ||
          length != uncompressed)
        throw damaged("snappy refused it");
      return out;
    }
#endif
#ifdef SY_HAVE_ZLIB
    case kGzip: {
      // gzip members (several may follow each other) or a zlib stream: zlib detects which.
      size_t written = 0, read = 0;
      while (read < size) {
        z_stream stream{};
        if (inflateInit2(&stream, 32 + MAX_WBITS) != Z_OK) throw damaged("inflateInit2");
        stream.next_in = const_cast<Bytef*>(data + read);
        stream.avail_in = static_cast<uInt>(size - read);
        stream.next_out = reinterpret_cast<Bytef*>(out.data() + written);
        stream.avail_out = static_cast<uInt>(uncompressed - written);
        const int status = inflate(&stream, Z_FINISH);
        read += stream.total_in;
        written += stream.total_out;
        inflateEnd(&stream);
        if (status != Z_STREAM_END) throw damaged("inflate status " + std::to_string(status));
      }
      if (written != uncompressed) throw damaged("its size differs from the header's");
      return out;
    }
#endif
#ifdef SY_HAVE_ZSTD
    case kZstd: {
      const size_t length = ZSTD_decompress(out.data(), uncompressed, data, size);
      if (ZSTD_isError(length) || length != uncompressed)
        throw damaged(ZSTD_isError(length) ? ZSTD_getErrorName(length) : "a size mismatch");
      return out;
    }
#endif
#ifdef SY_HAVE_LZ4
    case kLz4Raw:
      if (!lz4_block(data, size, out.data(), uncompressed)) throw damaged("LZ4 refused it");
      return out;
    case kLz4:
      // Parquet's first LZ4: Hadoop's frames as parquet-mr and Arrow write them, else (old
      // Arrow) one bare block, as Arrow reads it.
      if (!lz4_hadoop_frames(data, size, out.data(), uncompressed) &&
          !lz4_block(data, size, out.data(), uncompressed))
        throw damaged("neither Hadoop's LZ4 frames nor an LZ4 block");
      return out;
#endif
#ifdef SY_HAVE_BROTLI
    case kBrotli: {
      size_t length = uncompressed;
      if (BrotliDecoderDecompress(size, data, &length, reinterpret_cast<uint8_t*>(out.data())) !=
              BROTLI_DECODER_RESULT_SUCCESS ||
          length != uncompressed)
        throw damaged("brotli refused it");
      return out;
    }
#endif
    default:
      throw std::runtime_error(what + ": " + unreadable_codec(codec));
  }
}

}  // namespace

bool parquet_codec_available(const std::string& codec) {
  if (codec == "gzip" || codec == "zstd") return input_compression_available(codec);
#ifdef SY_HAVE_SNAPPY
  if (codec == "snappy") return true;
#endif
#ifdef SY_HAVE_LZ4
  if (codec == "lz4" || codec == "lz4_raw") return true;
#endif
#ifdef SY_HAVE_BROTLI
  if (codec == "brotli") return true;
#endif
  return codec == "uncompressed";
}

namespace {

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

// The schema element after `element`'s subtree: the schema lists each element's children after
// it, depth first.
size_t subtree_end(const ParquetFile& file, size_t element) {
  const std::vector<SchemaElement>& schema = file.meta.schema;
  size_t k = element;
  for (int64_t pending = 1; pending > 0; k++) {
    if (k >= schema.size() || schema[k].children < 0 ||
        schema[k].children > static_cast<int64_t>(schema.size()))
      file.fail("a damaged schema");
    pending += schema[k].children - 1;
  }
  return k;
}

std::vector<size_t> schema_children(const ParquetFile& file, size_t element) {
  std::vector<size_t> children;
  size_t k = element + 1;
  for (int64_t child = 0; child < file.meta.schema[element].children; child++) {
    if (k >= file.meta.schema.size()) file.fail("a damaged schema");
    children.push_back(k);
    k = subtree_end(file, k);
  }
  return children;
}

// A top-level column: its schema element, and the index among leaf columns of its first leaf
// (its subtree's leaves follow in schema order).
struct TopLevelColumn {
  size_t element = 0, first_leaf = 0;
};

// The top-level column `column`; throws listing the columns where there is none.
TopLevelColumn find_top_level_column(const ParquetFile& file, const std::string& column) {
  const std::vector<SchemaElement>& schema = file.meta.schema;
  if (schema.empty()) file.fail("no schema");
  std::vector<std::string> top_level;
  std::optional<TopLevelColumn> found;
  size_t k = 1, leaf = 0;
  for (int64_t child = 0; child < schema[0].children; child++) {
    if (k >= schema.size()) file.fail("a schema shorter than its root says");
    top_level.push_back(schema[k].name);
    if (schema[k].name == column && !found) found = TopLevelColumn{k, leaf};
    for (const size_t end = subtree_end(file, k); k < end; k++) leaf += schema[k].children == 0;
  }
  if (found) return *found;
  std::string names;
  for (const std::string& name : top_level) names += (names.empty() ? "" : ", ") + name;
  file.fail("no column \"" + column + "\" (columns: " + names + ")");
}

// The index among leaf columns of `leaf`, a leaf under `column`.
size_t leaf_index(const ParquetFile& file, const TopLevelColumn& column, size_t leaf) {
  size_t index = column.first_leaf;
  for (size_t k = column.element; k < leaf; k++) index += file.meta.schema[k].children == 0;
  return index;
}

// Row group `group`'s chunk of leaf column `leaf`, whose path in the schema is `path`.
const ColumnChunk& leaf_chunk(const ParquetFile& file, size_t group, size_t leaf,
                              const std::vector<std::string>& path) {
  const RowGroup& row_group = file.meta.row_groups[group];
  std::string name;
  for (const std::string& part : path) name += (name.empty() ? "" : ".") + part;
  if (leaf >= row_group.columns.size())
    file.fail("row group " + std::to_string(group) + " lacks the column");
  const ColumnChunk& chunk = row_group.columns[leaf];
  if (chunk.external) file.fail("column \"" + name + "\" is in another file (file_path)");
  if (chunk.path != path)
    file.fail("row group " + std::to_string(group) + ": the column chunk is not \"" + name + "\"");
  return chunk;
}

void check_codec(const ParquetFile& file, const ColumnChunk& chunk) {
  if (!parquet_codec_available(codec_name(chunk.codec))) file.fail(unreadable_codec(chunk.codec));
}

void plain_strings(const ParquetFile& file, const uint8_t* at, const uint8_t* end, size_t count,
                   std::vector<std::string>& out) {
  for (size_t k = 0; k < count; k++) {
    if (end - at < 4) file.fail("a string's length runs past its page");
    uint32_t length;
    std::memcpy(&length, at, 4);  // little-endian, as x86 and ARM are
    at += 4;
    if (length > static_cast<size_t>(end - at)) file.fail("a string runs past its page");
    out.emplace_back(reinterpret_cast<const char*>(at), length);
    at += length;
  }
}

// The bits a level up to `max` takes in the RLE/bit-packed hybrid.
int level_bit_width(int max) {
  int width = 0;
  while ((1 << width) <= max) width++;
  return width;
}

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

bool LeafPages::read_page(LeafPage& page) {
  if (page_offset_ >= chunk_end_)
    fail("row group " + std::to_string(row_group_) + ": its pages end before its " +
         std::to_string(chunk_->values) + " values");
  // A page header is short; read a generous window and parse it from there.
  const uint64_t window =
      std::min<uint64_t>(file_.size - std::min(page_offset_, file_.size), 1 << 16);
  const std::string head = file_.read_bytes(page_offset_, window);
  const auto* begin = reinterpret_cast<const uint8_t*>(head.data());
  CompactReader in(begin, begin + head.size(), file_.path);
  const PageHeader header = read_page_header(in);
  const uint64_t header_size = static_cast<uint64_t>(in.position() - begin);
  if (header.compressed_size < 0 || header.uncompressed_size < 0)
    fail("a page without its sizes at byte " + std::to_string(page_offset_));
  const std::string stored =
      file_.read_bytes(page_offset_ + header_size, static_cast<uint64_t>(header.compressed_size));
  page_offset_ += header_size + static_cast<uint64_t>(header.compressed_size);
  if (header.type == kDictionaryPage) {
    read_dictionary(header, stored);
    return false;
  }
  if (header.type != kDataPage && header.type != kDataPageV2) return false;  // index pages
  constexpr int64_t kMostPageValues = int64_t{1} << 24;  // real writers: about 20,000
  if (header.values > kMostPageValues)
    fail("a data page of " + std::to_string(header.values) +
         " values, more than this reader takes (" + std::to_string(kMostPageValues) + ")");
  if (header.values <= 0 || header.values > values_left_)
    fail("a data page of " + std::to_string(header.values) + " values where " +
         std::to_string(values_left_) + " are left");
  values_left_ -= header.values;

  // Levels then values; in v2 the levels are stored uncompressed before the values.
  const auto* data = reinterpret_cast<const uint8_t*>(stored.data());
  std::string body;
  const uint8_t *repetition = nullptr, *repetition_end = nullptr;
  const uint8_t *definition = nullptr, *definition_end = nullptr;
  const uint8_t *at, *end;
  if (header.type == kDataPageV2) {
    if (max_repetition_ == 0 && header.repetition_bytes != 0)
      fail("repetition levels in a column of strings");
    if (header.repetition_bytes < 0 || header.repetition_bytes > header.compressed_size ||
        header.repetition_bytes > header.uncompressed_size)
      fail("repetition levels larger than their page");
    if (header.definition_bytes < 0 ||
        header.definition_bytes > header.compressed_size - header.repetition_bytes ||
        header.definition_bytes > header.uncompressed_size - header.repetition_bytes)
      fail("definition levels larger than their page");
    repetition = data;
    repetition_end = definition = data + header.repetition_bytes;
    definition_end = definition + header.definition_bytes;
    const size_t levels_size =
        static_cast<size_t>(header.repetition_bytes + header.definition_bytes);
    const size_t stored_values = stored.size() - levels_size;
    const size_t plain_values = static_cast<size_t>(header.uncompressed_size) - levels_size;
    // Some writers store no bytes at all for a page without values, even under a codec.
    const bool compressed = header.values_compressed && (stored_values > 0 || plain_values > 0);
    body = compressed
               ? decompress(chunk_->codec, definition_end, stored_values, plain_values, where())
               : std::string(reinterpret_cast<const char*>(definition_end), stored_values);
    at = reinterpret_cast<const uint8_t*>(body.data());
    end = at + body.size();
  } else {
    body = decompress(chunk_->codec, data, stored.size(),
                      static_cast<size_t>(header.uncompressed_size), where());
    at = reinterpret_cast<const uint8_t*>(body.data());
    end = at + body.size();
    if (max_repetition_ > 0)
      take_v1_levels(at, end, header.repetition_encoding, "repetition", repetition, repetition_end);
    if (max_definition_ > 0)
      take_v1_levels(at, end, header.definition_encoding, "definition", definition, definition_end);
  }

  const size_t count = static_cast<size_t>(header.values);
  page = LeafPage();
  page.entries = count;
  if (max_repetition_ > 0)
    decode_levels(repetition, repetition_end, max_repetition_, "repetition", count,
                  page.repetition);
  if (max_definition_ > 0)
    decode_levels(definition, definition_end, max_definition_, "definition", count,
                  page.definition);
  const size_t present =
      max_definition_ == 0
          ? count
          : static_cast<size_t>(std::count(page.definition.begin(), page.definition.end(),
                                           static_cast<uint8_t>(max_definition_)));
  decode_values(header, at, end, present, page);
  return true;
}

void LeafPages::read_dictionary(const PageHeader& header, const std::string& stored) {
  if (header.encoding != kPlain && header.encoding != kPlainDictionary)
    fail("a dictionary page in " + std::string(encoding_name(header.encoding)));
  const std::string plain =
      decompress(chunk_->codec, reinterpret_cast<const uint8_t*>(stored.data()), stored.size(),
                 static_cast<size_t>(header.uncompressed_size), where());
  const auto* at = reinterpret_cast<const uint8_t*>(plain.data());
  // A new dictionary, not this one refilled: pages already read keep theirs.
  dictionary_ = std::make_shared<std::vector<std::string>>();
  plain_strings(file_, at, at + plain.size(),
                static_cast<size_t>(std::max<int64_t>(header.values, 0)), *dictionary_);
}

void LeafPages::take_v1_levels(const uint8_t*& at, const uint8_t* end, int64_t encoding,
                               const char* kind, const uint8_t*& levels,
                               const uint8_t*& levels_end) const {
  const std::string what = kind;
  if (encoding != kRle) fail(what + " levels in " + encoding_name(encoding));
  if (end - at < 4) fail("a data page ends before its " + what + " levels");
  uint32_t length;
  std::memcpy(&length, at, 4);
  at += 4;
  if (length > static_cast<size_t>(end - at)) fail(what + " levels larger than their page");
  levels = at;
  levels_end = at + length;
  at = levels_end;
}

void LeafPages::decode_levels(const uint8_t* begin, const uint8_t* end, int max, const char* kind,
                              size_t count, std::vector<uint8_t>& out) const {
  const std::string what = where();
  HybridDecoder decoder(begin, end, level_bit_width(max), what);
  out.resize(count);
  for (size_t k = 0; k < count; k++) {
    const uint32_t level = decoder.next();
    if (level > static_cast<uint32_t>(max))
      fail(std::string("a ") + kind + " level of " + std::to_string(level));
    out[k] = static_cast<uint8_t>(level);
  }
}

void LeafPages::decode_values(const PageHeader& header, const uint8_t* at, const uint8_t* end,
                              size_t count, LeafPage& page) const {
  const std::string what = where();
  if (header.encoding == kPlain) {
    plain_strings(file_, at, end, count, page.strings);
  } else if (header.encoding == kPlainDictionary || header.encoding == kRleDictionary) {
    if (at == end) fail("a dictionary-encoded page without its bit width");
    HybridDecoder indices(at + 1, end, *at, what);
    page.indices.reserve(count);
    for (size_t k = 0; k < count; k++) {
      const uint32_t index = indices.next();
      if (index >= dictionary_->size())
        fail("dictionary index " + std::to_string(index) + " of " +
             std::to_string(dictionary_->size()));
      page.indices.push_back(index);
    }
    page.dictionary = dictionary_;
  } else if (header.encoding == kDeltaLengthByteArray) {
    delta_length_strings(at, end, count, page.strings, what);
  } else if (header.encoding == kDeltaByteArray) {
    delta_strings(at, end, count, page.strings, what);
  } else {
    fail(std::string("values in ") + encoding_name(header.encoding) +
         ", which this reader does not decode (PLAIN, dictionary and DELTA_* encodings are)");
  }
}

}  // namespace

struct ParquetStrings::State {
  explicit State(const std::string& path) : file(path) {}
  ParquetFile file;
  std::string column_name;
  size_t column = 0;      // index among the leaf columns
  bool optional = false;  // definition level 1 for a value, 0 for a null
  std::optional<LeafPages> pages;
  size_t row_group = 0;  // the next one to start
  int64_t row = 0;       // rows handed out
  LeafPage page;         // the data page being read, its values handed out in order
  size_t value_index = 0;

  // A null fails the page it is in, as soon as that page is read.
  void refuse_nulls() const {
    if (!optional) return;
    for (size_t k = 0; k < page.entries; k++)
      if (page.definition[k] == 0)
        file.fail("row " + std::to_string(row + static_cast<int64_t>(k)) + ": \"" + column_name +
                  "\" is null");
  }
};

ParquetStrings::ParquetStrings(const std::string& path, const std::string& column)
    : state_(std::make_unique<State>(path)) {
  State& s = *state_;
  s.column_name = column;
  const TopLevelColumn found = find_top_level_column(s.file, column);
  const SchemaElement& element = s.file.meta.schema[found.element];
  if (element.children > 0) s.file.fail("column \"" + column + "\" is nested, not strings");
  if (element.type != kByteArray) s.file.fail("column \"" + column + "\" does not hold strings");
  if (element.repetition == kRepeated)
    s.file.fail("column \"" + column + "\" is a list, not strings");
  s.column = found.first_leaf;
  s.optional = element.repetition == kOptional;
  s.pages.emplace(s.file, 0, s.optional ? 1 : 0);
  for (size_t g = 0; g < s.file.meta.row_groups.size(); g++) {
    const RowGroup& group = s.file.meta.row_groups[g];
    const ColumnChunk& chunk = leaf_chunk(s.file, g, s.column, {column});
    if (chunk.values != group.rows)
      s.file.fail("row group " + std::to_string(g) + ": " + std::to_string(chunk.values) +
                  " values for " + std::to_string(group.rows) + " rows");
    check_codec(s.file, chunk);
  }
}

ParquetStrings::~ParquetStrings() = default;

int64_t ParquetStrings::rows() const { return state_->file.rows(); }

bool ParquetStrings::next(std::string& value) {
  State& s = *state_;
  while (s.value_index == s.page.values()) {
    if (!s.pages->started() || s.pages->chunk_done()) {
      if (s.row_group == s.file.meta.row_groups.size()) return false;
      s.pages->start(s.file.meta.row_groups[s.row_group].columns[s.column], s.row_group);
      s.row_group++;
      s.page = LeafPage();
      s.value_index = 0;
      continue;
    }
    if (s.pages->read_page(s.page)) {
      s.value_index = 0;
      s.refuse_nulls();
    }
  }
  value = s.page.take(s.value_index++);
  s.row++;
  return true;
}

namespace {

bool is_list(const SchemaElement& element) {
  return element.converted_type == kList || element.logical_type == kLogicalList;
}
bool is_map(const SchemaElement& element) {
  return element.converted_type == kMap || element.converted_type == kMapKeyValue ||
         element.logical_type == kLogicalMap;
}

// What a list's element holds, in words, for refusals.
std::string element_shape(const SchemaElement& element) {
  if (is_list(element) || element.repetition == kRepeated) return "a list of lists";
  if (is_map(element)) return "a list of maps";
  if (element.children == 0)
    return element.type == kByteArray ? "a list of strings"
                                      : "a list of values that are not strings";
  return "";  // a struct
}

// Where a list-of-structs column's parts lie in the schema, and the definition levels that tell
// a null list, an empty one, a null element and a null member value apart: a level below
// list_level is a null list, below elements_level an empty one, below element_level a null
// element, below a member's own maximum a null value.
struct ListOfStructs {
  TopLevelColumn column;
  size_t element = 0;                     // the struct, one a list element
  std::vector<std::string> element_path;  // the schema's names down to it
  int list_level = 0, elements_level = 0, element_level = 0;
  std::vector<size_t> members;
};

ListOfStructs find_list_of_structs(const ParquetFile& file, const std::string& column) {
  ListOfStructs list;
  list.column = find_top_level_column(file, column);
  const std::vector<SchemaElement>& schema = file.meta.schema;
  const SchemaElement& outer = schema[list.column.element];
  const auto refuse = [&](const std::string& holds) {
    file.fail("column \"" + column + "\" is not a list of structs (it holds " + holds + ")");
  };
  list.element_path = {outer.name};
  size_t repeated = list.column.element;
  if (outer.repetition == kRepeated && !is_list(outer) && !is_map(outer)) {
    // A repeated field outside a LIST group: a required list of required elements.
    if (outer.children == 0)
      refuse(outer.type == kByteArray ? "a list of strings"
                                      : "a list of values that are not strings");
    list.element = repeated;
    list.elements_level = list.element_level = 1;
  } else {
    if (outer.children == 0)
      refuse(outer.type == kByteArray ? "strings" : "values that are not strings");
    if (is_map(outer)) refuse("a map");
    if (!is_list(outer)) refuse("a struct");
    const std::vector<size_t> children = schema_children(file, list.column.element);
    if (outer.repetition == kRepeated || children.size() != 1 ||
        schema[children[0]].repetition != kRepeated)
      refuse("a LIST group not of the forms the Parquet spec gives");
    repeated = children[0];
    list.element_path.push_back(schema[repeated].name);
    list.list_level = outer.repetition == kOptional ? 1 : 0;
    list.elements_level = list.list_level + 1;
    // The spec's backward-compatibility rules: the repeated group is itself the element where
    // it has several members, a repeated one, or a legacy name; else its one member is (the
    // standard 3-level form).
    const SchemaElement& middle = schema[repeated];
    const std::vector<size_t> inner =
        middle.children > 0 ? schema_children(file, repeated) : std::vector<size_t>{};
    if (middle.children == 0 || inner.size() > 1 || schema[inner[0]].repetition == kRepeated ||
        middle.name == "array" || middle.name == outer.name + "_tuple") {
      list.element = repeated;
      list.element_level = list.elements_level;
    } else {
      list.element = inner[0];
      list.element_path.push_back(schema[list.element].name);
      list.element_level =
          list.elements_level + (schema[list.element].repetition == kOptional ? 1 : 0);
    }
    // The element's own repetition is the list's where it is the repeated group.
    SchemaElement element = schema[list.element];
    if (list.element == repeated) element.repetition = kRequired;
    if (const std::string shape = element_shape(element); !shape.empty()) refuse(shape);
  }
  list.members = schema_children(file, list.element);
  return list;
}

}  // namespace

struct ParquetRecordLists::State {
  explicit State(const std::string& path) : file(path) {}

  // A field asked for: its leaf column's pages and how far they are read.
  struct Field {
    std::string name, column;        // the member's name; its leaf column's path, dotted
    std::vector<std::string> path;   // the schema's names down to the leaf
    size_t leaf = 0;                 // index among the leaf columns
    int max_definition = 0;          // a present value's level
    std::optional<LeafPages> pages;  // the current row group's
    LeafPage page;
    size_t entry = 0, value = 0;  // the page's next entry and next value
    // The row being read: each entry's definition level, and the values present.
    std::vector<uint8_t> row_levels;
    std::vector<std::string> row_values;
  };

  ParquetFile file;
  std::string column;
  ListOfStructs list;
  std::vector<Field> fields;
  size_t row_group = 0;  // the next one to start
  bool in_row_group = false;
  int64_t row_group_rows_left = 0;
  int64_t row = 0;  // rows handed out
  int64_t row_bytes = 0;

  [[noreturn]] void fail_row(const std::string& why) const {
    file.fail("row " + std::to_string(row) + ": " + why);
  }
  std::string row_group_name() const { return "row group " + std::to_string(row_group - 1); }
  Field make_field(const std::string& name) const;
  bool start_row();
  void finish_row_group();
  bool at_entry(Field& field);
  void take_entry(Field& field);
  void read_row(Field& field);
  void check_fields_agree() const;
  void assemble(std::vector<std::vector<std::string>>& records);
};

ParquetRecordLists::State::Field ParquetRecordLists::State::make_field(
    const std::string& name) const {
  const std::vector<SchemaElement>& schema = file.meta.schema;
  const std::string in_column = "column \"" + column + "\": ";
  std::string names;
  for (const size_t member : list.members) {
    const SchemaElement& element = schema[member];
    names += (names.empty() ? "" : ", ") + element.name;
    if (element.name != name) continue;
    if (element.children > 0)
      file.fail(in_column + "field \"" + name + "\" is nested, not strings");
    if (element.type != kByteArray)
      file.fail(in_column + "field \"" + name + "\" does not hold strings");
    if (element.repetition == kRepeated)
      file.fail(in_column + "field \"" + name + "\" is a list, not strings");
    Field field;
    field.name = name;
    field.path = list.element_path;
    field.path.push_back(name);
    for (const std::string& part : field.path)
      field.column += (field.column.empty() ? "" : ".") + part;
    field.leaf = leaf_index(file, list.column, member);
    field.max_definition = list.element_level + (element.repetition == kOptional ? 1 : 0);
    return field;
  }
  file.fail(in_column + "no field \"" + name + "\" in its structs (fields: " + names + ")");
}

ParquetRecordLists::ParquetRecordLists(const std::string& path, const std::string& column,
                                       const std::vector<std::string>& fields)
    : state_(std::make_unique<State>(path)) {
  State& s = *state_;
  s.column = column;
  s.list = find_list_of_structs(s.file, column);
  if (fields.empty()) s.file.fail("no fields asked of column \"" + column + "\"");
  s.fields.reserve(fields.size());
  for (const std::string& name : fields) {
    s.fields.push_back(s.make_field(name));
    s.fields.back().pages.emplace(s.file, 1, s.fields.back().max_definition);
  }
  for (size_t g = 0; g < s.file.meta.row_groups.size(); g++) {
    const RowGroup& group = s.file.meta.row_groups[g];
    int64_t entries = -1;
    for (const State::Field& field : s.fields) {
      const ColumnChunk& chunk = leaf_chunk(s.file, g, field.leaf, field.path);
      // Each row is one entry at least (a null or empty list too), each element one entry in
      // every field's column.
      if (group.rows < 0 || chunk.values < group.rows)
        s.file.fail("row group " + std::to_string(g) + ": " + std::to_string(chunk.values) +
                    " values for " + std::to_string(group.rows) + " rows");
      if (entries >= 0 && chunk.values != entries)
        s.file.fail("row group " + std::to_string(g) + ": the fields of \"" + column +
                    "\" hold different numbers of values (" + std::to_string(entries) + " and " +
                    std::to_string(chunk.values) + ")");
      entries = chunk.values;
      check_codec(s.file, chunk);
    }
  }
}

ParquetRecordLists::~ParquetRecordLists() = default;

int64_t ParquetRecordLists::rows() const { return state_->file.rows(); }

// Moves to the next row group that has rows, having checked that the last one's columns end
// with its rows; false after the last.
bool ParquetRecordLists::State::start_row() {
  while (row_group_rows_left == 0) {
    if (in_row_group) finish_row_group();
    in_row_group = false;
    if (row_group == file.meta.row_groups.size()) return false;
    for (Field& field : fields) {
      field.pages->start(file.meta.row_groups[row_group].columns[field.leaf], row_group);
      field.page = LeafPage();
      field.entry = field.value = 0;
    }
    row_group_rows_left = file.meta.row_groups[row_group].rows;
    row_group++;
    in_row_group = true;
  }
  return true;
}

void ParquetRecordLists::State::finish_row_group() {
  for (Field& field : fields)
    if (at_entry(field))
      file.fail(row_group_name() + ": column \"" + field.column + "\" holds more than its " +
                std::to_string(file.meta.row_groups[row_group - 1].rows) + " rows");
}

bool ParquetRecordLists::State::at_entry(Field& field) {
  while (field.entry == field.page.entries) {
    if (field.pages->chunk_done()) return false;
    if (field.pages->read_page(field.page)) field.entry = field.value = 0;
  }
  return true;
}

void ParquetRecordLists::State::take_entry(Field& field) {
  // A chat's turns are kilobytes; this bounds what a damaged page (one dictionary string
  // repeated) can make a row hold.
  constexpr int64_t kMostRowBytes = int64_t{1} << 30;
  const uint8_t level = field.page.definition[field.entry++];
  field.row_levels.push_back(level);
  if (level != field.max_definition) return;
  row_bytes += static_cast<int64_t>(field.page.value_size(field.value));
  if (row_bytes > kMostRowBytes) fail_row("a list whose strings take more than 1 GiB");
  field.row_values.push_back(field.page.take(field.value++));
}

// The field's entries of the current row: the first has repetition level 0, the rest (its
// list's further elements) 1, and may lie on the pages after it.
void ParquetRecordLists::State::read_row(Field& field) {
  constexpr size_t kMostElements = size_t{1} << 20;
  field.row_levels.clear();
  field.row_values.clear();
  if (!at_entry(field))
    file.fail(row_group_name() + ": column \"" + field.column + "\" ends before its " +
              std::to_string(file.meta.row_groups[row_group - 1].rows) + " rows");
  if (field.page.repetition[field.entry] != 0)
    fail_row("column \"" + field.column + "\" continues a list where the row starts");
  take_entry(field);
  while (at_entry(field) && field.page.repetition[field.entry] == 1) {
    if (field.row_levels.size() == kMostElements)
      fail_row("a list of more than " + std::to_string(kMostElements) +
               " elements, more than this reader takes");
    take_entry(field);
  }
}

// The fields' columns repeat the list's structure: the same entries, and the same levels up to
// the element's.
void ParquetRecordLists::State::check_fields_agree() const {
  const std::vector<uint8_t>& first = fields[0].row_levels;
  for (const Field& field : fields) {
    bool agree = field.row_levels.size() == first.size();
    for (size_t k = 0; agree && k < first.size(); k++)
      agree = std::min<int>(field.row_levels[k], list.element_level) ==
              std::min<int>(first[k], list.element_level);
    if (!agree)
      fail_row("columns \"" + fields[0].column + "\" and \"" + field.column +
               "\" disagree on its list (" + std::to_string(first.size()) + " and " +
               std::to_string(field.row_levels.size()) + " entries; a damaged file)");
  }
}

void ParquetRecordLists::State::assemble(std::vector<std::vector<std::string>>& records) {
  const std::vector<uint8_t>& levels = fields[0].row_levels;
  if (levels[0] < list.list_level) fail_row("\"" + column + "\" is null");
  if (levels[0] < list.elements_level) {
    if (levels.size() > 1) fail_row("an empty list with elements (a damaged file)");
    return;
  }
  std::vector<size_t> next_value(fields.size(), 0);
  records.resize(levels.size());
  for (size_t k = 0; k < levels.size(); k++) {
    if (levels[k] < list.elements_level) fail_row("an empty list with elements (a damaged file)");
    if (levels[k] < list.element_level)
      fail_row("element " + std::to_string(k) + " of \"" + column + "\" is null");
    records[k].reserve(fields.size());
    for (size_t f = 0; f < fields.size(); f++) {
      Field& field = fields[f];
      if (field.row_levels[k] < field.max_definition)
        fail_row("\"" + field.name + "\" is null in element " + std::to_string(k) + " of \"" +
                 column + "\"");
      records[k].push_back(std::move(field.row_values[next_value[f]++]));
    }
  }
}

bool ParquetRecordLists::next(std::vector<std::vector<std::string>>& records) {
  State& s = *state_;
  records.clear();
  if (!s.start_row()) return false;
  s.row_bytes = 0;
  for (State::Field& field : s.fields) s.read_row(field);
  s.check_fields_agree();
  s.assemble(records);
  s.row_group_rows_left--;
  s.row++;
  return true;
}

std::vector<std::string> parquet_list_struct_fields(const std::string& path,
                                                    const std::string& column) {
  const ParquetFile file(path);
  const ListOfStructs list = find_list_of_structs(file, column);
  std::vector<std::string> names;
  for (const size_t member : list.members) {
    const SchemaElement& element = file.meta.schema[member];
    if (element.children == 0 && element.type == kByteArray && element.repetition != kRepeated)
      names.push_back(element.name);
  }
  return names;
}

}  // namespace sy
