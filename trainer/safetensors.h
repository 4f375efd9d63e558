// safetensors files (the format of Hugging Face's `safetensors` library), written and read by our
// own byte layout code: an unsigned 64-bit little-endian header length N, N bytes of JSON
// (padded with spaces so that the data starts 8-byte aligned), then each tensor's raw
// little-endian values, back to back, in the order the header lists them. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the start
// of the data), plus "__metadata__": {"format": "pt"}.
//
// Tensors are declared up front (the header comes first) and then streamed one at a time, so
// that a model larger than memory can be written holding one tensor. The file is written to
// <path>.tmp, fsynced and renamed into place by finish(): a reader never sees a partial file.
// The reader checks the whole header when it opens a file and then reads one tensor at a time
// at its offset, so that a shard of many GB is never held whole.
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace sy {

// The floating-point dtypes: the writer writes f32 and bf16, the reader reads all four.
enum class SafetensorsDType { f32, bf16, f16, f64 };

// "F32" | "BF16" | "F16" | "F64", as the header spells them.
const char* safetensors_dtype_name(SafetensorsDType dtype);
int64_t safetensors_dtype_bytes(SafetensorsDType dtype);

// fp32 -> bf16 bits by round-to-nearest-even on the 16 dropped bits (a value halfway between two
// bf16 numbers goes to the one with an even last bit); overflow rounds to infinity as IEEE
// rounding does; a NaN stays a (quiet) NaN of the same sign.
uint16_t bf16_bits_round_nearest_even(float value);
// The exact fp32 values of bf16 and IEEE half bits (every one of them is an fp32 number).
float bf16_bits_to_float(uint16_t bits);
float f16_bits_to_float(uint16_t bits);

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

// One tensor of a file being read.
struct SafetensorsTensor {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::f32;
  std::vector<int64_t> shape;  // row-major
  int64_t offset = 0;          // of its first byte in the file
  int64_t bytes = 0;           // numel x the dtype's size
};

class SafetensorsReader {
 public:
  // Opens `path` and checks its header: the length within the file, JSON of one object whose
  // members (but "__metadata__", ignored) are tensors with a known dtype, a shape of
  // non-negative dimensions and data_offsets [begin, end) inside the data, end - begin the
  // shape's numel x the dtype's size, no two overlapping. Throws std::runtime_error
  // "<path>: <why>" (naming the tensor) on any problem.
  explicit SafetensorsReader(std::string path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  // In file order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // nullptr when the file has no tensor `name`.
  const SafetensorsTensor* find(const std::string& name) const;
  // The tensor's values as fp32, row-major: F32 as stored, BF16 and F16 exactly, F64 rounded to
  // nearest. Reads only its bytes. Throws "<path>: ..." for an unknown name or a failed read.
  std::vector<float> read_f32(const std::string& name) const;
  // Elements [first, first + count) of the flattened tensor only (one expert of a fused [E, ...]
  // tensor). Throws "<path>: ..." when the range is not inside the tensor.
  std::vector<float> read_f32(const std::string& name, int64_t first, int64_t count) const;

 private:
  void read_header();  // the checks and the tensor list of the constructor

  std::string path_;
  int fd_ = -1;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
};

}  // namespace sy
