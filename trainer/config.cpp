// Config loading: YAML text -> tree (+ --set overrides) -> typed struct -> validation.
//
// One table (config_fields) lists every key and where it lives in the struct; reading, the
// override paths and config_to_yaml all walk it, so a key added there is known everywhere.
// Every problem becomes one line "<file>: <yaml.path>: <what is wrong>"; we collect them all
// instead of stopping at the first, so that a user fixes a config in one pass.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <utility>
#include <variant>

#include "data/mixture_interleave.h"
#include "trainer/yaml_quote.h"

namespace sy {

namespace {

// ---- choice-valued keys -------------------------------------------------------------------------

// The YAML name of every value of each enum: reading, writing and the list of allowed values in
// an error all come from this one table per enum.
template <class E>
struct ChoiceNames;
template <>
struct ChoiceNames<AttentionKernel> {
  static constexpr std::pair<AttentionKernel, const char*> names[] = {
      {AttentionKernel::automatic, "auto"},
      {AttentionKernel::cudnn, "cudnn"},
      {AttentionKernel::flash, "flash"},
      {AttentionKernel::reference, "reference"}};
};
// true and false: what the key meant before per_head existed, so older configs still read.
template <>
struct ChoiceNames<QkNorm> {
  static constexpr std::pair<QkNorm, const char*> names[] = {{QkNorm::none, "none"},
                                                             {QkNorm::full, "full"},
                                                             {QkNorm::per_head, "per_head"},
                                                             {QkNorm::none, "false"},
                                                             {QkNorm::full, "true"}};
};
template <>
struct ChoiceNames<RopeScaling> {
  static constexpr std::pair<RopeScaling, const char*> names[] = {{RopeScaling::none, "none"},
                                                                  {RopeScaling::linear, "linear"},
                                                                  {RopeScaling::llama3, "llama3"}};
};
template <>
struct ChoiceNames<ExpertKernel> {
  static constexpr std::pair<ExpertKernel, const char*> names[] = {
      {ExpertKernel::automatic, "auto"},
      {ExpertKernel::grouped, "grouped"},
      {ExpertKernel::cublas, "cublas"}};
};
template <>
struct ChoiceNames<AuxLossScope> {
  static constexpr std::pair<AuxLossScope, const char*> names[] = {
      {AuxLossScope::micro_batch, "micro_batch"}, {AuxLossScope::global, "global"}};
};
template <>
struct ChoiceNames<RouterScore> {
  static constexpr std::pair<RouterScore, const char*> names[] = {
      {RouterScore::softmax, "softmax"}, {RouterScore::sigmoid, "sigmoid"}};
};
template <>
struct ChoiceNames<DropPolicy> {
  static constexpr std::pair<DropPolicy, const char*> names[] = {
      {DropPolicy::position, "position"}, {DropPolicy::probability, "probability"}};
};
template <>
struct ChoiceNames<Overflow> {
  static constexpr std::pair<Overflow, const char*> names[] = {
      {Overflow::drop, "drop"}, {Overflow::reroute, "reroute"}};
};
template <>
struct ChoiceNames<CommunicatorKind> {
  static constexpr std::pair<CommunicatorKind, const char*> names[] = {
      {CommunicatorKind::automatic, "auto"},
      {CommunicatorKind::nccl, "nccl"},
      {CommunicatorKind::mpi, "mpi"}};
};
template <>
struct ChoiceNames<OptimizerKind> {
  static constexpr std::pair<OptimizerKind, const char*> names[] = {
      {OptimizerKind::adamw, "adamw"}, {OptimizerKind::sgd, "sgd"}};
};
template <>
struct ChoiceNames<LrDecay> {
  static constexpr std::pair<LrDecay, const char*> names[] = {{LrDecay::cosine, "cosine"},
                                                              {LrDecay::linear, "linear"},
                                                              {LrDecay::one_minus_sqrt, "1-sqrt"}};
};
template <>
struct ChoiceNames<Recompute> {
  static constexpr std::pair<Recompute, const char*> names[] = {
      {Recompute::none, "none"},
      {Recompute::norms, "norms"},
      {Recompute::attention, "attention"},
      {Recompute::layer, "layer"}};
};
template <>
struct ChoiceNames<Sampling> {
  static constexpr std::pair<Sampling, const char*> names[] = {{Sampling::random, "random"},
                                                               {Sampling::epoch, "epoch"}};
};
template <>
struct ChoiceNames<Device> {
  static constexpr std::pair<Device, const char*> names[] = {
      {Device::cpu, "cpu"}, {Device::cuda, "cuda"}};
};
template <>
struct ChoiceNames<Precision> {
  static constexpr std::pair<Precision, const char*> names[] = {
      {Precision::fp32, "fp32"}, {Precision::bf16, "bf16"}};
};

template <>
struct ChoiceNames<WeightGrads> {
  static constexpr std::pair<WeightGrads, const char*> names[] = {{WeightGrads::automatic, "auto"},
                                                                  {WeightGrads::experts, "experts"},
                                                                  {WeightGrads::fp32, "fp32"}};
};

template <class E>
const char* choice_name(E value) {
  for (const auto& [choice, name] : ChoiceNames<E>::names)
    if (choice == value) return name;
  throw std::logic_error("config: enum value " + std::to_string(static_cast<int>(value)) +
                         " has no YAML name");
}

template <class E>
bool parse_choice(const std::string& text, E* out) {
  for (const auto& [choice, name] : ChoiceNames<E>::names) {
    if (text == name) {
      *out = choice;
      return true;
    }
  }
  return false;
}

// "a, b or c"
std::string join_alternatives(const std::vector<std::string>& names) {
  std::string list;
  for (size_t i = 0; i < names.size(); ++i)
    list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return list;
}

// ---- the key table ------------------------------------------------------------------------------

// A choice-valued key, whatever its enum: the value's name, a parser into it, and the names.
struct Choice {
  std::function<std::string()> name;
  std::function<bool(const std::string&)> parse;  // false: not one of the names
  std::string allowed;                            // "softmax or sigmoid"
};

template <class E>
Choice choice(E* value) {
  std::vector<std::string> names;
  for (const auto& entry : ChoiceNames<E>::names) names.emplace_back(entry.second);
  return {[value] { return std::string(choice_name(*value)); },
          [value](const std::string& text) { return parse_choice(text, value); },
          join_alternatives(names)};
}

// moe.normalize_topk is YAML true/false, or null/absent for the default rule; moe.layers is a
// scalar ("all", "every_<n>") or a sequence of layer indices.
using FieldRef =
    std::variant<std::string*, int64_t*, uint64_t*, double*, bool*, Choice, TopkNormalize*,
                 MoeLayers*, std::vector<std::string>*, std::vector<double>*>;

struct Field {
  const char* key;
  FieldRef ref;
};

struct Section {
  const char* name;  // "" for the top-level scalars (name, seed)
  std::vector<Field> fields;
};

// Every key of the config, in the order config_to_yaml writes them.
std::vector<Section> config_fields(Config& c) {
  return {
      {"", {{"name", &c.name}, {"seed", &c.seed}}},
      {"model",
       {{"vocab_size", &c.model.vocab_size},
        {"seq_len", &c.model.seq_len},
        {"d_model", &c.model.d_model},
        {"n_layers", &c.model.n_layers},
        {"n_heads", &c.model.n_heads},
        {"n_kv_heads", &c.model.n_kv_heads},
        {"head_dim", &c.model.head_dim},
        {"rope_theta", &c.model.rope_theta},
        {"rope_scaling", choice(&c.model.rope_scaling)},
        {"rope_factor", &c.model.rope_factor},
        {"rope_low_freq_factor", &c.model.rope_low_freq_factor},
        {"rope_high_freq_factor", &c.model.rope_high_freq_factor},
        {"rope_original_max_position", &c.model.rope_original_max_position},
        {"norm_eps", &c.model.norm_eps},
        {"qk_norm", choice(&c.model.qk_norm)},
        {"ffn_hidden", &c.model.ffn_hidden},
        {"tie_embeddings", &c.model.tie_embeddings},
        {"attention_kernel", choice(&c.model.attention_kernel)}}},
      {"moe",
       {{"num_experts", &c.moe.num_experts},
        {"top_k", &c.moe.routing.top_k},
        {"expert_hidden", &c.moe.expert_hidden},
        {"shared_expert_hidden", &c.moe.shared_expert_hidden},
        {"layers", &c.moe.layers},
        {"capacity_factor", &c.moe.capacity_factor},
        {"normalize_topk", &c.moe.routing.normalize_topk},
        {"aux_loss_coef", &c.moe.aux_loss_coef},
        {"z_loss_coef", &c.moe.z_loss_coef},
        {"bias_update_rate", &c.moe.bias_update_rate},
        {"aux_loss_scope", choice(&c.moe.aux_loss_scope)},
        {"router_score", choice(&c.moe.routing.score)},
        {"drop_policy", choice(&c.moe.routing.drop_policy)},
        {"overflow", choice(&c.moe.routing.overflow)},
        {"expert_kernel", choice(&c.moe.expert_kernel)}}},
      {"parallel",
       {{"expert_parallel", &c.parallel.expert_parallel},
        {"communicator", choice(&c.parallel.communicator)},
        {"timeout_s", &c.parallel.timeout_s},
        {"overlap_grad_reduce", &c.parallel.overlap_grad_reduce}}},
      {"train",
       {{"micro_batch_size", &c.train.micro_batch_size},
        {"grad_accum_steps", &c.train.grad_accum_steps},
        {"steps", &c.train.steps},
        {"optimizer", choice(&c.train.optimizer)},
        {"lr", &c.train.lr},
        {"min_lr", &c.train.min_lr},
        {"warmup_steps", &c.train.warmup_steps},
        {"lr_decay", choice(&c.train.lr_decay)},
        {"decay_steps", &c.train.decay_steps},
        {"weight_decay", &c.train.weight_decay},
        {"beta1", &c.train.beta1},
        {"beta2", &c.train.beta2},
        {"eps", &c.train.eps},
        {"grad_clip", &c.train.grad_clip},
        {"max_bad_steps", &c.train.max_bad_steps},
        {"recompute", choice(&c.train.recompute)},
        {"spike_window", &c.train.spike_window},
        {"spike_z", &c.train.spike_z},
        {"spike_min_steps", &c.train.spike_min_steps}}},
      {"data",
       {{"path", &c.data.path},
        {"train_paths", &c.data.train_paths},
        {"train_weights", &c.data.train_weights},
        {"document_mask", &c.data.document_mask},
        {"sampling", choice(&c.data.sampling)}}},
      {"eval",
       {{"every", &c.eval.every},
        {"tokens", &c.eval.tokens},
        {"batches", &c.eval.batches},
        {"questions", &c.eval.questions},
        {"questions_context", &c.eval.questions_context},
        {"questions_choices", &c.eval.questions_choices},
        {"questions_answer", &c.eval.questions_answer},
        {"questions_delimiter", &c.eval.questions_delimiter},
        {"questions_limit", &c.eval.questions_limit}}},
      {"checkpoint",
       {{"dir", &c.checkpoint.dir},
        {"every", &c.checkpoint.every},
        {"keep_last", &c.checkpoint.keep_last},
        {"async", &c.checkpoint.async},
        {"at_end", &c.checkpoint.at_end},
        {"init_from", &c.checkpoint.init_from},
        {"upcycle", &c.checkpoint.upcycle}}},
      {"run",
       {{"dir", &c.run.dir},
        {"log_every", &c.run.log_every},
        {"backend", choice(&c.run.backend)},
        {"precision", choice(&c.run.precision)},
        {"deterministic", &c.run.deterministic},
        {"tensorboard", &c.run.tensorboard},
        {"memory_check", &c.run.memory_check},
        {"weight_grads", choice(&c.run.weight_grads)}}},
  };
}

const Section* find_section(const std::vector<Section>& sections, const std::string& name) {
  for (const Section& section : sections)
    if (name == section.name) return &section;
  return nullptr;
}

const Field* find_field(const Section& section, const std::string& key) {
  for (const Field& field : section.fields)
    if (key == field.key) return &field;
  return nullptr;
}

std::string join_path(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

// ---- number formatting --------------------------------------------------------------------------

// The shortest %g text that parses back to exactly `value` (so a config survives a round trip;
// never more than 17 significant digits), in YAML spelling for the non-finite values.
std::string format_double(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char buffer[64];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  // Keep a "." in the mantissa (1.0e-08, not 1e-08): YAML 1.1 readers such as PyYAML need it to
  // see a float.
  std::string text(buffer);
  if (text.find('.') == std::string::npos) {
    const size_t exponent = text.find('e');
    text.insert(exponent == std::string::npos ? text.size() : exponent, ".0");
  }
  return text;
}

// ---- scalar parsing -----------------------------------------------------------------------------

// Quoted scalars get the non-specific tag "!" from yaml-cpp, plain ones "?": `seed: "3"` is a
// string, not a number.
bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

// How a node looks in an error message: its text for scalars, its kind otherwise.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar:
      if (!is_plain_scalar(node)) return "the string " + yaml_quote(node.Scalar());
      return node.Scalar().empty() ? "an empty value" : node.Scalar();  // `--set key=`
    default: return "nothing";
  }
}

bool parse_int64(const std::string& text, int64_t* out) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') ++begin;
  auto result = std::from_chars(begin, end, *out);
  return result.ec == std::errc() && result.ptr == end && begin != end;
}

