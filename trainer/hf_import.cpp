#include "trainer/hf_import.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "data/hdf5_io.h"
#include "data/hf_tokenizer.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "trainer/atomic_file.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/hf_layout.h"
#include "trainer/safetensors.h"
#include "trainer/yaml_quote.h"

namespace sy {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kWeightsIndexFile = "model.safetensors.index.json";
constexpr const char* kTokenizerModelFile = "tokenizer.model";

// config.json as parsed, and the path that names it in messages.
struct HfConfig {
  json values;
  std::string path;  // "DIR/config.json"
  HfArchitecture architecture = HfArchitecture::llama;
};

// What transformers assumes for a key config.json leaves out (the defaults of LlamaConfig,
// MistralConfig, MixtralConfig, OlmoeConfig, Qwen3Config and Qwen3MoeConfig): a missing key
// means what it means there, not what it means to us.
struct HfDefaults {
  double rms_norm_eps, rope_theta;
  int64_t num_key_value_heads;  // -1: num_attention_heads
  int64_t max_position_embeddings, num_local_experts, num_experts_per_tok;
  int64_t head_dim;  // -1: hidden_size / num_attention_heads
};
constexpr HfDefaults kLlamaDefaults{1e-6, 10000.0, -1, 2048, 0, 0, -1};
constexpr HfDefaults kMixtralDefaults{1e-5, 1e6, 8, 4096 * 32, 8, 2, -1};
constexpr HfDefaults kOlmoeDefaults{1e-5, 10000.0, -1, 4096, 64, 8, -1};
constexpr HfDefaults kQwen3Defaults{1e-6, 10000.0, 32, 32768, 0, 0, 128};
constexpr HfDefaults kQwen3MoeDefaults{1e-6, 10000.0, 4, 32768, 128, 8, -1};
constexpr HfDefaults kMistralDefaults{1e-6, 10000.0, 8, 4096 * 32, 0, 0, -1};
// MistralConfig's sliding_window when config.json leaves the key out (null: none).
constexpr int64_t kMistralDefaultWindow = 4096;

const HfDefaults& defaults_of(const HfConfig& hf) {
  switch (hf.architecture) {
    case HfArchitecture::mixtral:
      return kMixtralDefaults;
    case HfArchitecture::olmoe:
      return kOlmoeDefaults;
    case HfArchitecture::qwen3:
      return kQwen3Defaults;
    case HfArchitecture::qwen3_moe:
      return kQwen3MoeDefaults;
    case HfArchitecture::mistral:
      return kMistralDefaults;
    case HfArchitecture::llama:
      break;
  }
  return kLlamaDefaults;
}

// The member `key`, or nullptr when it is absent or null (transformers reads both as unset).
const json* find_key(const json& object, const std::string& key) {
  const auto found = object.find(key);
  return found == object.end() || found->is_null() ? nullptr : &*found;
}

int64_t count_or(const HfConfig& hf, const std::string& key, int64_t fallback) {
  const json* value = find_key(hf.values, key);
  if (!value) return fallback;
  if (!value->is_number_integer() || value->get<int64_t>() < 0)
    throw ImportError(hf.path + ": " + key + " " + value->dump() + " is not a count");
  return value->get<int64_t>();
}

// The expert count. Mixtral's key is num_local_experts, OLMoE's and Qwen3-MoE's num_experts, but
// transformers 5 maps num_experts onto num_local_experts (attribute_map) and saves a Qwen3-MoE
// under that name; so either key is read, and two that disagree are refused.
int64_t expert_count(const HfConfig& hf) {
  const int64_t fallback = defaults_of(hf).num_local_experts;
  const int64_t local = count_or(hf, "num_local_experts", -1),
                named = count_or(hf, "num_experts", -1);
  if (local >= 0 && named >= 0 && local != named)
    throw ImportError(hf.path + ": num_local_experts " + std::to_string(local) +
                      " and num_experts " + std::to_string(named) + " disagree");
  return local >= 0 ? local : named >= 0 ? named : fallback;
}

int64_t required_count(const HfConfig& hf, const std::string& key) {
  if (!find_key(hf.values, key)) throw ImportError(hf.path + ": no " + key);
  return count_or(hf, key, 0);
}

double number_or(const HfConfig& hf, const json& object, const std::string& key, double fallback) {
  const json* value = find_key(object, key);
  if (!value) return fallback;
  if (!value->is_number())
    throw ImportError(hf.path + ": " + key + " " + value->dump() + " is not a number");
  return value->get<double>();
}

bool flag_or(const HfConfig& hf, const std::string& key, bool fallback) {
  const json* value = find_key(hf.values, key);
  if (!value) return fallback;
  if (!value->is_boolean())
    throw ImportError(hf.path + ": " + key + " " + value->dump() + " is not true or false");
  return value->get<bool>();
}

// The model, from `architectures` (the class transformers builds) and `model_type`.
HfArchitecture read_architecture(const json& values, const std::string& path) {
  constexpr HfArchitecture kKnown[] = {HfArchitecture::llama,     HfArchitecture::mixtral,
                                       HfArchitecture::olmoe,     HfArchitecture::qwen3,
                                       HfArchitecture::qwen3_moe, HfArchitecture::mistral};
  const std::string known =
      "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, OlmoeForCausalLM, "
      "Qwen3ForCausalLM and Qwen3MoeForCausalLM";
  const json* architectures = find_key(values, "architectures");
  const json* model_type = find_key(values, "model_type");
  std::string architecture, type;
  if (architectures) {
    if (!architectures->is_array() || architectures->size() != 1 ||
        !(*architectures)[0].is_string())
      throw ImportError(path + ": architectures " + architectures->dump() +
                        ": expected one class name (import reads " + known + ")");
    architecture = (*architectures)[0].get<std::string>();
  }
  if (model_type) type = model_type->is_string() ? model_type->get<std::string>() : "?";
  if (architecture.empty() && type.empty())
    throw ImportError(path + ": neither architectures nor model_type says what model it is");
  for (const HfArchitecture candidate : kKnown) {
    if (!(architecture.empty() ? type == hf_model_type(candidate)
                               : architecture == hf_class_name(candidate)))
      continue;
    if (!type.empty() && type != hf_model_type(candidate))
      throw ImportError(path + ": model_type " + model_type->dump() + " does not go with " +
                        architecture);
    return candidate;
  }
  throw ImportError(path + ": " +
                    (architecture.empty() ? "model_type " + model_type->dump()
                                          : "architectures " + architectures->dump()) +
                    " is not supported: import reads " + known);
}

HfConfig read_hf_config(const fs::path& folder) {
  HfConfig hf;
  hf.path = (folder / kConfigFile).string();
  std::error_code error;
  if (!fs::is_directory(folder, error))
    throw ImportError(folder.string() + ": not a folder (a transformers model folder)");
  if (!fs::is_regular_file(hf.path, error))
    throw ImportError(folder.string() + ": no config.json (not a transformers model folder?)");
  std::ifstream in(hf.path);
  try {
    hf.values = json::parse(in);
  } catch (const json::exception& problem) {
    throw ImportError(hf.path + ": not JSON (" + problem.what() + ")");
  }
  if (!hf.values.is_object()) throw ImportError(hf.path + ": not a JSON object");
  hf.architecture = read_architecture(hf.values, hf.path);
  return hf;
}

// One rope dict's scaling into `rotary`: transformers 5's rope_parameters or 4's rope_scaling
// (`name`), {rope_type (4: also type), factor, ...}. The types that only change the frequencies
// (model/rope.h): default, linear, llama3. Returns the problem, "" when there is none.
std::string read_scaling(const HfConfig& hf, const json& rope, const std::string& name,
                         Rotary& rotary) {
  if (!rope.is_object()) return name + " " + rope.dump() + ": expected an object";
  const json* type = find_key(rope, "rope_type");
  if (!type) type = find_key(rope, "type");
  if (type && !type->is_string())
    return name + ".rope_type " + type->dump() + ": expected a rope type's name";
  const std::string kind = type ? type->get<std::string>() : "default";
  if (kind != "default" && kind != "linear" && kind != "llama3")
    return name + " " + rope.dump() + ": rope type " + (type ? type->dump() : "?") +
           " is not supported (default, linear and llama3 are)";
  for (auto it = rope.begin(); it != rope.end(); ++it) {
    const std::string& key = it.key();
    const bool known =
        key == "rope_type" || key == "type" || key == "rope_theta" ||
        (key == "factor" && kind != "default") ||
        (kind == "llama3" && (key == "low_freq_factor" || key == "high_freq_factor" ||
                              key == "original_max_position_embeddings"));
    if (key == "partial_rotary_factor" && number_or(hf, rope, key, 1.0) == 1.0) continue;
    if (!known)
      return name + "." + key + " " + it.value().dump() + ": not part of the " + kind +
             " rotary (partial rotary and attention scaling are not supported)";
  }
  rotary.scaling = kind == "linear"   ? RopeScaling::linear
                   : kind == "llama3" ? RopeScaling::llama3
                                      : RopeScaling::none;
  if (kind == "default") return "";
  for (const char* key :
       {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    if (std::string(key) != "factor" && kind != "llama3") break;
    if (!find_key(rope, key)) return name + " " + rope.dump() + ": no " + key;
  }
  rotary.factor = number_or(hf, rope, "factor", 1.0);
  if (kind == "llama3") {
    rotary.low_freq_factor = number_or(hf, rope, "low_freq_factor", 1.0);
    rotary.high_freq_factor = number_or(hf, rope, "high_freq_factor", 4.0);
    const json& original = rope.at("original_max_position_embeddings");
    if (!original.is_number_integer())
      return name + ".original_max_position_embeddings " + original.dump() + " is not a count";
    rotary.original_max_position = original.get<int64_t>();
  }
  if (std::string problem = rotary_problem(rotary); !problem.empty())
    return name + " " + rope.dump() + ": " + problem;
  return "";
}

// The rotary of config.json into `rotary`: transformers 5's rope_parameters, 4's rope_theta and
// rope_scaling (where both say something they must agree: which one transformers reads depends
// on its version), else the model type's default theta and no scaling. Returns the problem.
std::string read_rotary(const HfConfig& hf, Rotary& rotary) {
  const json& values = hf.values;
  rotary = Rotary(number_or(hf, values, "rope_theta", defaults_of(hf).rope_theta));
  Rotary from_scaling = rotary;
  const json* scaling = find_key(values, "rope_scaling");
  if (scaling) {
    if (std::string problem = read_scaling(hf, *scaling, "rope_scaling", from_scaling);
        !problem.empty())
      return problem;
  }
  const json* parameters = find_key(values, "rope_parameters");
  if (!parameters) {
    rotary = from_scaling;
    return "";
  }
  if (std::string problem = read_scaling(hf, *parameters, "rope_parameters", rotary);
      !problem.empty())
    return problem;
  if (const json* nested = find_key(*parameters, "rope_theta")) {
    const double theta = number_or(hf, *parameters, "rope_theta", 0);
    if (const json* flat = find_key(values, "rope_theta"); flat && theta != rotary.theta)
      return "rope_theta " + flat->dump() + " differs from rope_parameters.rope_theta " +
             nested->dump() + ": which one transformers uses depends on its version";
    rotary.theta = theta;
  }
  from_scaling.theta = rotary.theta;
  if (scaling && from_scaling != rotary)
    return "rope_scaling " + scaling->dump() + " differs from rope_parameters " +
           parameters->dump() + ": which one transformers uses depends on its version";
  return "";
}

// Grouped-query attention's key/value heads, transformers' default where config.json has none.
int64_t key_value_heads(const HfConfig& hf) {
  const int64_t fallback = defaults_of(hf).num_key_value_heads;
  return count_or(hf, "num_key_value_heads",
                  fallback < 0 ? required_count(hf, "num_attention_heads") : fallback);
}

// Each head's width: head_dim, else the model type's default (hidden_size / num_attention_heads
// but for Qwen3's 128).
int64_t head_width(const HfConfig& hf) {
  const int64_t fallback = defaults_of(hf).head_dim;
  if (fallback > 0) return count_or(hf, "head_dim", fallback);
  const int64_t heads = required_count(hf, "num_attention_heads");
  return count_or(hf, "head_dim", heads > 0 ? required_count(hf, "hidden_size") / heads : 0);
}

// The layers whose FFN is MoE. Mixtral and OLMoE: all. Qwen3-MoE: layer l unless listed in
// mlp_only_layers, when num_experts > 0 and (l + 1) % decoder_sparse_step == 0.
std::vector<bool> hf_moe_layers(const HfConfig& hf, int64_t num_experts) {
  const int64_t layers = required_count(hf, "num_hidden_layers");
  if (!hf_has_experts(hf.architecture)) return std::vector<bool>(layers, false);
  if (hf.architecture != HfArchitecture::qwen3_moe) return std::vector<bool>(layers, true);
  const int64_t step = count_or(hf, "decoder_sparse_step", 1);
  if (step < 1) throw ImportError(hf.path + ": decoder_sparse_step 0 is not a step");
  std::vector<bool> mask(layers);
  for (int64_t l = 0; l < layers; ++l) mask[l] = num_experts > 0 && (l + 1) % step == 0;
  if (const json* dense = find_key(hf.values, "mlp_only_layers")) {
    if (!dense->is_array())
      throw ImportError(hf.path + ": mlp_only_layers " + dense->dump() + " is not a list");
    for (const json& layer : *dense) {
      if (!layer.is_number_integer() || layer.get<int64_t>() < 0 || layer.get<int64_t>() >= layers)
        throw ImportError(hf.path + ": mlp_only_layers holds " + layer.dump() +
                          ", not a layer index below num_hidden_layers " + std::to_string(layers));
      mask[layer.get<int64_t>()] = false;
    }
  }
  return mask;
}

// Everything in config.json that our model would compute differently from transformers, as one
// line naming the key and its value; "" when there is nothing. The one place the limits of
// import live (switchyard_config maps what passes; its validation refuses impossible values).
std::string hf_import_problem(const HfConfig& hf) {
  const json& values = hf.values;
  const HfDefaults& defaults = defaults_of(hf);
  const int64_t hidden = required_count(hf, "hidden_size");
  const int64_t heads = required_count(hf, "num_attention_heads");
  if (const int64_t kv_heads = key_value_heads(hf); kv_heads < 1 || heads % kv_heads != 0)
    return "num_key_value_heads " + std::to_string(kv_heads) + " does not divide " +
           "num_attention_heads " + std::to_string(heads) +
           ": each key/value head serves a whole group of query heads";
  // OLMoE's q_norm is hidden_size wide whatever head_dim says: only heads of hidden / heads fit.
  if (const json* head_dim = find_key(values, "head_dim");
      hf.architecture == HfArchitecture::olmoe && head_dim && heads > 0 &&
      *head_dim != hidden / heads)
    return "head_dim " + head_dim->dump() +
           " differs from hidden_size / num_attention_heads = " + std::to_string(hidden / heads) +
           ": OLMoE's q_norm is as wide as hidden_size";
  Rotary rotary;
  if (std::string problem = read_rotary(hf, rotary); !problem.empty()) return problem;
  if (const json* act = find_key(values, "hidden_act"); act && *act != "silu")
    return "hidden_act " + act->dump() + ": our FFN is SwiGLU (silu)";
  if (flag_or(hf, "attention_bias", false))
    return "attention_bias true: our attention projections have no bias";
  if (flag_or(hf, "mlp_bias", false)) return "mlp_bias true: our FFN matrices have no bias";
  if (const json* quantization = find_key(values, "quantization_config"))
    return "quantization_config " + quantization->dump() +
           ": quantized weights are not supported (import a float checkpoint)";
  if (const json* clip = find_key(values, "clip_qkv"))
    return "clip_qkv " + clip->dump() + ": our attention does not clamp q, k and v";
  // Mixtral's and Mistral's sliding_window applies when set (Mistral's default is 4096, not
  // none); Qwen3's only with use_sliding_window.
  const bool windowed =
      hf.architecture == HfArchitecture::mixtral || hf.architecture == HfArchitecture::mistral ||
      ((hf.architecture == HfArchitecture::qwen3 || hf.architecture == HfArchitecture::qwen3_moe) &&
       flag_or(hf, "use_sliding_window", false));
  if (windowed) {
    const int64_t positions =
        count_or(hf, "max_position_embeddings", defaults.max_position_embeddings);
    const json absent_default = kMistralDefaultWindow;
    const json* window = find_key(values, "sliding_window");
    const bool defaulted =
        !window && !values.contains("sliding_window") && hf.architecture == HfArchitecture::mistral;
    if (defaulted) window = &absent_default;
    if (window && (!window->is_number_integer() || window->get<int64_t>() < positions))
      return "sliding_window " + window->dump() +
             (defaulted ? " (absent: MistralConfig's default)" : "") +
             " is shorter than max_position_embeddings " + std::to_string(positions) +
             ": sliding-window attention is not supported";
  }
  if (const json* types = find_key(values, "layer_types")) {
    if (!types->is_array()) return "layer_types " + types->dump() + ": expected a list";
    for (const json& type : *types)
      if (type != "full_attention")
        return "layer_types holds " + type.dump() + ": only full attention is supported";
  }
  return "";
}

// `config` when its own validation passes it.
Config checked(const Config& config, const HfConfig& hf) {
  const std::vector<std::string> problems = validate_config(config, hf.path);
  if (!problems.empty()) throw ImportError(problems.front());
  return config;
}

// Our config for the model config.json describes, checked by the config's own validation.
Config switchyard_config(const HfConfig& hf, const fs::path& folder) {
  const HfDefaults& defaults = defaults_of(hf);
  Config config;
  std::error_code error;
  const std::string name = fs::weakly_canonical(folder, error).filename().string();
  if (!name.empty()) config.name = name;
  ModelConfig& m = config.model;
  m.vocab_size = required_count(hf, "vocab_size");
  m.d_model = required_count(hf, "hidden_size");
  m.n_layers = required_count(hf, "num_hidden_layers");
  m.n_heads = required_count(hf, "num_attention_heads");
  if (const int64_t kv_heads = key_value_heads(hf); kv_heads != m.n_heads) m.n_kv_heads = kv_heads;
  Rotary rotary;
  read_rotary(hf, rotary);  // hf_import_problem passed it
  m.rope_theta = rotary.theta;
  m.rope_scaling = rotary.scaling;
  if (rotary.scaling != RopeScaling::none) m.rope_factor = rotary.factor;
  if (rotary.scaling == RopeScaling::llama3) {
    m.rope_low_freq_factor = rotary.low_freq_factor;
    m.rope_high_freq_factor = rotary.high_freq_factor;
    m.rope_original_max_position = rotary.original_max_position;
  }
  m.norm_eps = number_or(hf, hf.values, "rms_norm_eps", defaults.rms_norm_eps);
  // Rotary has no length limit: this is only the length a training run defaults to.
  m.seq_len = count_or(hf, "max_position_embeddings", defaults.max_position_embeddings);
  // transformers' configs of all six default to untied.
  m.tie_embeddings = flag_or(hf, "tie_word_embeddings", false);
  m.qk_norm = hf_qk_norm(hf.architecture);
  if (const int64_t width = head_width(hf); width * m.n_heads != m.d_model) m.head_dim = width;
  const int64_t intermediate = required_count(hf, "intermediate_size");
  const bool mixtral = hf.architecture == HfArchitecture::mixtral;
  const bool qwen3_moe = hf.architecture == HfArchitecture::qwen3_moe;
  // Mixtral's and OLMoE's intermediate_size is the experts' width; they have no dense FFN.
  if (!hf_has_experts(hf.architecture) || qwen3_moe) m.ffn_hidden = intermediate;
  config.moe.num_experts = 0;
  if (!hf_has_experts(hf.architecture)) return checked(config, hf);

  MoeConfig& moe = config.moe;
  const int64_t experts = expert_count(hf);
  const std::vector<bool> mask = hf_moe_layers(hf, experts);
  std::vector<int64_t> moe_layers;
  for (size_t l = 0; l < mask.size(); ++l)
    if (mask[l]) moe_layers.push_back(static_cast<int64_t>(l));
  if (moe_layers.empty()) return checked(config, hf);  // every layer dense
  moe.num_experts = experts;
  // Qwen3-MoE: intermediate_size is the dense layers' width, moe_intermediate_size the experts'.
  moe.expert_hidden = qwen3_moe ? required_count(hf, "moe_intermediate_size") : intermediate;
  if (moe_layers.size() == mask.size()) moe.layers = MoeLayers{};  // all
  else moe.layers = MoeLayers::listed(moe_layers);
  moe.routing.top_k = count_or(hf, "num_experts_per_tok", defaults.num_experts_per_tok);
  moe.routing.score = RouterScore::softmax;
  // Mixtral renormalises the top-k gates, OLMoE and Qwen3-MoE as norm_topk_prob says (default
  // false). The default renormalises for K > 1 only; where it says what the model does, it is
  // kept, so that a training config that leaves the key out matches the import's.
  const bool renormalise = mixtral || flag_or(hf, "norm_topk_prob", false);
  const bool by_default = renormalise == (moe.routing.top_k > 1);
  moe.routing.normalize_topk = by_default    ? TopkNormalize::by_default
                               : renormalise ? TopkNormalize::on
                                             : TopkNormalize::off;
  moe.capacity_factor = 0.0;  // dropless
  moe.aux_loss_coef = number_or(hf, hf.values, "router_aux_loss_coef", moe.aux_loss_coef);
  return checked(config, hf);
}

// The safetensors files of the folder, and which one holds each tensor.
struct Weights {
  std::string source;  // model.safetensors, or the index: what messages about the set name
  std::vector<std::unique_ptr<SafetensorsReader>> files;
  std::map<std::string, const SafetensorsReader*> holder;  // tensor name -> its file
};

Weights open_sharded(const fs::path& index_path) {
  Weights weights;
  weights.source = index_path.string();
  json index;
  try {
    std::ifstream in(index_path);
    index = json::parse(in);
  } catch (const json::exception& problem) {
    throw ImportError(weights.source + ": not JSON (" + problem.what() + ")");
  }
  const json* map = index.is_object() ? find_key(index, "weight_map") : nullptr;
  if (!map || !map->is_object()) throw ImportError(weights.source + ": no weight_map object");
  std::map<std::string, const SafetensorsReader*> shards;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string())
      throw ImportError(weights.source + ": weight_map." + it.key() + " is not a file name");
    const std::string shard = it.value().get<std::string>();
    if (!shards.count(shard)) {
      weights.files.push_back(
          std::make_unique<SafetensorsReader>((index_path.parent_path() / shard).string()));
      shards[shard] = weights.files.back().get();
    }
    if (!shards[shard]->find(it.key()))
      throw ImportError(weights.source + ": weight_map puts " + it.key() + " in " + shard +
                        ", which does not hold it");
    weights.holder[it.key()] = shards[shard];
  }
  for (const auto& file : weights.files)
    for (const SafetensorsTensor& tensor : file->tensors()) {
      const auto listed = weights.holder.find(tensor.name);
      if (listed == weights.holder.end() || listed->second != file.get())
        throw ImportError(file->path() + ": tensor " + tensor.name + " is not where " +
                          weights.source + "'s weight_map puts it");
    }
  return weights;
}

