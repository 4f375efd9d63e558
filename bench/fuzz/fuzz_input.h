// Shared by the fuzz targets: the readers take paths, so each input goes to a file of this
// process's own (several fuzzers may run at once) before the reader opens it.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace sy::fuzz {

// Writes the input to /tmp/sy_fuzz_<tag>_<pid><suffix> (or $TMPDIR) and returns the path.
inline std::string write_input(const char* tag, const char* suffix, const uint8_t* data,
                               size_t size) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/sy_fuzz_" + tag + "_" +
                           std::to_string(::getpid()) + suffix;
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) std::abort();  // the harness, not the reader: stop loudly
  if (size > 0 && std::fwrite(data, 1, size, file) != size) std::abort();
  std::fclose(file);
  return path;
}

// SY_FUZZ_WRITE_SEED=<dir>: the target writes its seed input(s) there in LLVMFuzzerInitialize
// (bench/fuzz/run.sh builds the seed corpora this way, from the code's own writers).
inline const char* seed_dir() {
  const char* dir = std::getenv("SY_FUZZ_WRITE_SEED");
  return dir && *dir ? dir : nullptr;
}

}  // namespace sy::fuzz
