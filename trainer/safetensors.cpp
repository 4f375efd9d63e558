#include "trainer/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace sy {

namespace fs = std::filesystem;

// The tensors are written as the host holds them; the format is little-endian.
static_assert(std::endian::native == std::endian::little,
              "trainer/safetensors.cpp writes and reads host floats as little-endian bytes");

const char* safetensors_dtype_name(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::f32:
      return "F32";
    case SafetensorsDType::bf16:
      return "BF16";
    case SafetensorsDType::f16:
      return "F16";
    case SafetensorsDType::f64:
      return "F64";
  }
  return "?";
}

int64_t safetensors_dtype_bytes(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::f32:
      return 4;
    case SafetensorsDType::bf16:
      return 2;
    case SafetensorsDType::f16:
      return 2;
    case SafetensorsDType::f64:
      return 8;
  }
  return 0;
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

float bf16_bits_to_float(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

float f16_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu, mantissa = bits & 0x3FFu;
  if (exponent == 0x1F)  // infinity, or a NaN with its payload kept
    return std::bit_cast<float>(sign | 0x7F80'0000u | (mantissa << 13));
  if (exponent != 0)  // normal: rebias the exponent from 15 to 127
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal, or zero
  return sign ? -magnitude : magnitude;
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsEntry> entries,
                                     SafetensorsDType dtype)
    : path_(std::move(path)), temporary_path_(path_ + ".tmp"), entries_(std::move(entries)),
      dtype_(dtype) {
  if (dtype_ != SafetensorsDType::f32 && dtype_ != SafetensorsDType::bf16)
    throw std::runtime_error(path_ + ": the writer writes F32 or BF16, not " +
                             safetensors_dtype_name(dtype_));
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

// ---- reading -----------------------------------------------------------------------------------

namespace {

// The safetensors library refuses headers over 100 MB; so does this reader, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

bool parse_dtype(const std::string& text, SafetensorsDType* dtype) {
  for (SafetensorsDType known : {SafetensorsDType::f32, SafetensorsDType::bf16,
                                 SafetensorsDType::f16, SafetensorsDType::f64})
    if (text == safetensors_dtype_name(known)) {
      *dtype = known;
      return true;
    }
  return false;
}

// Exactly `size` bytes at `offset`, or an error saying why not.
void read_at(int fd, int64_t offset, void* into, size_t size, const std::string& path,
             const std::string& what) {
  char* out = static_cast<char*>(into);
  for (size_t done = 0; done < size;) {
    const ssize_t got = ::pread(fd, out + done, size - done, offset + static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0)
      throw std::runtime_error(path + ": cannot read " + what + " (" + std::strerror(errno) + ")");
    if (got == 0) throw std::runtime_error(path + ": " + what + " ends past the end of the file");
    done += static_cast<size_t>(got);
  }
}

// One header member as a tensor; `data_bytes` is the size of the data after the header.
SafetensorsTensor parse_tensor(const std::string& name, const nlohmann::json& entry,
                               int64_t data_begin, int64_t data_bytes, const std::string& path) {
  auto fail = [&](const std::string& why) {
    return std::runtime_error(path + ": tensor " + name + ": " + why);
  };
  if (!entry.is_object()) throw fail("its header entry is not a JSON object");
  const auto dtype = entry.find("dtype"), shape = entry.find("shape");
  const auto offsets = entry.find("data_offsets");
  if (dtype == entry.end() || !dtype->is_string()) throw fail("no dtype string");
  SafetensorsTensor tensor;
  tensor.name = name;
  if (!parse_dtype(dtype->get<std::string>(), &tensor.dtype))
    throw fail("dtype " + dtype->get<std::string>() + " is not one of F32, BF16, F16, F64");
  if (shape == entry.end() || !shape->is_array()) throw fail("no shape array");
  const int64_t element_bytes = safetensors_dtype_bytes(tensor.dtype);
  int64_t numel = 1;
  for (const nlohmann::json& dim : *shape) {
    if (!dim.is_number_unsigned()) throw fail("shape " + shape->dump() + " is not of counts");
    const uint64_t size = dim.get<uint64_t>();
    const uint64_t room = static_cast<uint64_t>(std::numeric_limits<int64_t>::max() /
                                                element_bytes / std::max<int64_t>(numel, 1));
    if (size > room) throw fail("shape " + shape->dump() + " is too large");
    tensor.shape.push_back(static_cast<int64_t>(size));
    numel *= static_cast<int64_t>(size);
  }
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
    throw fail("data_offsets is not [begin, end]");
  const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
  if (begin > end || end > static_cast<uint64_t>(data_bytes))
    throw fail("data_offsets " + offsets->dump() + " are not within the " +
               std::to_string(data_bytes) + " bytes of data (a truncated file?)");
  tensor.offset = data_begin + static_cast<int64_t>(begin);
  tensor.bytes = static_cast<int64_t>(end - begin);
  if (tensor.bytes != numel * element_bytes)
    throw fail("data_offsets " + offsets->dump() + " hold " + std::to_string(tensor.bytes) +
               " bytes; shape " + shape->dump() + " of " + dtype->get<std::string>() + " needs " +
               std::to_string(numel * element_bytes));
  return tensor;
}

}  // namespace

SafetensorsReader::SafetensorsReader(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error(path_ + ": cannot open (" + std::strerror(errno) + ")");
  // A constructor that throws runs no destructor: the file is closed here (a fuzzer that fed
  // thousands of broken files ran out of descriptors before this).
  try {
    read_header();
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

void SafetensorsReader::read_header() {
  struct stat info {};
  if (::fstat(fd_, &info) != 0)
    throw std::runtime_error(path_ + ": cannot stat (" + std::strerror(errno) + ")");
  const int64_t file_bytes = static_cast<int64_t>(info.st_size);
  if (file_bytes < 8)
    throw std::runtime_error(path_ + ": " + std::to_string(file_bytes) +
                             " bytes, too short for a safetensors file");
  uint8_t length_bytes[8];
  read_at(fd_, 0, length_bytes, sizeof length_bytes, path_, "the header length");
  uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(length_bytes[i]) << (8 * i);
  if (header_bytes > static_cast<uint64_t>(file_bytes - 8))
    throw std::runtime_error(path_ + ": header length " + std::to_string(header_bytes) +
                             " runs past the end of the file (" + std::to_string(file_bytes) +
                             " bytes): truncated, or not a safetensors file");
  if (header_bytes > kMaxHeaderBytes)
    throw std::runtime_error(path_ + ": header length " + std::to_string(header_bytes) +
                             " is over safetensors' limit of 100 MB");
  std::string text(header_bytes, '\0');
  read_at(fd_, 8, text.data(), text.size(), path_, "the header");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw std::runtime_error(path_ + ": the header is not JSON (" + error.what() + ")");
  }
  if (!header.is_object()) throw std::runtime_error(path_ + ": the header is not a JSON object");
  const int64_t data_begin = 8 + static_cast<int64_t>(header_bytes);
  for (auto it = header.begin(); it != header.end(); ++it)
    if (it.key() != "__metadata__")
      tensors_.push_back(
          parse_tensor(it.key(), it.value(), data_begin, file_bytes - data_begin, path_));
  std::sort(
      tensors_.begin(), tensors_.end(),
      [](const SafetensorsTensor& a, const SafetensorsTensor& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (i > 0 && tensors_[i].offset < tensors_[i - 1].offset + tensors_[i - 1].bytes)
      throw std::runtime_error(path_ + ": tensor " + tensors_[i].name + " overlaps tensor " +
                               tensors_[i - 1].name);
    index_[tensors_[i].name] = i;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsTensor* SafetensorsReader::find(const std::string& name) const {
  const auto found = index_.find(name);
  return found == index_.end() ? nullptr : &tensors_[found->second];
}

std::vector<float> SafetensorsReader::read_f32(const std::string& name) const {
  const SafetensorsTensor* tensor = find(name);
  if (!tensor) throw std::runtime_error(path_ + ": no tensor " + name);
  return read_f32(name, 0, tensor->bytes / safetensors_dtype_bytes(tensor->dtype));
}

std::vector<float> SafetensorsReader::read_f32(const std::string& name, int64_t first,
                                               int64_t count) const {
  const SafetensorsTensor* tensor = find(name);
  if (!tensor) throw std::runtime_error(path_ + ": no tensor " + name);
  const int64_t element_bytes = safetensors_dtype_bytes(tensor->dtype);
  const int64_t numel = tensor->bytes / element_bytes;
  if (first < 0 || count < 0 || first > numel || count > numel - first)
    throw std::runtime_error(path_ + ": tensor " + name + " has " + std::to_string(numel) +
                             " elements, not [" + std::to_string(first) + ", " +
                             std::to_string(first + count) + ")");
  std::vector<float> values(static_cast<size_t>(count));
  const int64_t offset = tensor->offset + first * element_bytes, bytes = count * element_bytes;
  const std::string what = "tensor " + name;
  switch (tensor->dtype) {
    case SafetensorsDType::f32:
      read_at(fd_, offset, values.data(), bytes, path_, what);
      break;
    case SafetensorsDType::bf16:
    case SafetensorsDType::f16: {
      std::vector<uint16_t> bits(values.size());
      read_at(fd_, offset, bits.data(), bytes, path_, what);
      const bool bf16 = tensor->dtype == SafetensorsDType::bf16;
      for (size_t i = 0; i < bits.size(); ++i)
        values[i] = bf16 ? bf16_bits_to_float(bits[i]) : f16_bits_to_float(bits[i]);
      break;
    }
    case SafetensorsDType::f64: {
      std::vector<double> wide(values.size());
      read_at(fd_, offset, wide.data(), bytes, path_, what);
      for (size_t i = 0; i < wide.size(); ++i) values[i] = static_cast<float>(wide[i]);
      break;
    }
  }
  return values;
}

}  // namespace sy
