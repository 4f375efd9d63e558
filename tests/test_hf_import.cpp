// switchyard import (docs/export.md, "Import from Hugging Face transformers") and the
// safetensors reader under it: the reader's checks and conversions; export then import of small
// MoE and dense runs gives every parameter back bitwise (bf16: the rounded values), a sharded
// folder imports the same, and each refusal names its key, tensor or file.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "tests/synthetic_corpus.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/export.h"
#include "trainer/hf_import.h"
#include "trainer/safetensors.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A safetensors file of one tensor per {name, dtype, shape, raw bytes}, laid out by hand.
std::string handmade_safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  return bytes + header + data;
}

std::string reader_error(const fs::path& path) {
  try {
    SafetensorsReader reader(path.string());
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "(no error)";
}

// ---- the reader --------------------------------------------------------------------------------

TEST(SafetensorsReader, ReadsWhatTheWriterWrote) {
  const fs::path dir = temp_dir("sy_st_read");
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.1f, 1e-30f, -0.0f};
  for (const SafetensorsDType dtype : {SafetensorsDType::f32, SafetensorsDType::bf16}) {
    const fs::path path = dir / "a.safetensors";
    SafetensorsWriter writer(path.string(), {{"a", {2, 3}}, {"empty", {0}}}, dtype);
    writer.write_next(a);
    writer.write_next({});
    writer.finish();
    SafetensorsReader reader(path.string());
    ASSERT_EQ(reader.tensors().size(), 2u);
    EXPECT_EQ(reader.find("a")->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(reader.find("a")->dtype, dtype);
    EXPECT_EQ(reader.find("missing"), nullptr);
    const std::vector<float> got = reader.read_f32("a");
    for (size_t i = 0; i < a.size(); ++i) {
      const float want = dtype == SafetensorsDType::f32
                             ? a[i]
                             : bf16_bits_to_float(bf16_bits_round_nearest_even(a[i]));
      EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want)) << i;
    }
    EXPECT_TRUE(reader.read_f32("empty").empty());
  }
  fs::remove_all(dir);
}

TEST(SafetensorsReader, F16AndF64ConvertExactlyOrRounded) {
  // 1, -2, 65504 (the largest half), 2^-24 (the smallest subnormal), -0, infinity.
  const uint16_t half[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x7C00};
  const float want[] = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), -0.0f, INFINITY};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(f16_bits_to_float(half[i])),
              std::bit_cast<uint32_t>(want[i]));
  EXPECT_TRUE(std::isnan(f16_bits_to_float(0x7E00)));

  const fs::path dir = temp_dir("sy_st_f16");
  const double wide[] = {0.1, -3.0};
  std::string data(reinterpret_cast<const char*>(half), sizeof half);
  data.append(reinterpret_cast<const char*>(wide), sizeof wide);
  write_file(dir / "m.safetensors",
             handmade_safetensors(R"({"h":{"dtype":"F16","shape":[6],"data_offsets":[0,12]},)"
                                  R"("d":{"dtype":"F64","shape":[2],"data_offsets":[12,28]},)"
                                  R"("__metadata__":{"anything":"ignored"}})",
                                  data));
  SafetensorsReader reader((dir / "m.safetensors").string());
  EXPECT_EQ(reader.tensors()[0].name, "h") << "in file order";
  const std::vector<float> h = reader.read_f32("h");
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(reader.read_f32("d"), (std::vector<float>{0.1f, -3.0f}));
  fs::remove_all(dir);
}

TEST(SafetensorsReader, RefusesABrokenFileNamingIt) {
  const fs::path dir = temp_dir("sy_st_bad");
  const fs::path path = dir / "bad.safetensors";
  auto expect = [&](const std::string& header, const std::string& data, const std::string& what) {
    write_file(path, handmade_safetensors(header, data));
    const std::string error = reader_error(path);
    EXPECT_NE(error.find(path.string() + ": "), std::string::npos) << error;
    EXPECT_NE(error.find(what), std::string::npos) << error;
  };
  expect(R"({"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})", "x",
         "tensor a: dtype I8 is not one of F32, BF16, F16, F64");
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234",
         "tensor a: data_offsets [0,8] are not within the 4 bytes of data (a truncated file?)");
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "1234",
         "tensor a: data_offsets [0,4] hold 4 bytes; shape [2] of F32 needs 8");
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
         "123456", "tensor b overlaps tensor a");
  expect(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234",
         "tensor a: shape [-1] is not of counts");
  expect(R"({"a": 5})", "", "tensor a: its header entry is not a JSON object");
  expect("[1, 2", "", "the header is not JSON");

  std::string bytes =
      handmade_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "1234");
  bytes[0] = static_cast<char>(0xFF);  // a header length past the end of the file
  write_file(path, bytes);
  EXPECT_NE(reader_error(path).find("header length 255 runs past the end of the file"),
            std::string::npos)
      << reader_error(path);
  write_file(path, "abc");
  EXPECT_NE(reader_error(path).find("3 bytes, too short"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sy
