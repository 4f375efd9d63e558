// The bytes of an input file of prepare-data: plain, gzip- or zstd-compressed. Corpora ship
// compressed (Dolma's .json.gz, SlimPajama's .jsonl.zst); reading them as they are saves a copy
// several times their size. The compression is known by the file's first bytes, not its name,
// and a file of several gzip members or zstd frames reads as one stream, as `zcat` reads it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace sy {

class InputFile {
 public:
  // Throws "<path>: cannot open for reading", or, for a compression this build cannot read,
  // a line naming the package to install.
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // Up to `capacity` bytes of the file's contents into `out`; 0 only at its end. Corrupt or
  // truncated compressed data throws one line naming the file.
  size_t read(char* out, size_t capacity);
  // The next line without its '\n' (the last line may lack one); false at the end.
  bool read_line(std::string& line);
  // "gzip", "zstd", or "" for a plain file.
  std::string_view compression() const;

 private:
  struct Decoder;
  std::unique_ptr<Decoder> decoder_;
  std::string pending_;  // bytes read past the last line handed out
  size_t pending_begin_ = 0;
};

// Whether this build reads `compression` ("gzip" or "zstd"): zlib and libzstd are optional.
bool input_compression_available(std::string_view compression);

}  // namespace sy
