// data.* (docs/config.md): where the training and validation tokens come from.
// trainer/config.cpp parses and validates it.
#pragma once
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace sy {

enum class Sampling { random, epoch };

struct DataConfig {
  std::string path = "corpora/brown.h5";  // a token file (data/token_file.h)
  // A training mixture (docs/data.md, Mixtures): the /train splits of these token files instead
  // of path's, each sequence drawn from one of them in proportion to train_weights (empty: to
  // their sizes). path still gives the validation set and the tokenizer.
  std::vector<std::string> train_paths;
  std::vector<double> train_weights;
  // Document masking (docs/data.md): attention stays inside each document of a sequence,
  // rotary positions restart at each document, and no target crosses into the next document.
  // Needs token files that record their document boundaries.
  bool document_mask = false;
  // How a step's sequences are drawn (docs/data.md): random windows (each sequence's start
  // uniform over the split, independently), or epochs (the split cut into windows, each taken
  // once an epoch in a new order; data.path's /train only).
  Sampling sampling = Sampling::random;
};

// Whether `path` names data.path's file, in the same spelling or another ("./a.h5" for "a.h5").
inline bool names_data_path(const DataConfig& data, const std::string& path) {
  if (path == data.path) return true;
  std::error_code error;
  return std::filesystem::equivalent(path, data.path, error) && !error;
}

}  // namespace sy