bool parse_uint64(const std::string& text, uint64_t* out) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') ++begin;
  auto result = std::from_chars(begin, end, *out);
  return result.ec == std::errc() && result.ptr == end && begin != end;
}

bool parse_double(const std::string& text, double* out) {
  // YAML spells the special values .inf, -.inf, .nan (any case of the first letter).
  static const std::pair<const char*, double> specials[] = {
      {".inf", INFINITY},  {".Inf", INFINITY},  {".INF", INFINITY},  {"+.inf", INFINITY},
      {"-.inf", -INFINITY}, {"-.Inf", -INFINITY}, {"-.INF", -INFINITY}, {".nan", NAN},
      {".NaN", NAN},       {".NAN", NAN}};
  for (const auto& [name, value] : specials) {
    if (text == name) {
      *out = value;
      return true;
    }
  }
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') ++begin;
  auto result = std::from_chars(begin, end, *out);
  return result.ec == std::errc() && result.ptr == end && begin != end;
}

bool parse_bool(const std::string& text, bool* out) {
  if (text == "true" || text == "True" || text == "TRUE") {
    *out = true;
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    *out = false;
    return true;
  }
  return false;
}

// "every_<n>" with n a decimal integer; false when `spec` has another form.
bool parse_every_n(const std::string& spec, int64_t* n) {
  const std::string prefix = "every_";
  if (spec.rfind(prefix, 0) != 0 || spec.size() == prefix.size()) return false;
  for (size_t i = prefix.size(); i < spec.size(); ++i)
    if (spec[i] < '0' || spec[i] > '9') return false;
  return parse_int64(spec.substr(prefix.size()), n);
}

