// gzip members and zstd frames written in the tests, through the libraries prepare-data reads
// them with (tests/CMakeLists.txt links those found and defines SY_HAVE_ZLIB, SY_HAVE_ZSTD).
#pragma once

#include <stdexcept>
#include <string>

#ifdef SY_HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef SY_HAVE_ZSTD
#include <zstd.h>
#endif

namespace sy::test {

#ifdef SY_HAVE_ZLIB
// `text` as one gzip member, as `gzip` writes it (deflate, CRC-32 and size in the trailer).
inline std::string gzip_member(const std::string& text) {
  z_stream stream{};
  if (deflateInit2(&stream, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  std::string packed(deflateBound(&stream, text.size()), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  stream.avail_in = static_cast<uInt>(text.size());
  stream.next_out = reinterpret_cast<Bytef*>(packed.data());
  stream.avail_out = static_cast<uInt>(packed.size());
  const int status = deflate(&stream, Z_FINISH);
  packed.resize(stream.total_out);
  deflateEnd(&stream);
  if (status != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
  return packed;
}
#endif

#ifdef SY_HAVE_ZSTD
// `text` as one zstd frame with a content checksum, as the `zstd` tool writes it.
inline std::string zstd_frame(const std::string& text) {
  ZSTD_CCtx* context = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1);
  std::string packed(ZSTD_compressBound(text.size()), '\0');
  const size_t size =
      ZSTD_compress2(context, packed.data(), packed.size(), text.data(), text.size());
  ZSTD_freeCCtx(context);
  if (ZSTD_isError(size)) throw std::runtime_error(ZSTD_getErrorName(size));
  packed.resize(size);
  return packed;
}
#endif

}  // namespace sy::test
