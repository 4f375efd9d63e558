// The CUDA backend's environment switches (SY_CUDA_PROFILE, SY_GG_SM90_*: measurement and
// fallback knobs, docs/cuda.md): each takes a few fixed values, and a value outside them is an
// error that names the variable and its values, never a silent default (a typo in a measurement
// switch would otherwise time the wrong thing).
#pragma once
#include <cstdlib>
#include <cstring>
#include <initializer_list>
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

}  // namespace sy::cuda