// ---- tree -> struct -----------------------------------------------------------------------------

// Collects problems as (yaml path, what is wrong); lines() formats them for the user.
struct Problems {
  std::string file;
  std::vector<std::pair<std::string, std::string>> items;

  void add(const std::string& path, const std::string& what) { items.emplace_back(path, what); }
  bool has(const std::string& path) const {
    for (const auto& item : items)
      if (item.first == path) return true;
    return false;
  }
  // "<file>: <path>: <what>", or "<file>: <what>" for problems of the file as a whole.
  std::vector<std::string> lines() const {
    std::vector<std::string> out;
    for (const auto& [path, what] : items)
      out.push_back(file + ": " + (path.empty() ? "" : path + ": ") + what);
    return out;
  }
};

void read_layers(const YAML::Node& node, const std::string& path, MoeLayers* layers,
                 Problems& problems) {
  const std::string expected = "expected all, every_<n> or a sequence of layer indices, got ";
  if (node.IsSequence()) {
    *layers = MoeLayers::listed({});
    for (size_t i = 0; i < node.size(); ++i) {
      int64_t index = 0;
      if (is_plain_scalar(node[i]) && parse_int64(node[i].Scalar(), &index)) {
        layers->list.push_back(index);
      } else {
        problems.add(path + "[" + std::to_string(i) + "]",
                     "expected a layer index (integer), got " + describe(node[i]));
      }
    }
    return;
  }
  if (!is_plain_scalar(node)) {
    problems.add(path, expected + describe(node));
    return;
  }
  // every_0 reads, so that validation can say what n must be.
  int64_t every = 0;
  if (node.Scalar() == "all")
    *layers = MoeLayers{};
  else if (parse_every_n(node.Scalar(), &every))
    *layers = MoeLayers::every_nth(every);
  else
    problems.add(path, expected + yaml_quote(node.Scalar()));
}

