// data.* (docs/config.md): where the training and validation tokens come from.
// trainer/config.cpp parses and validates it.
#pragma once
#include <string>
#include <vector>

namespace sy {

struct DataConfig {
  std::string path = "corpora/brown.h5";  // a token file (data/token_file.h)
  // A training mixture (docs/data.md, Mixtures): the /train splits of these token files instead
  // of path's, each sequence drawn from one of them in proportion to train_weights (empty: to
  // their sizes). path still gives the validation set and the tokenizer.
  std::vector<std::string> train_paths;
  std::vector<double> train_weights;
};

}  // namespace sy
