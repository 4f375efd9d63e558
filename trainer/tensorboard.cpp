#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <stdexcept>

#ifdef SY_WITH_PROTOBUF
#include "tensorboard_event.pb.h"
#endif

namespace sy {

namespace {

// The byte-at-a-time table of the reflected Castagnoli polynomial: entry b is the CRC register
// after shifting byte b through it.
std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t reg = b;
    for (int bit = 0; bit < 8; ++bit) reg = (reg >> 1) ^ ((reg & 1u) ? 0x82F63B78u : 0u);
    table[b] = reg;
  }
  return table;
}

[[maybe_unused]] double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t reg = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) reg = table[(reg ^ bytes[i]) & 0xFFu] ^ (reg >> 8);
  return reg ^ 0xFFFFFFFFu;
}

#ifdef SY_WITH_PROTOBUF

bool tensorboard_available() { return true; }

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) throw std::runtime_error(dir + ": cannot create: " + error.message());
  char host[256] = "localhost";
  if (gethostname(host, sizeof host) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  const double now = unix_seconds();
  path_ = (std::filesystem::path(dir) /
           ("events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) throw std::runtime_error(path_ + ": cannot open for writing");
  tb::Event first;
  first.set_wall_time(now);
  first.set_file_version("brain.Event:2");
  write_record(first.SerializeAsString());
  if (std::fflush(file_) != 0) throw std::runtime_error(path_ + ": write failed");
}

void TensorBoardWriter::write_scalars(int64_t step,
                                      const std::vector<std::pair<std::string, double>>& scalars) {
  tb::Event event;
  event.set_wall_time(unix_seconds());
  event.set_step(step);
  tb::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    if (!std::isfinite(value)) continue;
    tb::SummaryValue* entry = summary->add_value();
    entry->set_tag(tag);
    entry->set_simple_value(static_cast<float>(value));
  }
  write_record(event.SerializeAsString());
  // Flushed per step, like metrics.jsonl: a crash leaves every completed step readable.
  if (std::fflush(file_) != 0) throw std::runtime_error(path_ + ": write failed");
}

TensorBoardEvent parse_tensorboard_event(const std::string& bytes) {
  tb::Event event;
  if (!event.ParseFromString(bytes)) throw std::runtime_error("not a TensorBoard Event record");
  TensorBoardEvent out;
  out.wall_time = event.wall_time();
  out.step = event.step();
  out.file_version = event.file_version();
  out.has_summary = event.has_summary();
  for (const tb::SummaryValue& value : event.summary().value()) {
    if (!value.has_simple_value())
      throw std::runtime_error("summary value " + value.tag() + " is not a simple_value");
    out.scalars.emplace_back(value.tag(), value.simple_value());
  }
  return out;
}

#else  // built without protobuf

TensorBoardEvent parse_tensorboard_event(const std::string&) {
  throw std::runtime_error("this build has no protobuf: cannot parse TensorBoard events");
}

bool tensorboard_available() { return false; }

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  throw std::runtime_error("run.tensorboard: this build has no protobuf (apt-get install "
                           "libprotobuf-dev protobuf-compiler, or bash launch/setup.sh, then "
                           "reconfigure); cannot write event files to " + dir);
}

void TensorBoardWriter::write_scalars(int64_t, const std::vector<std::pair<std::string, double>>&) {}

#endif

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& bytes) {
  unsigned char header[12];
  const uint64_t length = bytes.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<unsigned char>(length >> (8 * i));
  const uint32_t length_crc = masked_crc32c(header, 8);
  const uint32_t data_crc = masked_crc32c(bytes.data(), bytes.size());
  for (int i = 0; i < 4; ++i) header[8 + i] = static_cast<unsigned char>(length_crc >> (8 * i));
  unsigned char footer[4];
  for (int i = 0; i < 4; ++i) footer[i] = static_cast<unsigned char>(data_crc >> (8 * i));
  if (std::fwrite(header, 1, sizeof header, file_) != sizeof header ||
      std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size() ||
      std::fwrite(footer, 1, sizeof footer, file_) != sizeof footer)
    throw std::runtime_error(path_ + ": write failed");
}

}  // namespace sy