// A YAML sequence (or null, for none) of items that `read_item` parses.
template <class T, class Read>
void read_list(const YAML::Node& node, const std::string& path, const char* item_kind,
               std::vector<T>* out, Problems& problems, Read read_item) {
  out->clear();
  if (node.IsNull()) return;
  if (!node.IsSequence()) {
    problems.add(path, std::string("expected a sequence, got ") + describe(node));
    return;
  }
  for (size_t i = 0; i < node.size(); ++i) {
    T value{};
    if (read_item(node[i], &value)) out->push_back(value);
    else
      problems.add(path + "[" + std::to_string(i) + "]",
                   std::string("expected ") + item_kind + ", got " + describe(node[i]));
  }
}

void read_field(const YAML::Node& node, const std::string& path, const FieldRef& ref,
                Problems& problems) {
  const bool plain = is_plain_scalar(node);
  const std::string text = node.IsScalar() ? node.Scalar() : "";
  if (auto* out = std::get_if<std::string*>(&ref)) {
    if (node.IsScalar()) **out = text;
    else problems.add(path, "expected a string, got " + describe(node));
  } else if (auto* out = std::get_if<int64_t*>(&ref)) {
    if (!plain || !parse_int64(text, *out))
      problems.add(path, "expected an integer, got " + describe(node));
  } else if (auto* out = std::get_if<uint64_t*>(&ref)) {
    int64_t negative = 0;
    if (plain && parse_int64(text, &negative) && negative < 0)
      problems.add(path, "must be a non-negative integer, got " + text);
    else if (!plain || !parse_uint64(text, *out))
      problems.add(path, "expected a non-negative integer, got " + describe(node));
  } else if (auto* out = std::get_if<double*>(&ref)) {
    if (!plain || !parse_double(text, *out))
      problems.add(path, "expected a number, got " + describe(node));
  } else if (auto* out = std::get_if<bool*>(&ref)) {
    if (!plain || !parse_bool(text, *out))
      problems.add(path, "expected true or false, got " + describe(node));
  } else if (auto* out = std::get_if<Choice>(&ref)) {
    if (!node.IsScalar())
      problems.add(path, "expected a string, got " + describe(node));
    else if (!out->parse(text))
      problems.add(path, "unknown value " + yaml_quote(text) + " (expected " + out->allowed + ")");
  } else if (auto* out = std::get_if<TopkNormalize*>(&ref)) {
    bool value = false;
    if (node.IsNull()) **out = TopkNormalize::by_default;  // explicit null: the default rule
    else if (plain && parse_bool(text, &value)) **out = value ? TopkNormalize::on : TopkNormalize::off;
    else problems.add(path, "expected true or false, got " + describe(node));
  } else if (auto* out = std::get_if<MoeLayers*>(&ref)) {
    read_layers(node, path, *out, problems);
  } else if (auto* out = std::get_if<std::vector<std::string>*>(&ref)) {
    read_list(node, path, "a string", *out, problems,
              [](const YAML::Node& item, std::string* value) {
                if (!item.IsScalar()) return false;
                *value = item.Scalar();
                return true;
              });
  } else if (auto* out = std::get_if<std::vector<double>*>(&ref)) {
    read_list(node, path, "a number", *out, problems, [](const YAML::Node& item, double* value) {
      return is_plain_scalar(item) && parse_double(item.Scalar(), value);
    });
  }
}

// Reads the keys of one mapping into `section`'s fields; unknown and repeated keys are problems.
void read_mapping(const YAML::Node& map, const Section& section, Problems& problems) {
  std::set<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string key = it->first.IsScalar() ? it->first.Scalar() : "<" + describe(it->first) + ">";
    const std::string path = join_path(section.name, key);
    if (!seen.insert(key).second) {
      problems.add(path, "duplicate key");
      continue;
    }
    const Field* field = find_field(section, key);
    if (!field) {
      problems.add(path, "unknown key");
      continue;
    }
    read_field(it->second, path, field->ref, problems);
  }
}

void read_root(const YAML::Node& root, Config& config, Problems& problems) {
  if (root.IsNull()) return;  // an empty file: all defaults
  if (!root.IsMap()) {
    problems.add("(top level)", "expected a mapping of sections, got " + describe(root));
    return;
  }
  std::vector<Section> sections = config_fields(config);
  const Section& top_level = sections[0];
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.IsScalar() ? it->first.Scalar() : "<" + describe(it->first) + ">";
    if (!seen.insert(key).second) {
      problems.add(key, "duplicate key");
      continue;
    }
    if (const Field* field = find_field(top_level, key)) {
      read_field(it->second, key, field->ref, problems);
      continue;
    }
    const Section* section = key.empty() ? nullptr : find_section(sections, key);
    if (!section) {
      problems.add(key, "unknown key");
      continue;
    }
    if (it->second.IsNull()) continue;  // "moe:" with nothing under it: defaults
    if (!it->second.IsMap()) {
      problems.add(key, "expected a mapping, got " + describe(it->second));
      continue;
    }
    read_mapping(it->second, *section, problems);
  }
}

// ---- overrides ----------------------------------------------------------------------------------

