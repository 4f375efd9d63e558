// Whether a checkpoint may be resumed under this run's config (SPEC.md section 6,
// docs/checkpoint.md "Resuming"): the keys that shape the model must be equal; the others may
// change, and are reported.
#pragma once
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

// What changed between the checkpoint's config and this run's. Each entry names the key with
// both values: "model.d_model (checkpoint 16, config 32)".
struct ConfigDiff {
  std::vector<std::string> errors;    // keys that shape the model: model.*, moe.* (except coefs, *_rate)
  std::vector<std::string> warnings;  // train.micro_batch_size (the routing groups change)
  std::vector<std::string> notes;     // everything else that may change on resume
};
// Throws std::runtime_error when checkpoint_yaml is not a config mapping.
ConfigDiff compare_configs(const std::string& checkpoint_yaml, const Config& config);

// The value of "section.key" in a checkpoint's config, as compare_configs prints it ("" when
// absent). Throws std::runtime_error as compare_configs does.
std::string checkpoint_config_value(const std::string& checkpoint_yaml, const std::string& key);

}  // namespace sy
