// TensorBoard event files (run.tensorboard: true) read back by a reader of our own: the TFRecord
// framing with both masked CRC32Cs checked, the Events parsed with the generated protobuf code,
// and every (step, tag, value) equal to what metrics.jsonl holds for the same short run. A
// flipped byte anywhere in a record is caught by a CRC.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/config.h"
#include "trainer/tensorboard.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

TEST(Crc32c, MatchesTheCastagnoliCheckValues) {
  // The check value of CRC-32C ("123456789") and the iSCSI test vector of 32 zero bytes
  // (RFC 3720, B.4).
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::vector<unsigned char> zeros(32, 0);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  std::vector<unsigned char> ascending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c("", 0), 0u);
}

uint64_t read_le(const std::string& bytes, size_t at, int width) {
  uint64_t value = 0;
  for (int i = 0; i < width; ++i)
    value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
  return value;
}

// The payloads of every record of a TFRecord file. Throws std::runtime_error "<what> at byte N"
// for a truncated record or a CRC that does not match.
std::vector<std::string> read_records(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file + ": cannot open");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    const std::string where = " at byte " + std::to_string(at);
    if (bytes.size() - at < 12) throw std::runtime_error("truncated header" + where);
    if (read_le(bytes, at + 8, 4) != masked_crc32c(bytes.data() + at, 8))
      throw std::runtime_error("length CRC mismatch" + where);
    const uint64_t length = read_le(bytes, at, 8);
    if (bytes.size() - at - 12 < length + 4) throw std::runtime_error("truncated record" + where);
    const std::string payload = bytes.substr(at + 12, length);
    if (read_le(bytes, at + 12 + length, 4) != masked_crc32c(payload.data(), payload.size()))
      throw std::runtime_error("data CRC mismatch" + where);
    records.push_back(payload);
    at += 12 + length + 4;
  }
  return records;
}

// The message of the std::runtime_error that `f` throws ("" when it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}

using Scalars = std::map<std::pair<int64_t, std::string>, float>;  // (step, tag) -> value

// metrics.jsonl as TensorBoard scalars: every number but the step and the timing fields, arrays
// flattened to "<key>/layer<l>" and "<key>/layer<l>/expert<e>", nulls left out, values as float.
Scalars scalars_of_metrics(const fs::path& file) {
  Scalars out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json record = nlohmann::json::parse(line);
    const int64_t step = record.at("step").get<int64_t>();
    for (const auto& [key, value] : record.items()) {
      if (key == "step" || key == "time" || key == "elapsed_s") continue;
      const auto put = [&](const std::string& tag, const nlohmann::json& number) {
        if (number.is_number()) out[{step, tag}] = static_cast<float>(number.get<double>());
      };
      if (!value.is_array()) {
        put(key, value);
        continue;
      }
      for (size_t l = 0; l < value.size(); ++l) {
        const std::string layer = key + "/layer" + std::to_string(l);
        if (!value[l].is_array()) {
          put(layer, value[l]);
          continue;
        }
        for (size_t e = 0; e < value[l].size(); ++e)
          put(layer + "/expert" + std::to_string(e), value[l][e]);
      }
    }
  }
  return out;
}

class TensorBoardRun : public ::testing::Test {
 protected:
  static fs::path dir;
  static std::string events_file;

  // One short training run shared by the tests of this suite.
  static void SetUpTestSuite() {
    if (!tensorboard_available()) return;  // each test skips, saying why
    dir = fs::temp_directory_path() /
          ("sy_tensorboard_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "the quick brown fox jumps over the lazy dog. "
                              "a mixture of experts routes each token to a few of its experts. ",
                              60, 95);
    Config c = test::tiny_moe(32);
    c.moe.capacity_factor = 1.0;  // some drops, so that dropped_frac is not all zero
    c.train.micro_batch_size = 4;
    c.train.grad_accum_steps = 1;
    c.train.steps = 12;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 3;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 6;
    c.eval.batches = 2;
    c.run.dir = (dir / "run").string();
    c.run.log_every = 3;
    c.run.tensorboard = true;
    train(c, {.print = false});
    for (const auto& entry : fs::directory_iterator(dir / "run" / "tensorboard"))
      if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
        events_file = events_file.empty() ? entry.path().string() : "more than one";
  }
  static void TearDownTestSuite() {
    if (!dir.empty()) fs::remove_all(dir);
  }
  void SetUp() override {
    if (!tensorboard_available())
      GTEST_SKIP() << "built without protobuf (apt-get install libprotobuf-dev protobuf-compiler)";
  }
};