// Applies one "section.key=value" to the tree; returns "" or what is wrong with it.
std::string apply_override(YAML::Node& root, const std::string& text) {
  const size_t equals = text.find('=');
  if (equals == std::string::npos) return "expected section.key=value";
  const std::string path = text.substr(0, equals);
  const std::string value_text = text.substr(equals + 1);

  Config scratch;
  const std::vector<Section> sections = config_fields(scratch);
  std::string section_name, key;
  const size_t dot = path.find('.');
  if (dot == std::string::npos) {
    key = path;
  } else {
    section_name = path.substr(0, dot);
    key = path.substr(dot + 1);
  }
  const Section* section = section_name.empty() ? nullptr : find_section(sections, section_name);
  const bool known = section_name.empty() ? find_field(sections[0], key) != nullptr
                                          : section && find_field(*section, key) != nullptr;
  if (!known && section_name.empty() && find_section(sections, key))
    return key + " is a section; set its keys one by one, as " + key + ".<key>=value";
  if (!known) return "unknown key " + path;

  YAML::Node value;
  if (value_text.empty()) {
    value = YAML::Node(std::string());  // "checkpoint.dir=" means the empty string
  } else {
    try {
      value = YAML::Load(value_text);
    } catch (const YAML::Exception& e) {
      return "value is not valid YAML (" + e.msg + ")";
    }
  }

  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  if (section_name.empty()) {
    root[key] = value;
    return "";
  }
  const YAML::Node existing = root[section_name];
  if (!existing.IsDefined() || existing.IsNull())
    root[section_name] = YAML::Node(YAML::NodeType::Map);
  else if (!existing.IsMap())
    return "cannot set " + path + ": " + section_name + " is not a mapping in the file";
  root[section_name][key] = value;
  return "";
}

// ---- validation helpers -------------------------------------------------------------------------

std::string str(int64_t value) { return std::to_string(value); }
std::string str(double value) { return format_double(value); }

void check_at_least(Problems& p, const std::string& path, int64_t value, int64_t minimum) {
  if (value < minimum) p.add(path, "must be >= " + str(minimum) + ", got " + str(value));
}

void check_finite(Problems& p, const std::string& path, double value) {
  if (!std::isfinite(value)) p.add(path, "must be a finite number, got " + str(value));
}

// The comparisons are written so that NaN fails them.
void check_positive(Problems& p, const std::string& path, double value) {
  if (!(value > 0)) p.add(path, "must be > 0, got " + str(value));
  else check_finite(p, path, value);
}

void check_non_negative(Problems& p, const std::string& path, double value) {
  if (!(value >= 0)) p.add(path, "must be >= 0, got " + str(value));
  else check_finite(p, path, value);
}

void validate_model(const ModelConfig& m, Problems& p) {
  check_at_least(p, "model.vocab_size", m.vocab_size, 2);
  check_at_least(p, "model.seq_len", m.seq_len, 1);
  check_at_least(p, "model.d_model", m.d_model, 1);
  check_at_least(p, "model.n_layers", m.n_layers, 1);
  check_at_least(p, "model.n_heads", m.n_heads, 1);
  check_at_least(p, "model.ffn_hidden", m.ffn_hidden, 1);
  check_at_least(p, "model.head_dim", m.head_dim, 0);
  if (m.head_dim > 0) {
    if (m.head_dim % 2 != 0)
      p.add("model.head_dim",
            str(m.head_dim) + " is odd; rotary embedding needs an even head width");
  } else if (m.d_model >= 1 && m.n_heads >= 1) {
    if (m.d_model % m.n_heads != 0) {
      p.add("model.d_model", str(m.d_model) + " is not divisible by model.n_heads (" +
                                 str(m.n_heads) + "); model.head_dim sets the heads' width");
    } else if ((m.d_model / m.n_heads) % 2 != 0) {
      p.add("model.n_heads", "head width d_model / n_heads = " + str(m.d_model / m.n_heads) +
                                 " is odd; rotary embedding needs an even head width");
    }
  }
  check_at_least(p, "model.n_kv_heads", m.n_kv_heads, 0);
  check_positive(p, "model.rope_theta", m.rope_theta);
  if (m.rope_scaling != RopeScaling::none) check_positive(p, "model.rope_factor", m.rope_factor);
  if (m.rope_scaling == RopeScaling::llama3) {
    check_positive(p, "model.rope_low_freq_factor", m.rope_low_freq_factor);
    if (!(m.rope_high_freq_factor > m.rope_low_freq_factor) ||
        !std::isfinite(m.rope_high_freq_factor))
      p.add("model.rope_high_freq_factor", str(m.rope_high_freq_factor) +
                                               " must be above model.rope_low_freq_factor (" +
                                               str(m.rope_low_freq_factor) + ")");
    check_at_least(p, "model.rope_original_max_position", m.rope_original_max_position, 1);
  }
  check_positive(p, "model.norm_eps", m.norm_eps);
  if (m.n_kv_heads >= 1 && m.n_heads >= 1 && m.n_heads % m.n_kv_heads != 0)
    p.add("model.n_kv_heads", str(m.n_kv_heads) + " does not divide model.n_heads (" +
                                  str(m.n_heads) + "); each key/value head serves a whole group");
}

void validate_layers(const Config& c, Problems& p) {
  const MoeLayers& layers = c.moe.layers;
  if (layers.kind == MoeLayers::Kind::all) return;
  if (layers.kind == MoeLayers::Kind::list) {
    std::set<int64_t> seen;
    for (size_t i = 0; i < layers.list.size(); ++i) {
      const int64_t layer = layers.list[i];
      const std::string path = "moe.layers[" + std::to_string(i) + "]";
      if (layer < 0 || layer >= c.model.n_layers)
        p.add(path, "layer " + str(layer) + " is out of range [0, " + str(c.model.n_layers) +
                        ") (model.n_layers = " + str(c.model.n_layers) + ")");
      else if (!seen.insert(layer).second)
        p.add(path, "layer " + str(layer) + " is listed twice");
    }
    return;
  }
  if (layers.every < 1) p.add("moe.layers", "every_<n> needs n >= 1, got " + to_string(layers));
}

