// libFuzzer: bytes -> file -> read_token_file, then open_token_file and every window of both
// splits, their loss masks and their document starts, as training reads them. Every input must
// end in token data or a std::exception naming the file; a crash, a sanitizer report or a hang
// is a finding.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "bench/fuzz/fuzz_input.h"
#include "data/token_file.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = sy::fuzz::seed_dir()) {
    std::vector<int32_t> train, val;
    for (int32_t i = 0; i < 64; ++i) train.push_back((i * 7) % 200);
    for (int32_t i = 0; i < 16; ++i) val.push_back((i * 5) % 200);
    sy::write_token_file(std::string(dir) + "/bytes.h5", train, val, 256, "bytes");
    sy::write_token_file(std::string(dir) + "/wide.h5", train, val, 70000, "bytes");
    sy::write_token_file(std::string(dir) + "/with_model.h5", train, val, 256, "sentencepiece",
                         std::string("\x0a\x03model", 7), "m.model");
    sy::TokenFileWriter masked(std::string(dir) + "/masked.h5", 256, "bytes", {}, {}, true);
    std::vector<uint8_t> mask(train.size());
    for (size_t i = 0; i < mask.size(); ++i) mask[i] = i % 3 != 0;
    masked.append_train(train.data(), static_cast<int64_t>(train.size()), mask.data());
    masked.append_val(val.data(), static_cast<int64_t>(val.size()), mask.data());
    masked.finish();
    sy::TokenFileWriter documents(std::string(dir) + "/documents.h5", 256, "bytes", {}, {}, false,
                                  {}, true);
    for (size_t i = 0; i < train.size(); i += 9) {
      documents.start_document_train();
      const size_t count = std::min<size_t>(9, train.size() - i);
      documents.append_train(train.data() + i, static_cast<int64_t>(count));
    }
    documents.append_val(val.data(), static_cast<int64_t>(val.size()));
    documents.finish();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("tokens", ".h5", data, size);
  try {
    const sy::TokenData tokens = sy::read_token_file(path);
    (void)tokens;
  } catch (const std::exception&) {
  }
  try {
    const sy::TokenFile file = sy::open_token_file(path);
    for (const auto& split : {file.train, file.val}) {
      // Bounded: a file that claims more is refused at open (stored bytes are checked).
      const int64_t count = std::min<int64_t>(split->size(), int64_t{1} << 20);
      std::vector<int32_t> window(count);
      std::vector<uint8_t> mask(count);
      split->read(0, count, window.data());
      split->read_mask(0, count, mask.data());
      // Checked at open: ascending, the first 0, each inside the split.
      if (const std::vector<int64_t>* starts = split->document_starts())
        for (int64_t start : *starts)
          if (start < 0 || start >= split->size()) __builtin_trap();
    }
  } catch (const std::exception&) {
  }
  return 0;
}
