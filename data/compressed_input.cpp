#include "data/compressed_input.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <vector>

#ifdef SY_HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef SY_HAVE_ZSTD
#include <zstd.h>
#endif

namespace sy {
namespace {

constexpr size_t kBlockBytes = size_t{1} << 20;

std::runtime_error input_error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what);
}

// gzip members start 1f 8b (RFC 1952), zstd frames 28 b5 2f fd (RFC 8878).
std::string_view compression_of(const char* first_bytes, size_t size) {
  const auto* b = reinterpret_cast<const unsigned char*>(first_bytes);
  if (size >= 2 && b[0] == 0x1f && b[1] == 0x8b) return "gzip";
  if (size >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd) return "zstd";
  return "";
}

}  // namespace

bool input_compression_available(std::string_view compression) {
#ifdef SY_HAVE_ZLIB
  if (compression == "gzip") return true;
#endif
#ifdef SY_HAVE_ZSTD
  if (compression == "zstd") return true;
#endif
  return compression.empty();
}

// The file and the state of its decoding. The file is read in blocks into `packed`, of which
// [packed_begin, packed_end) is not decoded yet.
struct InputFile::Decoder {
  std::string path;
  std::ifstream file;
  std::string_view compression;
  std::vector<char> packed = std::vector<char>(kBlockBytes);
  size_t packed_begin = 0, packed_end = 0;
  uint64_t block_offset = 0;  // where packed[0] is in the file
  bool in_frame = false;      // inside a gzip member or zstd frame: the file must not end here
#ifdef SY_HAVE_ZLIB
  z_stream gzip{};
  bool gzip_started = false;
#endif
#ifdef SY_HAVE_ZSTD
  ZSTD_DStream* zstd = nullptr;
#endif

  explicit Decoder(const std::string& file_path) : path(file_path), file(path, std::ios::binary) {
    if (!file) throw input_error(path, "cannot open for reading");
    have_packed();
    compression = compression_of(packed.data(), packed_end);
    if (!input_compression_available(compression))
      throw input_error(path, std::string(compression) + "-compressed, and this build reads no " +
                                  std::string(compression) + " (apt-get install " +
                                  (compression == "gzip" ? "zlib1g-dev" : "libzstd-dev") +
                                  ", then rebuild)");
#ifdef SY_HAVE_ZLIB
    if (compression == "gzip") {
      if (inflateInit2(&gzip, 16 + MAX_WBITS) != Z_OK) throw input_error(path, "zlib: no memory");
      gzip_started = true;
    }
#endif
#ifdef SY_HAVE_ZSTD
    if (compression == "zstd" && !(zstd = ZSTD_createDStream()))
      throw input_error(path, "zstd: no memory");
#endif
  }

  ~Decoder() {
#ifdef SY_HAVE_ZLIB
    if (gzip_started) inflateEnd(&gzip);
#endif
#ifdef SY_HAVE_ZSTD
    ZSTD_freeDStream(zstd);
#endif
  }

  // Whether undecoded bytes are at hand, reading the next block when none are.
  bool have_packed() {
    if (packed_begin < packed_end) return true;
    file.read(packed.data(), static_cast<std::streamsize>(packed.size()));
    if (file.bad()) throw input_error(path, "read failed");
    block_offset += packed_end;
    packed_begin = 0;
    packed_end = static_cast<size_t>(file.gcount());
    return packed_end > 0;
  }

  size_t read(char* out, size_t capacity) {
    size_t produced = 0;
    while (produced < capacity) {
      const bool more = have_packed();
      if (!more && !in_frame) break;
      const size_t before = produced;
      produced += decode(out + produced, capacity - produced);
      // A decoder holding output flushes it without input; one that makes no progress at the
      // end of the file was cut off in the middle of a member or frame.
      if (!more && produced == before)
        throw input_error(path, std::string(compression) + " data ends early (a truncated file?)");
    }
    return produced;
  }

  std::runtime_error corrupt(const std::string& reason) const {
    return input_error(path, "corrupt " + std::string(compression) + " data near byte " +
                                 std::to_string(block_offset + packed_begin) + " (" + reason + ")");
  }

  // One step of decoding into out[0, capacity): returns the bytes written.
  size_t decode(char* out, size_t capacity) {
    const size_t available = packed_end - packed_begin;
    if (compression.empty()) {
      const size_t n = std::min(available, capacity);
      std::copy_n(packed.data() + packed_begin, n, out);
      packed_begin += n;
      return n;
    }
#ifdef SY_HAVE_ZLIB
    if (compression == "gzip") {
      if (!in_frame && inflateReset(&gzip) != Z_OK) throw input_error(path, "zlib: reset failed");
      in_frame = true;
      gzip.next_in = reinterpret_cast<Bytef*>(packed.data() + packed_begin);
      gzip.avail_in = static_cast<uInt>(std::min<size_t>(available, UINT_MAX));
      gzip.next_out = reinterpret_cast<Bytef*>(out);
      gzip.avail_out = static_cast<uInt>(std::min<size_t>(capacity, UINT_MAX));
      const uInt room = gzip.avail_out;
      const int status = inflate(&gzip, Z_NO_FLUSH);
      packed_begin = packed_end - gzip.avail_in;
      if (status == Z_STREAM_END) in_frame = false;
      else if (status != Z_OK && status != Z_BUF_ERROR)
        throw corrupt(gzip.msg ? gzip.msg : "zlib error " + std::to_string(status));
      return room - gzip.avail_out;
    }
#endif
#ifdef SY_HAVE_ZSTD
    if (compression == "zstd") {
      ZSTD_inBuffer input{packed.data() + packed_begin, available, 0};
      ZSTD_outBuffer output{out, capacity, 0};
      const size_t status = ZSTD_decompressStream(zstd, &output, &input);
      packed_begin += input.pos;
      if (ZSTD_isError(status)) throw corrupt(ZSTD_getErrorName(status));
      in_frame = status != 0;  // 0: a frame ended and all its output is out
      return output.pos;
    }
#endif
    throw std::logic_error("InputFile: no decoder for " + std::string(compression));
  }
};

InputFile::InputFile(const std::string& path) : decoder_(std::make_unique<Decoder>(path)) {}
InputFile::~InputFile() = default;

std::string_view InputFile::compression() const { return decoder_->compression; }

size_t InputFile::read(char* out, size_t capacity) {
  // Bytes a read_line took past its line come first.
  const size_t held = std::min(pending_.size() - pending_begin_, capacity);
  std::copy_n(pending_.data() + pending_begin_, held, out);
  pending_begin_ += held;
  return held + decoder_->read(out + held, capacity - held);
}

bool InputFile::read_line(std::string& line) {
  line.clear();
  for (;;) {
    const size_t newline = pending_.find('\n', pending_begin_);
    if (newline != std::string::npos) {
      line.append(pending_, pending_begin_, newline - pending_begin_);
      pending_begin_ = newline + 1;
      return true;
    }
    line.append(pending_, pending_begin_);
    pending_.resize(kBlockBytes);
    pending_.resize(decoder_->read(pending_.data(), pending_.size()));
    pending_begin_ = 0;
    if (pending_.empty()) return !line.empty();
  }
}

}  // namespace sy