void validate_moe(const Config& c, Problems& p) {
  const MoeConfig& moe = c.moe;
  check_at_least(p, "moe.num_experts", moe.num_experts, 0);
  if (moe.num_experts == 0 && moe.shared_expert_hidden != 0)
    p.add("moe.shared_expert_hidden", "is " + str(moe.shared_expert_hidden) +
                                          " but the model is dense (moe.num_experts 0): "
                                          "a shared expert sits beside routed ones");
  if (moe.num_experts > 0) {
    const int64_t top_k = moe.routing.top_k;
    if (top_k < 1)
      p.add("moe.top_k", "must be >= 1, got " + str(top_k));
    else if (top_k > moe.num_experts)
      p.add("moe.top_k", str(top_k) + " exceeds moe.num_experts (" + str(moe.num_experts) + ")");
    check_at_least(p, "moe.expert_hidden", moe.expert_hidden, 1);
    check_at_least(p, "moe.shared_expert_hidden", moe.shared_expert_hidden, 0);
    const int64_t ranks = c.parallel.expert_parallel;
    if (ranks >= 1 && moe.num_experts % ranks != 0)
      p.add("moe.num_experts", str(moe.num_experts) + " is not divisible by parallel.expert_parallel (" +
                                   str(ranks) + ")");
  }
  validate_layers(c, p);
  check_finite(p, "moe.capacity_factor", moe.capacity_factor);
  check_non_negative(p, "moe.aux_loss_coef", moe.aux_loss_coef);
  check_non_negative(p, "moe.z_loss_coef", moe.z_loss_coef);
  check_non_negative(p, "moe.bias_update_rate", moe.bias_update_rate);
}

void validate_train(const TrainConfig& t, Problems& p) {
  check_at_least(p, "train.micro_batch_size", t.micro_batch_size, 1);
  check_at_least(p, "train.grad_accum_steps", t.grad_accum_steps, 1);
  check_at_least(p, "train.steps", t.steps, 1);
  if (!(t.lr > 0)) p.add("train.lr", "must be > 0, got " + str(t.lr));
  else check_finite(p, "train.lr", t.lr);
  if (!(t.min_lr >= 0)) p.add("train.min_lr", "must be >= 0, got " + str(t.min_lr));
  else if (t.lr > 0 && t.min_lr > t.lr)
    p.add("train.min_lr", str(t.min_lr) + " exceeds train.lr (" + str(t.lr) + ")");
  // A warmup as long as the run or longer is allowed (a shortened run keeps its warmup): the LR
  // then rises linearly for the whole run.
  check_at_least(p, "train.warmup_steps", t.warmup_steps, 0);
  // Likewise a decay longer than the steps after the warmup: it then spans those steps.
  check_at_least(p, "train.decay_steps", t.decay_steps, 0);
  check_non_negative(p, "train.weight_decay", t.weight_decay);
  if (!(t.beta1 >= 0 && t.beta1 < 1)) p.add("train.beta1", "must be in [0, 1), got " + str(t.beta1));
  if (!(t.beta2 >= 0 && t.beta2 < 1)) p.add("train.beta2", "must be in [0, 1), got " + str(t.beta2));
  if (!(t.eps > 0)) p.add("train.eps", "must be > 0, got " + str(t.eps));
  else check_finite(p, "train.eps", t.eps);
  if (!(t.grad_clip >= 0)) p.add("train.grad_clip", "must be >= 0 (0 turns clipping off), got " + str(t.grad_clip));
  else check_finite(p, "train.grad_clip", t.grad_clip);
  check_at_least(p, "train.max_bad_steps", t.max_bad_steps, 1);
  check_at_least(p, "train.spike_window", t.spike_window, 0);
  if (!(t.spike_z > 0)) p.add("train.spike_z", "must be > 0, got " + str(t.spike_z));
  else check_finite(p, "train.spike_z", t.spike_z);
  check_at_least(p, "train.spike_min_steps", t.spike_min_steps, 2);
  if (t.spike_window > 0 && t.spike_min_steps > t.spike_window)
    p.add("train.spike_min_steps", str(t.spike_min_steps) + " exceeds train.spike_window (" +
                                       str(t.spike_window) + "): the guard would never act");
}

void validate_mixture(const DataConfig& d, Problems& p) {
  for (size_t i = 0; i < d.train_paths.size(); ++i)
    if (d.train_paths[i].empty())
      p.add("data.train_paths[" + std::to_string(i) + "]", "must not be empty");
  if (d.train_weights.empty()) return;
  if (d.train_weights.size() != d.train_paths.size()) {
    p.add("data.train_weights", std::to_string(d.train_weights.size()) + " weights for " +
                                    std::to_string(d.train_paths.size()) +
                                    " data.train_paths (one each, or none: by size)");
    return;
  }
  double total = 0;
  for (size_t i = 0; i < d.train_weights.size(); ++i) {
    const double w = d.train_weights[i];
    if (!(w >= 0) || !std::isfinite(w))
      p.add("data.train_weights[" + std::to_string(i) + "]",
            "must be finite and >= 0, got " + str(w));
    else total += w;
  }
  if (!(total > 0)) {
    p.add("data.train_weights", "must not all be 0");
    return;
  }
  // Epoch sampling interleaves the sources in periods of MixtureInterleave::kPeriod sequences.
  if (d.sampling != Sampling::epoch) return;
  const std::vector<int64_t> per_period = MixtureInterleave::per_period(d.train_weights);
  for (size_t i = 0; i < d.train_weights.size(); ++i) {
    const double w = d.train_weights[i];
    if (w > 0 && per_period[i] == 0)
      p.add("data.train_weights[" + std::to_string(i) + "]",
            str(w) + " is under 1/" + std::to_string(MixtureInterleave::kPeriod) +
                " of the total, the finest share data.sampling: epoch keeps");
  }
}