Weights open_weights(const fs::path& folder) {
  std::error_code error;
  try {
    if (fs::exists(folder / kWeightsFile, error)) {
      Weights weights;
      weights.source = (folder / kWeightsFile).string();
      weights.files.push_back(std::make_unique<SafetensorsReader>(weights.source));
      for (const SafetensorsTensor& tensor : weights.files[0]->tensors())
        weights.holder[tensor.name] = weights.files[0].get();
      return weights;
    }
    if (fs::exists(folder / kWeightsIndexFile, error))
      return open_sharded(folder / kWeightsIndexFile);
  } catch (const ImportError&) {
    throw;
  } catch (const std::runtime_error& problem) {  // the reader's, naming the file
    throw ImportError(problem.what());
  }
  for (const char* pytorch : {"pytorch_model.bin", "pytorch_model.bin.index.json"})
    if (fs::exists(folder / pytorch, error))
      throw ImportError(
          folder.string() + ": holds " + pytorch +
          " only: convert it to "
          "safetensors (transformers: save_pretrained(dir, safe_serialization=True))");
  throw ImportError(folder.string() + ": no model.safetensors or model.safetensors.index.json");
}

// A buffer that older transformers versions saved with the weights; recomputed, not learned.
bool ignored_tensor(const std::string& name) {
  const std::string suffix = ".self_attn.rotary_emb.inv_freq";
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Where the values of one tensor of the plan are: under its own name, or (transformers 5's fused
// experts, HfTensor::fused_name) as a range of elements of the fused tensor.
struct Source {
  const SafetensorsReader* file = nullptr;
  std::string name;
  int64_t first = 0, count = -1;  // count -1: the whole tensor
};

std::optional<Source> find_source(const Weights& weights, const HfTensor& tensor) {
  if (const auto own = weights.holder.find(tensor.name); own != weights.holder.end())
    return Source{own->second, tensor.name};
  if (tensor.fused_name.empty()) return std::nullopt;
  if (const auto fused = weights.holder.find(tensor.fused_name); fused != weights.holder.end())
    return Source{fused->second, tensor.fused_name, tensor.fused_first, shape_numel(tensor.shape)};
  return std::nullopt;
}

// Every tensor of `plan` present with its shape (its own, or a fused tensor's), nothing else but
// ignored_tensor's, and a tied model's lm_head.weight, when there is one, equal to the embedding.
void check_tensors(const Weights& weights, const std::vector<HfTensor>& plan, bool tied,
                   const std::string& architecture) {
  std::set<std::string> expected;
  for (const HfTensor& tensor : plan) {
    const std::optional<Source> source = find_source(weights, tensor);
    if (!source)
      throw ImportError(
          weights.source + ": missing tensor " + tensor.name +
          (tensor.fused_name.empty() ? "" : " (or fused, " + tensor.fused_name + ")") + " (a " +
          architecture + " of this config.json has it)");
    expected.insert(source->name);
    const std::vector<int64_t>& shape = source->file->find(source->name)->shape;
    const std::vector<int64_t> wanted =
        source->name == tensor.name ? tensor.hf_shape() : tensor.fused_shape;
    if (shape != wanted)
      throw ImportError(source->file->path() + ": tensor " + source->name + " has shape " +
                        shape_str(shape) + ", config.json needs " + shape_str(wanted));
  }
  for (const auto& [name, file] : weights.holder) {
    if (expected.count(name) || ignored_tensor(name)) continue;
    if (tied && name == "lm_head.weight") {
      const std::vector<float> head = file->read_f32(name);
      const std::vector<float> embedding =
          weights.holder.at("model.embed_tokens.weight")->read_f32("model.embed_tokens.weight");
      if (head.size() != embedding.size() ||
          std::memcmp(head.data(), embedding.data(), head.size() * sizeof(float)) != 0)
        throw ImportError(file->path() +
                          ": lm_head.weight differs from "
                          "model.embed_tokens.weight, but tie_word_embeddings is true");
      continue;
    }
    throw ImportError(file->path() + ": unexpected tensor " + name + " (not part of a " +
                      architecture + " of this config.json)");
  }
}

// tokenizer.model (SentencePiece), when the folder has one, as a checkpoint carries it.
std::optional<TokenData> read_sentencepiece_model(const fs::path& path, int64_t vocab_size) {
  TokenData tokenizer;
  tokenizer.tokenizer = kSentencePieceTokenizer;
  tokenizer.tokenizer_model_name = kTokenizerModelFile;
  tokenizer.vocab_size = vocab_size;  // the ids the model takes; the pieces are checked to fit
  try {
    tokenizer.tokenizer_model = read_tokenizer_model_file(path.string());
    const int64_t pieces =
        load_sentencepiece(tokenizer.tokenizer_model, path.string())->vocab_size();
    if (pieces > vocab_size)
      throw ImportError(path.string() + ": " + std::to_string(pieces) +
                        " pieces, more than config.json's vocab_size " +
                        std::to_string(vocab_size));
  } catch (const ImportError&) {
    throw;
  } catch (const std::runtime_error& problem) {
    throw ImportError(problem.what());
  }
  return tokenizer;
}

// tokenizer.json with the EOS of tokenizer_config.json. One that is not a byte-level BPE (or a
// build without ICU) leaves the import without a tokenizer, with a note saying why: the weights
// are still worth having.
std::optional<TokenData> read_tokenizer_json(const fs::path& path, int64_t vocab_size,
                                             std::vector<std::string>& notes) {
  TokenData tokenizer;
  tokenizer.tokenizer = kHuggingFaceTokenizer;
  tokenizer.tokenizer_model_name = kHuggingFaceTokenizerFile;
  tokenizer.vocab_size = vocab_size;
  int64_t ids = 0;
  try {
    tokenizer.tokenizer_model = read_tokenizer_model_file(path.string());
    tokenizer.tokenizer_eos_token = eos_token_beside(path.string());
    ids = load_hf_tokenizer(tokenizer.tokenizer_model, tokenizer.tokenizer_eos_token, path.string())
              ->vocab_size();
  } catch (const std::runtime_error& problem) {
    notes.push_back(std::string(problem.what()) + ": the checkpoint carries no tokenizer");
    return std::nullopt;
  }
  if (ids > vocab_size)
    throw ImportError(path.string() + ": " + std::to_string(ids) +
                      " token ids, more than config.json's vocab_size " +
                      std::to_string(vocab_size));
  if (tokenizer.tokenizer_eos_token.empty())
    notes.push_back(path.string() +
                    ": no eos_token in tokenizer_config.json: generate will not "
                    "stop at an end of text, and prepare-data --format sft will refuse it");
  return tokenizer;
}

// The folder's tokenizer: tokenizer.model first (a folder with both, such as Mistral's, is a
// SentencePiece model that transformers also converted), else tokenizer.json.
std::optional<TokenData> read_folder_tokenizer(const fs::path& folder, int64_t vocab_size,
                                               std::vector<std::string>& notes) {
  std::error_code error;
  if (fs::exists(folder / kTokenizerModelFile, error))
    return read_sentencepiece_model(folder / kTokenizerModelFile, vocab_size);
  if (fs::exists(folder / kHuggingFaceTokenizerFile, error))
    return read_tokenizer_json(folder / kHuggingFaceTokenizerFile, vocab_size, notes);
  notes.push_back("no tokenizer.model or tokenizer.json in " + folder.string() +
                  ": the checkpoint carries no tokenizer; token ids are left to you "
                  "(generate --prompt-ids; prepare-data --format nanogpt or megatron for ids "
                  "tokenized elsewhere)");
  return std::nullopt;
}

// Ours [in, out] (or a gain) from transformers' tensor: the matrices transposed back.
std::vector<float> our_values(const Weights& weights, const HfTensor& tensor) {
  try {
    const Source source = find_source(weights, tensor).value();  // check_tensors found it
    const std::vector<float> values =
        source.count < 0 ? source.file->read_f32(source.name)
                         : source.file->read_f32(source.name, source.first, source.count);
    if (!tensor.transpose) return values;
    return transposed(values, tensor.shape[1], tensor.shape[0]);
  } catch (const std::runtime_error& problem) {
    throw ImportError(problem.what());
  }
}

// The checkpoint file: step-0 root attributes, then each of our datasets, in the order of first
// appearance in `plan` (our params' order), an expert dataset filled from E transformers tensors.
void write_checkpoint(const std::string& output, const Config& config, const Weights& weights,
                      const std::vector<HfTensor>& plan, const std::optional<TokenData>& tokenizer,
                      const std::string& provenance) {
  std::vector<std::pair<std::string, std::vector<const HfTensor*>>> datasets;
  for (const HfTensor& tensor : plan) {
    auto entry = std::find_if(datasets.begin(), datasets.end(),
                              [&](const auto& seen) { return seen.first == tensor.dataset; });
    if (entry == datasets.end()) entry = datasets.insert(entry, {tensor.dataset, {}});
    entry->second.push_back(&tensor);
  }
  const fs::path final_path = output, temporary = output + ".tmp";
  h5::QuietErrors quiet;
  try {
    CheckpointFileWriter writer(temporary);
    write_checkpoint_header(writer.file(), 0, 0, config, provenance, tokenizer, temporary.string());
    for (const auto& [dataset, parts] : datasets) {
      const bool is_expert = parts[0]->expert >= 0;
      writer.create(dataset, hf_dataset_shape(*parts[0], config), is_expert);
      for (const HfTensor* part : parts) {
        const std::vector<float> values = our_values(weights, *part);
        if (is_expert) writer.write_rows(part->expert, 1, values.data(), DType::f32);
        else writer.write_rows(0, part->shape[0], values.data(), DType::f32);
      }
      writer.finish_dataset();
    }
    writer.close();
    rename_into_place(temporary, final_path);
    sync_path(final_path.has_parent_path() ? final_path.parent_path() : fs::path("."), true);
  } catch (const std::exception& problem) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    if (dynamic_cast<const ImportError*>(&problem)) throw;
    throw ImportError(temporary.string() + ": " + problem.what());
  }
}

void check_output(const ImportOptions& options) {
  std::error_code error;
  if (fs::is_directory(options.output, error))
    throw ImportError(options.output + ": is a folder; --output names the checkpoint file");
  if (fs::exists(options.output, error) && !options.overwrite)
    throw ImportError(options.output + ": exists (pass --overwrite to replace it)");
}

}  // namespace

