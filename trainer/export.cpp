#include "trainer/export.h"

#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/chat_template.h"
#include "data/hdf5_io.h"
#include "data/hf_tokenizer.h"
#include "data/token_file.h"
#include "model/tensor.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_format.h"
#include "trainer/cli.h"
#include "trainer/hf_layout.h"
#include "trainer/safetensors.h"

namespace sy {

namespace fs = std::filesystem;
using h5::Handle;

namespace {

// transformers' initializer_range: our init std (model/transformer.h).
constexpr double kInitStd = 0.02;

// The files an export writes; with --overwrite, the tokenizer's are removed when not rewritten.
constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kTokenizerModelFile = "tokenizer.model";
constexpr const char* kTokenizerConfigFile = "tokenizer_config.json";
constexpr const char* kTokenizerJsonFile = "tokenizer.json";

std::string join_layers(const std::vector<bool>& mask, bool moe) {
  std::string out;
  for (size_t l = 0; l < mask.size(); ++l)
    if (mask[l] == moe) out += (out.empty() ? "" : ", ") + std::to_string(l);
  return out;
}

std::string number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// The config the checkpoint was written with, through the one loader (defaults, validation).
Config checkpoint_config(const CheckpointHeader& header) {
  try {
    return load_stored_config(header.config, header.path, {});
  } catch (const ConfigError& error) {
    throw ExportError(error.what());
  }
}

// The tensor's values as fp32, row-major in transformers' layout.
std::vector<float> read_tensor(hid_t file, const HfTensor& tensor, const std::string& path) {
  const std::string what = path + ": cannot read " + tensor.dataset;
  Handle dataset = h5::own(H5Dopen2(file, tensor.dataset.c_str(), H5P_DEFAULT), H5Dclose, what);
  Handle file_space = h5::own(H5Dget_space(dataset.get()), H5Sclose, what);
  std::vector<hsize_t> count(tensor.shape.begin(), tensor.shape.end());
  if (tensor.expert >= 0) {
    std::vector<hsize_t> start(count.size() + 1, 0);
    start[0] = static_cast<hsize_t>(tensor.expert);
    count.insert(count.begin(), 1);
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr,
                                  count.data(), nullptr),
              what);
  }
  Handle memory_space = h5::own(H5Screate_simple(static_cast<int>(count.size()), count.data(),
                                                 nullptr),
                                H5Sclose, what);
  std::vector<float> values(static_cast<size_t>(shape_numel(tensor.shape)));
  try {
    const int64_t rows = tensor.shape.empty() ? 1 : tensor.shape[0];
    h5::check_chunk_sizes(dataset.get(), std::max<int64_t>(tensor.expert, 0),
                          tensor.expert >= 0 ? 1 : rows);
  } catch (const h5::Hdf5Error& error) {
    throw h5::Hdf5Error(what + ": " + error.what());
  }
  h5::check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, memory_space.get(), file_space.get(),
                    H5P_DEFAULT, values.data()),
            what);
  if (!tensor.transpose) return values;
  return transposed(values, tensor.shape[0], tensor.shape[1]);
}