void validate_rest(const Config& c, Problems& p) {
  if (c.name.empty()) p.add("name", "must not be empty");
  check_at_least(p, "parallel.expert_parallel", c.parallel.expert_parallel, 1);
  if (!(c.parallel.timeout_s >= 0))
    p.add("parallel.timeout_s",
          "must be >= 0 (0 turns the watchdog off), got " + str(c.parallel.timeout_s));
  else check_finite(p, "parallel.timeout_s", c.parallel.timeout_s);
  if (c.data.path.empty()) p.add("data.path", "must not be empty");
  validate_mixture(c.data, p);
  check_at_least(p, "eval.every", c.eval.every, 0);
  check_at_least(p, "eval.tokens", c.eval.tokens, 0);
  if (c.eval.batches < -1) p.add("eval.batches", "must be >= 0, got " + str(c.eval.batches));
  if (c.eval.batches >= 0 && c.eval.tokens != EvalConfig{}.tokens)
    p.add("eval.batches", "is the deprecated form of eval.tokens; give only eval.tokens (" +
                              std::to_string(c.eval.batches) + " batches of " +
                              std::to_string(c.train.micro_batch_size) + " x " +
                              std::to_string(c.model.seq_len) + " are eval.tokens " +
                              std::to_string(eval_sequences(c) * c.model.seq_len) + ")");
  if (!c.eval.questions.empty() && eval_sequences(c) <= 0)
    p.add("eval.questions", "are scored at each evaluation, and eval.tokens 0 turns it off");
  if (c.eval.questions_context.empty()) p.add("eval.questions_context", "must not be empty");
  if (c.eval.questions_answer.empty()) p.add("eval.questions_answer", "must not be empty");
  if (c.eval.questions_choices.empty())
    p.add("eval.questions_choices", "must name a member, or several");
  for (size_t i = 0; i < c.eval.questions_choices.size(); ++i)
    if (c.eval.questions_choices[i].empty())
      p.add("eval.questions_choices[" + std::to_string(i) + "]", "must not be empty");
  check_at_least(p, "eval.questions_limit", c.eval.questions_limit, 0);
  check_at_least(p, "checkpoint.every", c.checkpoint.every, 0);
  check_at_least(p, "checkpoint.keep_last", c.checkpoint.keep_last, 1);
  if (c.checkpoint.upcycle) {
    if (c.checkpoint.init_from.empty())
      p.add("checkpoint.upcycle", "needs checkpoint.init_from: the dense checkpoint to upcycle");
    else if (c.moe.num_experts == 0)
      p.add("checkpoint.upcycle", "needs an MoE model (moe.num_experts > 0) to upcycle into");
    else if (c.moe.shared_expert_hidden > 0)
      p.add("checkpoint.upcycle",
            "moe.shared_expert_hidden must be 0: the dense FFN becomes "
            "the routed experts, and a shared expert would start untrained");
  }
  if (c.run.dir.empty()) p.add("run.dir", "must not be empty");
  check_at_least(p, "run.log_every", c.run.log_every, 1);
}

void validate_into(const Config& config, Problems& problems) {
  validate_model(config.model, problems);
  validate_moe(config, problems);
  validate_train(config.train, problems);
  validate_rest(config, problems);
}

// ---- emitting -----------------------------------------------------------------------------------

std::string format_field(const FieldRef& ref) {
  if (auto* v = std::get_if<std::string*>(&ref)) return yaml_quote(**v);
  if (auto* v = std::get_if<int64_t*>(&ref)) return std::to_string(**v);
  if (auto* v = std::get_if<uint64_t*>(&ref)) return std::to_string(**v);
  if (auto* v = std::get_if<double*>(&ref)) return format_double(**v);
  if (auto* v = std::get_if<bool*>(&ref)) return **v ? "true" : "false";
  if (auto* v = std::get_if<Choice>(&ref)) return yaml_quote(v->name());
  if (auto* v = std::get_if<TopkNormalize*>(&ref)) {
    if (**v == TopkNormalize::by_default)
      return "null  # default: true when top_k > 1 or router_score is sigmoid";
    return **v == TopkNormalize::on ? "true" : "false";
  }
  if (auto* v = std::get_if<MoeLayers*>(&ref)) return to_string(**v);
  if (auto* v = std::get_if<std::vector<std::string>*>(&ref)) {
    std::string out;
    for (const std::string& item : **v) out += (out.empty() ? "" : ", ") + yaml_quote(item);
    return "[" + out + "]";
  }
  if (auto* v = std::get_if<std::vector<double>*>(&ref)) {
    std::string out;
    for (double item : **v) out += (out.empty() ? "" : ", ") + format_double(item);
    return "[" + out + "]";
  }
  return "";
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------------

Config load_config(const std::string& path, const std::vector<std::string>& overrides,
                   std::vector<std::string>* all_errors) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    Problems problems{path, {}};
    problems.add("", std::string("cannot read config file (") + std::strerror(errno) + ")");
    const std::vector<std::string> lines = problems.lines();
    if (all_errors) *all_errors = lines;
    throw ConfigError(lines.front());
  }
  std::stringstream text;
  text << in.rdbuf();
  return load_config_text(text.str(), path, overrides, all_errors);
}

Config load_config_text(const std::string& yaml, const std::string& name,
                        const std::vector<std::string>& overrides,
                        std::vector<std::string>* all_errors) {
  const std::string& path = name;
  Problems problems{path, {}};
  auto finish = [&](Config config) {
    const std::vector<std::string> lines = problems.lines();
    if (all_errors) *all_errors = lines;
    if (!lines.empty()) throw ConfigError(lines.front());
    return config;
  };

  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    problems.add("line " + std::to_string(e.mark.line + 1) + ", column " +
                     std::to_string(e.mark.column + 1),
                 "YAML syntax error: " + e.msg);
    return finish(Config{});
  }

  for (const std::string& override_text : overrides) {
    const std::string problem = apply_override(root, override_text);
    if (!problem.empty()) problems.add("--set " + override_text, problem);
  }

  Config config;
  config.source_file = path;
  read_root(root, config, problems);

  // A value that failed to read keeps its default; rules about that key would only confuse.
  Problems rules{path, {}};
  validate_into(config, rules);
  for (const auto& [key_path, what] : rules.items) {
    const std::string bare_path = key_path.substr(0, key_path.find('['));
    if (!problems.has(key_path) && !problems.has(bare_path)) problems.add(key_path, what);
  }
  return finish(config);
}

