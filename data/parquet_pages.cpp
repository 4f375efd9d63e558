// The pages of one leaf column (data/parquet_pages.h): the RLE/bit-packed hybrid, the delta
// encodings of integers and strings, decompression by each codec's library (each optional:
// SY_HAVE_* from data/CMakeLists.txt), the open file's schema walks, and LeafPages.
#include "data/parquet_pages.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

#include "data/compressed_input.h"
#include "data/parquet_input.h"  // parquet_codec_available, which decompress() asks

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

namespace sy::parquet {
namespace {

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
}  // namespace sy::parquet

namespace sy {

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

}  // namespace sy

namespace sy::parquet {
namespace {

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

}  // namespace

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

size_t leaf_index(const ParquetFile& file, const TopLevelColumn& column, size_t leaf) {
  size_t index = column.first_leaf;
  for (size_t k = column.element; k < leaf; k++) index += file.meta.schema[k].children == 0;
  return index;
}

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

namespace {

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

}  // namespace

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

}  // namespace sy::parquet
