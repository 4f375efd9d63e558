// libFuzzer: bytes -> file -> SafetensorsReader (the header checked at open) -> every tensor read
// as fp32, as `switchyard import` reads a transformers shard. Every input must end in values or a
// std::exception naming the file; a crash, a sanitizer report or a hang is a finding.
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "trainer/safetensors.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) {
    const std::vector<sy::SafetensorsEntry> entries = {
        {"model.norm.weight", {4}}, {"lm_head.weight", {3, 4}}, {"empty", {0, 2}}};
    for (const sy::SafetensorsDType dtype :
         {sy::SafetensorsDType::f32, sy::SafetensorsDType::bf16}) {
      sy::SafetensorsWriter writer(
          std::string(dir) + "/" + sy::safetensors_dtype_name(dtype) + ".safetensors", entries,
          dtype);
      writer.write_next(std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f});
      writer.write_next(std::vector<float>(12, 0.25f));
      writer.write_next(std::vector<float>{});
      writer.finish();
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("safetensors", ".safetensors", data, size);
  try {
    const sy::SafetensorsReader reader(path);
    for (const sy::SafetensorsTensor& tensor : reader.tensors()) (void)reader.read_f32(tensor.name);
  } catch (const std::exception&) {
  }
  return 0;
}