std::vector<std::string> validate_config(const Config& config, const std::string& file) {
  Problems problems{file, {}};
  validate_into(config, problems);
  return problems.lines();
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;  // config_fields hands out pointers into a mutable Config
  std::string out;
  for (const Section& section : config_fields(copy)) {
    const bool top_level = section.name[0] == '\0';
    if (!top_level) out += std::string(section.name) + ":\n";
    for (const Field& field : section.fields) {
      if (std::string(field.key) == "batches" && std::string(section.name) == "eval" &&
          copy.eval.batches < 0)
        continue;  // the deprecated alias, not given
      out += std::string(top_level ? "" : "  ") + field.key + ": " + format_field(field.ref) + "\n";
    }
  }
  return out;
}

std::string canonical_config_value(const std::string& key, const std::string& value) {
  Config scratch;
  for (const Section& section : config_fields(scratch))
    for (const Field& field : section.fields) {
      const std::string name =
          section.name[0] == '\0' ? field.key : std::string(section.name) + "." + field.key;
      if (name != key) continue;
      const Choice* choice_field = std::get_if<Choice>(&field.ref);
      if (!choice_field || !choice_field->parse(value)) return value;
      return choice_field->name();
    }
  return value;
}

int64_t eval_sequences(const Config& config) {
  const int64_t seq_len = std::max<int64_t>(config.model.seq_len, 1);
  if (config.eval.batches >= 0)
    return config.eval.batches * std::max<int64_t>(config.train.micro_batch_size, 0);
  return std::max<int64_t>(config.eval.tokens, 0) / seq_len;
}

std::vector<std::string> layout_notes(const Config& config) {
  std::vector<std::string> notes;
  if (config.moe.num_experts <= 0) return notes;
  const int64_t B = config.train.micro_batch_size, A = config.train.grad_accum_steps;
  std::string note =
      "the routing groups are the micro-batches (train.micro_batch_size " + std::to_string(B) +
      "), so another rank layout gives the same losses only with the same micro_batch_size and "
      "the same global batch (ranks x grad_accum_steps, now ranks x " + std::to_string(A) + "); ";
  if (A > 1)
    note += "e.g. twice the ranks with grad_accum_steps " +
            (A % 2 == 0 ? std::to_string(A / 2) : std::string("halved (odd now: not possible)")) +
            ", or parallel.expert_parallel changed at the same ranks";
  else
    note += "at grad_accum_steps 1, more ranks means a larger global batch or a smaller "
            "micro-batch, and either changes the numbers; parallel.expert_parallel may change";
  notes.push_back(note);
  if (config.moe.aux_loss_scope == AuxLossScope::global)
    notes.push_back("moe.aux_loss_scope global counts the routing choices of every rank's group "
                    "of a micro-step: the losses also change with the number of ranks (not with "
                    "parallel.expert_parallel)");
  return notes;
}

std::vector<bool> moe_layer_mask(const Config& config) {
  const int64_t n_layers = std::max<int64_t>(config.model.n_layers, 0);
  std::vector<bool> mask(n_layers, false);
  const MoeConfig& moe = config.moe;
  if (moe.num_experts <= 0) return mask;
  const MoeLayers& layers = moe.layers;
  for (int64_t l = 0; l < n_layers; ++l) {
    if (layers.kind == MoeLayers::Kind::all) mask[l] = true;
    else if (layers.kind == MoeLayers::Kind::every && layers.every >= 1)
      mask[l] = (l + 1) % layers.every == 0;
  }
  if (layers.kind == MoeLayers::Kind::list)
    for (int64_t layer : layers.list)
      if (layer >= 0 && layer < n_layers) mask[layer] = true;
  return mask;
}

const char* to_string(AttentionKernel kernel) { return choice_name(kernel); }
const char* to_string(ExpertKernel kernel) { return choice_name(kernel); }
const char* to_string(AuxLossScope scope) { return choice_name(scope); }
const char* to_string(RouterScore score) { return choice_name(score); }
const char* to_string(DropPolicy policy) { return choice_name(policy); }
const char* to_string(Overflow overflow) { return choice_name(overflow); }
const char* to_string(CommunicatorKind communicator) { return choice_name(communicator); }
const char* to_string(OptimizerKind optimizer) { return choice_name(optimizer); }
const char* to_string(Recompute recompute) { return choice_name(recompute); }
const char* to_string(QkNorm qk_norm) { return choice_name(qk_norm); }
const char* to_string(RopeScaling scaling) { return choice_name(scaling); }
const char* to_string(LrDecay decay) { return choice_name(decay); }
const char* to_string(Device backend) { return choice_name(backend); }
const char* to_string(Precision precision) { return choice_name(precision); }
const char* to_string(WeightGrads grads) { return choice_name(grads); }
const char* to_string(Sampling sampling) { return choice_name(sampling); }

std::string to_string(const MoeLayers& layers) {
  switch (layers.kind) {
    case MoeLayers::Kind::all: return "all";
    case MoeLayers::Kind::every: return "every_" + std::to_string(layers.every);
    case MoeLayers::Kind::list: break;
  }
  std::string list = "[";
  for (size_t i = 0; i < layers.list.size(); ++i)
    list += (i ? ", " : "") + std::to_string(layers.list[i]);
  return list + "]";
}

}  // namespace sy