// transformers' config.json for the model (LlamaConfig, MixtralConfig or OlmoeConfig keys).
nlohmann::ordered_json hf_config(const Config& config, HfArchitecture architecture,
                                 const std::string& dtype) {
  const ModelConfig& m = config.model;
  const bool moe = hf_has_experts(architecture);
  // Qwen3-MoE's intermediate_size is its dense layers' width, the others' the experts'.
  const bool expert_width = moe && architecture != HfArchitecture::qwen3_moe;
  nlohmann::ordered_json json;
  json["architectures"] = {hf_class_name(architecture)};
  json["model_type"] = hf_model_type(architecture);
  json["vocab_size"] = m.vocab_size;
  json["hidden_size"] = m.d_model;
  json["intermediate_size"] = expert_width ? config.moe.expert_hidden : m.ffn_hidden;
  json["num_hidden_layers"] = m.n_layers;
  json["num_attention_heads"] = m.n_heads;
  json["num_key_value_heads"] = m.kv_heads();  // query head h reads kv head h / (H / Hkv)
  json["head_dim"] = m.head_width();
  json["hidden_act"] = "silu";
  // Rotary has no length limit; this is the length the model was trained at.
  json["max_position_embeddings"] = m.seq_len;
  json["initializer_range"] = kInitStd;
  json["rms_norm_eps"] = m.norm_eps;
  json["use_cache"] = true;
  json["tie_word_embeddings"] = m.tie_embeddings;
  // transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling. Both say the
  // same.
  json["rope_theta"] = m.rope_theta;
  nlohmann::ordered_json scaling;
  if (m.rope_scaling != RopeScaling::none) {
    scaling["rope_type"] = to_string(m.rope_scaling);
    scaling["factor"] = m.rope_factor;
  }
  if (m.rope_scaling == RopeScaling::llama3) {
    scaling["low_freq_factor"] = m.rope_low_freq_factor;
    scaling["high_freq_factor"] = m.rope_high_freq_factor;
    scaling["original_max_position_embeddings"] = m.rope_original_max_position;
  }
  if (m.rope_scaling != RopeScaling::none) json["rope_scaling"] = scaling;
  nlohmann::ordered_json parameters = {{"rope_type", "default"}, {"rope_theta", m.rope_theta}};
  for (auto it = scaling.begin(); it != scaling.end(); ++it) parameters[it.key()] = it.value();
  json["rope_parameters"] = parameters;
  json["attention_dropout"] = 0.0;
  // Our tokenizers add no BOS/EOS; without these nulls transformers would assume ids 1 and 2 and
  // stop generating at token 2.
  json["bos_token_id"] = nullptr;
  json["eos_token_id"] = nullptr;
  json["pad_token_id"] = nullptr;
  if (architecture == HfArchitecture::qwen3 || architecture == HfArchitecture::qwen3_moe) {
    json["attention_bias"] = false;
    json["use_sliding_window"] = false;
    json["sliding_window"] = nullptr;
    json["max_window_layers"] = m.n_layers;
  }
  if (architecture == HfArchitecture::qwen3_moe) {
    // Every layer's kind said by mlp_only_layers (the dense ones), at decoder_sparse_step 1.
    const std::vector<bool> mask = moe_layer_mask(config);
    std::vector<int64_t> dense_layers;
    for (size_t l = 0; l < mask.size(); ++l)
      if (!mask[l]) dense_layers.push_back(static_cast<int64_t>(l));
    json["decoder_sparse_step"] = 1;
    json["mlp_only_layers"] = dense_layers;
    json["moe_intermediate_size"] = config.moe.expert_hidden;
    json["num_experts"] = config.moe.num_experts;
    json["num_experts_per_tok"] = config.moe.routing.top_k;
    json["norm_topk_prob"] = config.moe.routing.normalizes();
    json["output_router_logits"] = false;
    json["router_aux_loss_coef"] = config.moe.aux_loss_coef;
  } else if (architecture == HfArchitecture::olmoe) {
    json["num_experts"] = config.moe.num_experts;
    json["num_experts_per_tok"] = config.moe.routing.top_k;
    json["norm_topk_prob"] = config.moe.routing.normalizes();
    json["output_router_logits"] = false;
    json["router_aux_loss_coef"] = config.moe.aux_loss_coef;
    json["clip_qkv"] = nullptr;
    json["attention_bias"] = false;
  } else if (moe) {
    json["sliding_window"] = nullptr;
    json["num_local_experts"] = config.moe.num_experts;
    json["num_experts_per_tok"] = config.moe.routing.top_k;
    json["output_router_logits"] = false;
    json["router_aux_loss_coef"] = config.moe.aux_loss_coef;
    json["router_jitter_noise"] = 0.0;
  } else if (architecture == HfArchitecture::llama) {
    json["attention_bias"] = false;
    json["mlp_bias"] = false;
    json["pretraining_tp"] = 1;
  }
  json["dtype"] = dtype == "bf16" ? "bfloat16" : "float32";
  return json;
}