fs::path TensorBoardRun::dir;
std::string TensorBoardRun::events_file;

TEST_F(TensorBoardRun, RecordsEqualMetricsJsonl) {
  ASSERT_FALSE(events_file.empty()) << "no events.out.tfevents.* in run/tensorboard";
  ASSERT_NE(events_file, "more than one");
  EXPECT_TRUE(load_config((dir / "run" / "config.yaml").string()).run.tensorboard)
      << "run.tensorboard is saved with the resolved config";

  const std::vector<std::string> records = read_records(events_file);
  ASSERT_GE(records.size(), 2u);
  const TensorBoardEvent first = parse_tensorboard_event(records[0]);
  EXPECT_EQ(first.file_version, "brain.Event:2");
  EXPECT_FALSE(first.has_summary);
  EXPECT_GT(first.wall_time, 1.7e9) << "seconds since the Unix epoch";

  Scalars from_events;
  for (size_t r = 1; r < records.size(); ++r) {
    const TensorBoardEvent event = parse_tensorboard_event(records[r]);
    ASSERT_TRUE(event.has_summary) << "record " << r;
    EXPECT_GE(event.wall_time, first.wall_time);
    for (const auto& [tag, value] : event.scalars) {
      const bool fresh = from_events.emplace(std::make_pair(event.step, tag), value).second;
      EXPECT_TRUE(fresh) << "step " << event.step << " tag " << tag << " twice";
    }
  }
  const Scalars expected = scalars_of_metrics(dir / "run" / "metrics.jsonl");
  ASSERT_FALSE(expected.empty());
  for (const char* tag : {"loss", "lm_loss", "aux_loss", "z_loss", "lr", "grad_norm",
                          "tokens_per_s", "dropped_frac", "load_cv/layer0",
                          "expert_load/layer1/expert3", "router_entropy/layer1"})
    EXPECT_TRUE(expected.count({12, tag})) << tag << " missing from metrics.jsonl at step 12";
  EXPECT_TRUE(expected.count({6, "val_loss"}) && expected.count({12, "val_loss"}));
  // Bitwise: both sides are the same double rounded to float once.
  for (const auto& [key, value] : expected) {
    const auto found = from_events.find(key);
    if (found == from_events.end()) {
      ADD_FAILURE() << "step " << key.first << " tag " << key.second << " not in the events";
      continue;
    }
    EXPECT_EQ(std::memcmp(&found->second, &value, sizeof value), 0)
        << "step " << key.first << " tag " << key.second << ": " << found->second << " vs "
        << value;
  }
  for (const auto& [key, value] : from_events)
    EXPECT_TRUE(expected.count(key))
        << "step " << key.first << " tag " << key.second << " not in metrics.jsonl";
}

TEST_F(TensorBoardRun, AFlippedByteFailsACrc) {
  ASSERT_FALSE(events_file.empty());
  ASSERT_NE(events_file, "more than one");
  std::ifstream in(events_file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t second_record = 12 + read_le(bytes, 0, 8) + 4;
  const auto flipped = [&](size_t at) {
    std::string copy = bytes;
    copy[at] = static_cast<char>(copy[at] ^ 0x10);
    const fs::path file = dir / "corrupt.tfevents";
    std::ofstream(file, std::ios::binary | std::ios::trunc) << copy;
    return error_of([&] { read_records(file.string()); });
  };
  EXPECT_EQ(error_of([&] { read_records(events_file); }), "");
  EXPECT_EQ(flipped(second_record + 1), "length CRC mismatch at byte " +
                                            std::to_string(second_record));
  EXPECT_EQ(flipped(second_record + 12 + 5),
            "data CRC mismatch at byte " + std::to_string(second_record));
  // The last byte is the last record's stored data CRC.
  EXPECT_EQ(flipped(bytes.size() - 1).rfind("data CRC mismatch at byte ", 0), 0u);
}

}  // namespace
}  // namespace sy
