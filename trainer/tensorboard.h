// TensorBoard event files written by our own code (run.tensorboard: true): TFRecord framing
// around Event protos (trainer/tensorboard_event.proto), one file per process that writes a run.
//
// A record on disk:  uint64 length (little-endian) | uint32 masked_crc32c(length bytes)
//                    | length bytes of a serialized Event | uint32 masked_crc32c(those bytes)
// The first record is an Event with file_version "brain.Event:2"; the rest carry one Summary of
// simple_value scalars per step. Scalars are float32 in TensorBoard's format, so a value there is
// the metrics.jsonl value rounded to float.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

// Built as its own library (sy_tensorboard) with hidden visibility over a static, hidden
// libprotobuf: Debian's libsentencepiece exports a protobuf of its own, and two protobufs visible
// to the dynamic linker at once break one another (trainer/CMakeLists.txt). Only what this header
// declares keeps default visibility.
#define SY_TB_API __attribute__((visibility("default")))

namespace sy {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), and the masked form TFRecord stores.
SY_TB_API uint32_t crc32c(const void* data, size_t size);
inline uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// Whether this build can write event files (protobuf was found when it was configured).
SY_TB_API bool tensorboard_available();

class SY_TB_API TensorBoardWriter {
 public:
  // Creates `dir` and events.out.tfevents.<unix time>.<host> in it, and writes the file_version
  // record. Throws std::runtime_error naming the path when it cannot, or when the build has no
  // protobuf.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event at `step` holding every (tag, value) given, then a flush. Non-finite values are
  // skipped, as metrics.jsonl writes them null.
  void write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& bytes);
  std::FILE* file_ = nullptr;
  std::string path_;
};

// One record's payload decoded with the generated Event message (for readers: the tests).
struct TensorBoardEvent {
  double wall_time = 0.0;
  int64_t step = 0;
  std::string file_version;                           // set in a file's first record only
  std::vector<std::pair<std::string, float>> scalars;  // its Summary's simple_values, in order
  bool has_summary = false;
};
// Throws std::runtime_error when `bytes` do not parse as an Event, or a summary value is not a
// simple_value.
SY_TB_API TensorBoardEvent parse_tensorboard_event(const std::string& bytes);

}  // namespace sy