// Writes `bytes` to <path>.tmp, then renames it into place.
void write_file(const fs::path& path, const std::string& bytes) {
  const fs::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      std::error_code ignored;
      fs::remove(temporary, ignored);
      throw ExportError(temporary.string() + ": cannot write");
    }
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) throw ExportError(path.string() + ": cannot rename its .tmp into place: " + error.message());
}

// The tokenizer of the checkpoint or, for checkpoints from before they carried it, of the token
// file at its data.path.
struct TokenizerSource {
  TokenData tokenizer;  // tokenizer "" when none was found
  std::string from;     // the file it came from, or why nothing was found
};
TokenizerSource find_tokenizer(const std::string& checkpoint_path, const Config& config) {
  TokenizerSource source;
  if (read_checkpoint_tokenizer(checkpoint_path, source.tokenizer)) {
    source.from = checkpoint_path;
    return source;
  }
  const std::string& token_file = config.data.path;
  try {
    source.tokenizer = read_token_file_tokenizer(token_file);
    source.from = token_file + " (data.path)";
  } catch (const std::exception& problem) {
    source.tokenizer = TokenData();
    source.from = "the checkpoint carries none and its data.path cannot be read: " +
                  std::string(problem.what());
  }
  return source;
}

// A run on conversations: the chat format they were rendered in, as the Jinja template that
// apply_chat_template runs, so that transformers renders chats as the model was trained on them.
void add_chat_template(nlohmann::ordered_json& json, const TokenizerSource& source) {
  const std::string& name = source.tokenizer.chat_template;
  if (!name.empty())
    json["chat_template"] = chat_template_jinja(
        parse_chat_template(name, source.from + ": chat_template"), source.tokenizer.chat_system);
}

// LlamaTokenizer over the SentencePiece model: ours adds no BOS or EOS, so neither does it.
std::string tokenizer_config_json(const Config& config, const TokenizerSource& source) {
  nlohmann::ordered_json json;
  json["tokenizer_class"] = "LlamaTokenizer";
  json["add_bos_token"] = false;
  json["add_eos_token"] = false;
  json["bos_token"] = "<s>";
  json["eos_token"] = "</s>";
  json["unk_token"] = "<unk>";
  json["pad_token"] = nullptr;
  json["legacy"] = false;
  json["clean_up_tokenization_spaces"] = false;
  json["model_max_length"] = config.model.seq_len;
  add_chat_template(json, source);
  return json.dump(2) + "\n";
}

// A tokenizer.json's config: transformers' fast tokenizer over the JSON, with its EOS.
std::string fast_tokenizer_config_json(const Config& config, const TokenizerSource& source) {
  const std::string& eos_token = source.tokenizer.tokenizer_eos_token;
  nlohmann::ordered_json json;
  json["tokenizer_class"] = "PreTrainedTokenizerFast";
  json["eos_token"] =
      eos_token.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(eos_token);
  json["clean_up_tokenization_spaces"] = false;
  json["model_max_length"] = config.model.seq_len;
  add_chat_template(json, source);
  return json.dump(2) + "\n";
}

// The output folder: created when missing; refused when it holds anything, unless overwrite.
void prepare_output(const ExportOptions& options) {
  const fs::path dir = options.output;
  std::error_code error;
  if (fs::exists(dir, error)) {
    if (!fs::is_directory(dir, error)) throw ExportError(options.output + ": exists and is not a folder");
    if (!fs::is_empty(dir, error) && !options.overwrite)
      throw ExportError(options.output + ": is not empty (pass --overwrite to write over an export there)");
    return;
  }
  fs::create_directories(dir, error);
  if (error) throw ExportError(options.output + ": cannot create: " + error.message());
}

}  // namespace

