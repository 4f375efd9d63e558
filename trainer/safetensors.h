// A safetensors file writer (the format of Hugging Face's `safetensors` library), written by our
// own byte layout code: an unsigned 64-bit little-endian header length N, N bytes of JSON
// (padded with spaces so that the data starts 8-byte aligned), then each tensor's raw
// little-endian values, back to back, in the order the header lists them. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the start
// of the data), plus "__metadata__": {"format": "pt"}.
//
// Tensors are declared up front (the header comes first) and then streamed one at a time, so
// that a model larger than memory can be written holding one tensor. The file is written to
// <path>.tmp, fsynced and renamed into place by finish(): a reader never sees a partial file.
#pragma once
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace sy {

enum class SafetensorsDType { f32, bf16 };

// "F32" | "BF16", as the header spells them.
const char* safetensors_dtype_name(SafetensorsDType dtype);
int64_t safetensors_dtype_bytes(SafetensorsDType dtype);

// fp32 -> bf16 bits by round-to-nearest-even on the 16 dropped bits (a value halfway between two
// bf16 numbers goes to the one with an even last bit); overflow rounds to infinity as IEEE
// rounding does; a NaN stays a (quiet) NaN of the same sign.
uint16_t bf16_bits_round_nearest_even(float value);

struct SafetensorsEntry {
  std::string name;            // "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // row-major
};

class SafetensorsWriter {
 public:
  // Opens <path>.tmp and writes the header for `entries` (every tensor in `dtype`). Throws
  // std::runtime_error "<path>: <why>" on a duplicate or empty name, a negative dimension, or a
  // file that cannot be written.
  SafetensorsWriter(std::string path, std::vector<SafetensorsEntry> entries,
                    SafetensorsDType dtype);
  // Removes <path>.tmp unless finish() succeeded.
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The values of the next declared tensor, row-major, as fp32 (converted to the file's dtype).
  // Throws when their count is not the declared shape's, or when every tensor was written.
  void write_next(std::span<const float> values);
  // Every tensor written: flush, fsync, rename <path>.tmp to <path>. Returns the file's size.
  int64_t finish();

  // The header as written (for messages and tests): its JSON text, without the padding.
  const std::string& header_json() const { return header_; }

 private:
  void write_bytes(const void* data, size_t size);

  std::string path_, temporary_path_;
  std::vector<SafetensorsEntry> entries_;
  SafetensorsDType dtype_;
  std::string header_;
  std::FILE* file_ = nullptr;
  size_t next_ = 0;
  int64_t size_ = 0;
  bool finished_ = false;
};

}  // namespace sy
