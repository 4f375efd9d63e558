#include "trainer/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace sy {

namespace fs = std::filesystem;

// The tensors are written as the host holds them; the format is little-endian.
static_assert(std::endian::native == std::endian::little,
              "trainer/safetensors.cpp writes host floats as little-endian bytes");

const char* safetensors_dtype_name(SafetensorsDType dtype) {
  return dtype == SafetensorsDType::bf16 ? "BF16" : "F32";
}

int64_t safetensors_dtype_bytes(SafetensorsDType dtype) {
  return dtype == SafetensorsDType::bf16 ? 2 : 4;
}

uint16_t bf16_bits_round_nearest_even(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7F80'0000u) == 0x7F80'0000u && (bits & 0x007F'FFFFu) != 0)
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // NaN: keep sign, force quiet
  // Adding 0x7FFF rounds up anything past halfway; the kept bit's parity breaks the tie. A carry
  // into the exponent is the right answer too (up to infinity past the largest bf16).
  const uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsEntry> entries,
                                     SafetensorsDType dtype)
    : path_(std::move(path)), temporary_path_(path_ + ".tmp"), entries_(std::move(entries)),
      dtype_(dtype) {
  // ordered_json keeps the tensors in file order, so the header reads like the data.
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  std::set<std::string> names;
  int64_t offset = 0;
  for (const SafetensorsEntry& entry : entries_) {
    if (entry.name.empty() || entry.name == "__metadata__")
      throw std::runtime_error(path_ + ": tensor name '" + entry.name + "' is not allowed");
    if (!names.insert(entry.name).second)
      throw std::runtime_error(path_ + ": tensor " + entry.name + " declared twice");
    int64_t numel = 1;
    for (const int64_t dim : entry.shape) {
      if (dim < 0) throw std::runtime_error(path_ + ": tensor " + entry.name + " has a negative dimension");
      numel *= dim;
    }
    const int64_t end = offset + numel * safetensors_dtype_bytes(dtype_);
    header[entry.name] = {{"dtype", safetensors_dtype_name(dtype_)},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, end}}};
    offset = end;
  }
  header_ = header.dump();
  // The data must start 8-byte aligned: 8 bytes of length, then the padded header.
  std::string padded = header_;
  padded.append((8 - padded.size() % 8) % 8, ' ');

  file_ = std::fopen(temporary_path_.c_str(), "wb");
  if (!file_)
    throw std::runtime_error(temporary_path_ + ": cannot create (" + std::strerror(errno) + ")");
  uint8_t length[8];
  const uint64_t n = padded.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(n >> (8 * i));
  write_bytes(length, sizeof length);
  write_bytes(padded.data(), padded.size());
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_) std::fclose(file_);
  if (!finished_) {
    std::error_code ignored;
    fs::remove(temporary_path_, ignored);
  }
}

void SafetensorsWriter::write_bytes(const void* data, size_t size) {
  if (size > 0 && std::fwrite(data, 1, size, file_) != size)
    throw std::runtime_error(temporary_path_ + ": cannot write (" + std::strerror(errno) + ")");
  size_ += static_cast<int64_t>(size);
}

void SafetensorsWriter::write_next(std::span<const float> values) {
  if (next_ >= entries_.size())
    throw std::runtime_error(path_ + ": more tensors written than the " +
                             std::to_string(entries_.size()) + " declared");
  const SafetensorsEntry& entry = entries_[next_];
  int64_t numel = 1;
  for (const int64_t dim : entry.shape) numel *= dim;
  if (static_cast<int64_t>(values.size()) != numel)
    throw std::runtime_error(path_ + ": tensor " + entry.name + " declared with " +
                             std::to_string(numel) + " values, given " +
                             std::to_string(values.size()));
  if (dtype_ == SafetensorsDType::f32) {
    write_bytes(values.data(), values.size() * sizeof(float));
  } else {
    std::vector<uint16_t> bf16(values.size());
    for (size_t i = 0; i < values.size(); ++i) bf16[i] = bf16_bits_round_nearest_even(values[i]);
    write_bytes(bf16.data(), bf16.size() * sizeof(uint16_t));
  }
  ++next_;
}

int64_t SafetensorsWriter::finish() {
  if (next_ != entries_.size())
    throw std::runtime_error(path_ + ": " + std::to_string(next_) + " of " +
                             std::to_string(entries_.size()) + " tensors written");
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed)
    throw std::runtime_error(temporary_path_ + ": cannot write to disk (" + std::strerror(errno) + ")");
  std::error_code error;
  fs::rename(temporary_path_, path_, error);
  if (error)
    throw std::runtime_error(path_ + ": cannot rename " + temporary_path_ + " into place: " +
                             error.message());
  finished_ = true;
  return size_;
}

}  // namespace sy