ImportResult import_hf(const ImportOptions& options) {
  check_output(options);
  const fs::path folder = options.folder;
  const HfConfig hf = read_hf_config(folder);
  if (const std::string problem = hf_import_problem(hf); !problem.empty())
    throw ImportError(hf.path + ": " + problem);
  ImportResult result;
  result.config = switchyard_config(hf, folder);
  result.architecture = hf_class_name(hf.architecture);

  const Weights weights = open_weights(folder);
  const std::vector<HfTensor> plan = hf_tensors(result.config, hf.architecture);
  check_tensors(weights, plan, result.config.model.tie_embeddings, result.architecture);
  const std::optional<TokenData> tokenizer =
      read_folder_tokenizer(folder, result.config.model.vocab_size, result.notes);

  std::set<std::string> dtypes;
  for (const HfTensor& tensor : plan) {
    const Source source = find_source(weights, tensor).value();
    dtypes.insert(safetensors_dtype_name(source.file->find(source.name)->dtype));
    result.parameters += shape_numel(tensor.shape);
  }
  result.dtypes.assign(dtypes.begin(), dtypes.end());
  result.tensors = static_cast<int64_t>(plan.size());
  for (const auto& file : weights.files) result.weights.push_back(file->path());
  result.tokenizer = tokenizer ? tokenizer->tokenizer_model_name : std::string();

  const std::string provenance = "imported_from: " + yaml_quote(folder.string()) + "\n" +
                                 checkpoint_provenance(result.config, 1, 1, "");
  write_checkpoint(options.output, result.config, weights, plan, tokenizer, provenance);

  result.notes.push_back("model.seq_len " + std::to_string(result.config.model.seq_len) +
                         " is max_position_embeddings: only the default training length; rotary "
                         "has no length limit");
  return result;
}

}  // namespace sy
