// The CUDA backend's environment switches (SY_CUDA_PROFILE, SY_CUDA_ALLOCATOR, SY_GROUPED_GEMM,
// SY_CUDA_SPLIT_MASTERS, SY_GG_SM90_*, SY_CUDNN_BWD_WORKSPACE_MIB, SY_CUDNN_DOCUMENTS,
// SY_CUDNN_PLANS, SY_CUDNN_FWD_PLAN, SY_CUDNN_BWD_PLAN, SY_ROUTER_TOKEN_KERNEL, SY_ADAMW_BLOCKS,
// SY_ADAMW_PARTS, SY_ADAMW_SHAPE, SY_CUBLAS_WORKSPACE_MIB: measurement and tuning knobs,
// docs/cuda.md): each takes a few fixed values or a bounded whole number, and anything else is an
// error that names the variable and what it takes, never a silent default (a typo in a
// measurement switch would time the wrong thing). cudnn_attention.cu parses its knob lists
// (SY_CUDNN_FWD_KNOBS, SY_CUDNN_BWD_KNOBS) under the same rule.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>

namespace sy::cuda {

// The value of environment variable `name` when it is one of `allowed`; nullptr when unset or
// empty. Throws std::invalid_argument for any other value.
inline const char* env_choice(const char* name, std::initializer_list<const char*> allowed) {
  const char* value = std::getenv(name);
  if (!value || !*value) return nullptr;
  std::string expected;
  for (const char* a : allowed) {
    if (std::strcmp(value, a) == 0) return a;
    expected += (expected.empty() ? "" : ", ") + std::string(a);
  }
  throw std::invalid_argument(std::string(name) + " must be one of " + expected + ", got '" +
                              value + "'");
}

// Whether env_choice(name, {"0", "1"}) is `value`.
inline bool env_is(const char* name, const char* value) {
  const char* set = env_choice(name, {"0", "1"});
  return set && std::strcmp(set, value) == 0;
}

// The value of environment variable `name` as a whole number from 0 to `max`; nullopt when unset
// or empty. Throws std::invalid_argument for anything else, with `meaning` (what the number
// counts) in the message.
inline std::optional<int64_t> env_whole_number(const char* name, int64_t max,
                                               const char* meaning) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long number = std::strtoll(value, &end, 10);
  // (strtoll also takes leading blanks and a sign: digits only here.)
  if (*value < '0' || *value > '9' || errno != 0 || *end != '\0' || number > max)
    throw std::invalid_argument(std::string(name) + " must be a whole number from 0 to " +
                                std::to_string(max) + " (" + meaning + "), got '" + value + "'");
  return static_cast<int64_t>(number);
}

}  // namespace sy::cuda