std::string hf_export_problem(const Config& config) {
  const HfArchitecture architecture = hf_architecture_of(config);
  const std::string name = hf_display_name(architecture);
  const ModelConfig& m = config.model;
  if (architecture == HfArchitecture::llama && m.qk_norm == QkNorm::full)
    return "model.qk_norm: full normalises q and k; Llama has no QK-norm (an MoE model with it "
           "exports as OLMoE; per_head exports as Qwen3)";
  if (architecture == HfArchitecture::olmoe && m.q_width() != m.d_model)
    return "model.head_dim: " + std::to_string(m.head_dim) + " makes the heads " +
           std::to_string(m.q_width()) + " wide in all; OLMoE's q_norm is as wide as hidden_size " +
           std::to_string(m.d_model);
  if (!hf_has_experts(architecture)) return "";  // dense: Llama or Qwen3 expresses it whole
  const std::vector<bool> mask = moe_layer_mask(config);
  const MoeConfig& moe = config.moe;
  if (architecture != HfArchitecture::qwen3_moe &&
      std::find(mask.begin(), mask.end(), false) != mask.end())
    return "moe.layers: layers " + join_layers(mask, true) + " are MoE and " +
           join_layers(mask, false) + " dense; " + name +
           " needs every layer MoE (moe.layers: all); Qwen3-MoE (model.qk_norm: per_head) takes "
           "any mix";
  if (moe.routing.score != RouterScore::softmax)
    return std::string("moe.router_score: ") + to_string(moe.routing.score) + "; " + name +
           "'s router is a softmax over the experts";
  if (moe.shared_expert_hidden > 0)
    return "moe.shared_expert_hidden: " + std::to_string(moe.shared_expert_hidden) +
           " adds a shared expert to every MoE layer; " + name + " has none";
  if (moe.bias_update_rate > 0)
    return "moe.bias_update_rate: " + number(moe.bias_update_rate) +
           " trains an expert bias that steers the top-k; " + name + "'s router has none";
  if (moe.capacity_factor > 0)
    return "moe.capacity_factor: " + number(moe.capacity_factor) +
           " drops assignments over an expert's capacity; " + name + " is dropless";
  // OLMoE says whether it renormalises (norm_topk_prob); Mixtral always does.
  if (architecture == HfArchitecture::mixtral && !moe.routing.normalizes()) {
    const bool by_default = moe.routing.normalize_topk == TopkNormalize::by_default;
    return std::string("moe.normalize_topk: ") + (by_default ? "default (" : "") + "false" +
           (by_default ? " at top_k 1)" : "") +
           " keeps the gates unnormalised; Mixtral renormalises the top-k probabilities to sum "
           "to 1 (set moe.normalize_topk: true when training)";
  }
  return "";
}

