#include "trainer/checkpoint_compat.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace sy {

namespace {

// A value on one line: scalars as written, sequences and mappings in flow style.
std::string render(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "null";
  if (node.IsScalar()) return node.Scalar();
  std::string out = node.IsSequence() ? "[" : "{";
  bool first = true;
  for (auto it = node.begin(); it != node.end(); ++it) {
    out += first ? "" : ", ";
    first = false;
    if (node.IsSequence())
      out += render(*it);
    else
      out += render(it->first) + ": " + render(it->second);
  }
  return out + (node.IsSequence() ? "]" : "}");
}

// Every key of a resolved config as "section.key" -> value text, in file order.
std::vector<std::pair<std::string, std::string>> flatten_config(const std::string& yaml) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& error) {
    throw std::runtime_error(std::string("its config attribute is not valid YAML: ") + error.what());
  }
  if (!root.IsMap()) throw std::runtime_error("its config attribute is not a YAML mapping");
  std::vector<std::pair<std::string, std::string>> keys;
  for (auto section = root.begin(); section != root.end(); ++section) {
    const std::string name = section->first.Scalar();
    if (section->second.IsMap())
      for (auto key = section->second.begin(); key != section->second.end(); ++key) {
        const std::string path = name + "." + key->first.Scalar();
        keys.emplace_back(path, canonical_config_value(path, render(key->second)));
      }
    else
      keys.emplace_back(name, render(section->second));
  }
  return keys;
}

bool shapes_model(const std::string& key) {
  if (key == "model.attention_kernel") return false;  // how, not what: any kernel resumes
  if (key == "moe.expert_kernel") return false;      // likewise for the expert FFN kernel
  if (key.rfind("model.", 0) == 0) return true;
  if (key.rfind("moe.", 0) != 0) return false;
  if (key == "moe.aux_loss_coef" || key == "moe.z_loss_coef") return false;
  const std::string rate = "_rate";
  return !(key.size() >= rate.size() && key.compare(key.size() - rate.size(), rate.size(), rate) == 0);
}

using FlatConfig = std::vector<std::pair<std::string, std::string>>;

std::string value_of(const FlatConfig& config, const std::string& key) {
  for (const auto& [name, value] : config)
    if (name == key) return value;
  return "";
}

// Whether the model `config` describes has no use for `key`: the moe keys (but num_experts) of a
// dense model, the dense FFN's width when every layer is MoE.
bool unused_by(const FlatConfig& config, const FlatConfig& defaults, const std::string& key) {
  auto value = [&](const std::string& name) {
    const std::string found = value_of(config, name);
    return found.empty() ? value_of(defaults, name) : found;
  };
  const bool dense = value("moe.num_experts") == "0";
  if (key.rfind("moe.", 0) == 0) return dense && key != "moe.num_experts";
  return key == "model.ffn_hidden" && !dense && value("moe.layers") == "all";
}

}  // namespace

ConfigDiff compare_configs(const std::string& checkpoint_yaml, const Config& config) {
  const auto theirs = flatten_config(checkpoint_yaml);
  const auto ours = flatten_config(config_to_yaml(config));
  // A key the checkpoint lacks came into the config after it was written (moe.shared_expert_
  // hidden, say): at its default it changes nothing, so it is no difference.
  const auto defaults = flatten_config(config_to_yaml(Config{}));
  std::vector<std::string> keys;
  for (const auto& [key, value] : ours) keys.push_back(key);
  for (const auto& [key, value] : theirs)
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  ConfigDiff diff;
  for (const std::string& key : keys) {
    auto find = [&](const std::vector<std::pair<std::string, std::string>>& list) -> const std::string* {
      for (const auto& [name, value] : list)
        if (name == key) return &value;
      return nullptr;
    };
    const std::string* before = find(theirs);
    const std::string* now = find(ours);
    if (before && now && *before == *now) continue;
    const std::string* fallback = find(defaults);
    if (!before && now && fallback && *now == *fallback) continue;
    const std::string line = key + " (checkpoint " + (before ? *before : "absent") + ", config " +
                             (now ? *now : "absent") + ")";
    // A key neither model uses changes no number: the run goes on exactly.
    if (shapes_model(key) && unused_by(theirs, defaults, key) && unused_by(ours, defaults, key))
      diff.notes.push_back(line + ", not used by this model");
    else if (shapes_model(key)) diff.errors.push_back(line);
    else if (key == "train.micro_batch_size")
      diff.warnings.push_back(line);
    else
      diff.notes.push_back(line);
  }
  return diff;
}

std::string checkpoint_config_value(const std::string& checkpoint_yaml, const std::string& key) {
  return value_of(flatten_config(checkpoint_yaml), key);
}

}  // namespace sy
