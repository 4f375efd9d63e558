// data.* (docs/config.md): where the training and validation tokens come from.
// trainer/config.cpp parses and validates it.
#pragma once
#include <string>

namespace sy {

struct DataConfig {
  std::string path = "corpora/brown.h5";  // a token file (data/token_file.h)
};

}  // namespace sy