ExportResult export_checkpoint(const ExportOptions& options) {
  if (options.format != "hf")
    throw ExportError("--format " + options.format + ": unknown (known: hf)");
  if (options.dtype != "bf16" && options.dtype != "fp32")
    throw ExportError("--dtype " + options.dtype + ": unknown (known: bf16, fp32)");
  CheckpointHeader header;
  try {
    header = read_checkpoint_header(options.checkpoint);
  } catch (const CheckpointError& error) {
    throw ExportError(error.what());
  }
  const Config config = checkpoint_config(header);
  const std::string problem = hf_export_problem(config);
  if (!problem.empty())
    throw ExportError(options.checkpoint + ": cannot be written as a transformers model: " + problem);
  const HfArchitecture architecture = hf_architecture_of(config);

  // Every tensor present with its shape before anything is written.
  h5::QuietErrors quiet;
  Handle file;
  try {
    file = h5::own(H5Fopen(options.checkpoint.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                   "cannot open as HDF5");
  } catch (const h5::Hdf5Error& error) {
    throw ExportError(options.checkpoint + ": " + error.what());
  }
  const std::vector<HfTensor> plan = hf_tensors(config, architecture);
  for (const HfTensor& tensor : plan) {
    if (tensor.expert > 0) continue;  // the stacked dataset was checked with expert 0
    try {
      open_checkpoint_tensor(file.get(), tensor.dataset, hf_dataset_shape(tensor, config));
    } catch (const h5::Hdf5Error& error) {
      throw ExportError(options.checkpoint + ": " + error.what());
    }
  }

  prepare_output(options);
  const fs::path dir = options.output;
  ExportResult result;
  result.architecture = hf_class_name(architecture);

  std::vector<SafetensorsEntry> entries;
  for (const HfTensor& tensor : plan) {
    entries.push_back({tensor.name, tensor.hf_shape()});
    result.parameters += shape_numel(tensor.shape);
  }
  const SafetensorsDType dtype =
      options.dtype == "bf16" ? SafetensorsDType::bf16 : SafetensorsDType::f32;
  try {
    SafetensorsWriter writer((dir / kWeightsFile).string(), entries, dtype);
    for (const HfTensor& tensor : plan)
      writer.write_next(read_tensor(file.get(), tensor, options.checkpoint));
    result.safetensors_bytes = writer.finish();
  } catch (const h5::Hdf5Error& error) {
    throw ExportError(error.what());
  } catch (const std::runtime_error& error) {
    if (dynamic_cast<const ExportError*>(&error)) throw;
    throw ExportError(error.what());
  }
  result.tensors = static_cast<int64_t>(plan.size());
  result.files.push_back((dir / kWeightsFile).string());

  write_file(dir / kConfigFile, hf_config(config, architecture, options.dtype).dump(2) + "\n");
  result.files.push_back((dir / kConfigFile).string());

  file.reset();  // the tokenizer readers open the checkpoint themselves
  const TokenizerSource source = find_tokenizer(options.checkpoint, config);
  const TokenData& tokenizer = source.tokenizer;
  std::error_code ignored;
  // An older export's tokenizer files must not pass for this model's.
  for (const char* name : {kTokenizerModelFile, kTokenizerJsonFile, kTokenizerConfigFile})
    fs::remove(dir / name, ignored);
  if (!tokenizer.tokenizer_model.empty() && tokenizer.tokenizer == kHuggingFaceTokenizer) {
    write_file(dir / kTokenizerJsonFile, tokenizer.tokenizer_model);
    write_file(dir / kTokenizerConfigFile, fast_tokenizer_config_json(config, source));
    result.files.push_back((dir / kTokenizerJsonFile).string());
    result.files.push_back((dir / kTokenizerConfigFile).string());
    result.notes.push_back(
        "tokenizer: tokenizer.json from " + source.from + ", as PreTrainedTokenizerFast" +
        (tokenizer.tokenizer_eos_token.empty() ? std::string(" (no EOS token)")
                                               : " (EOS " + tokenizer.tokenizer_eos_token + ")"));
  } else if (!tokenizer.tokenizer_model.empty()) {
    write_file(dir / kTokenizerModelFile, tokenizer.tokenizer_model);
    write_file(dir / kTokenizerConfigFile, tokenizer_config_json(config, source));
    result.files.push_back((dir / kTokenizerModelFile).string());
    result.files.push_back((dir / kTokenizerConfigFile).string());
    result.notes.push_back("tokenizer: SentencePiece model " +
                           (tokenizer.tokenizer_model_name.empty()
                                ? std::string("")
                                : tokenizer.tokenizer_model_name + " ") +
                           "from " + source.from + ", as LlamaTokenizer");
  } else {
    if (tokenizer.tokenizer == "bytes")
      result.notes.push_back("tokenizer: bytes (from " + source.from +
                             "): no tokenizer files; token ids are the text's bytes");
    else if (tokenizer.tokenizer.empty())
      result.notes.push_back("tokenizer: unknown (" + source.from + "); no tokenizer files written");
    else
      result.notes.push_back("tokenizer: '" + tokenizer.tokenizer + "' (from " + source.from +
                             ") has no model to export; no tokenizer files written");
  }
  if (!tokenizer.chat_template.empty())
    result.notes.push_back("chat template: " + tokenizer.chat_template +
                           (tokenizer.chat_system.empty() ? "" : " with its system message") +
                           (tokenizer.tokenizer_model.empty()
                                ? std::string(", not written (no tokenizer_config.json)")
                                : ", as tokenizer_config.json's chat_template"));
  return result;
}

}  // namespace sy
