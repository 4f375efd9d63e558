// Config loading, overrides, round trip and one test per class of bad input. Every error test
// checks the whole line "<file>: <yaml.path>: <what is wrong>", so a message stays useful.
// Run with the repository root as the working directory (ctest does this).
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

// A directory of this process's own, removed when the tests end.
fs::path temp_dir() {
  return fs::temp_directory_path() / ("sy_test_config_" + std::to_string(::getpid()));
}

struct RemoveTempDir : testing::Environment {
  void TearDown() override { fs::remove_all(temp_dir()); }
};
testing::Environment* const remove_temp_dir = testing::AddGlobalTestEnvironment(new RemoveTempDir);

// Writes `text` to a fresh file under temp_dir() and returns its path.
std::string write_temp(const std::string& text) {
  static int counter = 0;
  fs::create_directories(temp_dir());
  const fs::path path = temp_dir() / ("config_" + std::to_string(counter++) + ".yaml");
  std::ofstream(path) << text;
  return path.string();
}

// Loads and returns every error line (empty when the config is valid).
std::vector<std::string> load_errors(const std::string& path,
                                     const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> errors;
  try {
    load_config(path, overrides, &errors);
  } catch (const ConfigError& e) {
    EXPECT_FALSE(errors.empty());
    if (!errors.empty()) {
      EXPECT_EQ(std::string(e.what()), errors.front());  // the first line is the one thrown
    }
    return errors;
  }
  EXPECT_TRUE(errors.empty());
  return errors;
}

testing::AssertionResult has_line(const std::vector<std::string>& errors, const std::string& line) {
  for (const std::string& error : errors)
    if (error == line) return testing::AssertionSuccess();
  auto failure = testing::AssertionFailure() << "missing line: " << line << "\ngot:";
  for (const std::string& error : errors) failure << "\n  " << error;
  return failure;
}

// Writes `yaml`, loads it, and checks that "<file>: <path_and_reason>" is among the errors.
testing::AssertionResult rejects(const std::string& yaml, const std::string& path_and_reason,
                                 const std::vector<std::string>& overrides = {}) {
  const std::string file = write_temp(yaml);
  return has_line(load_errors(file, overrides), file + ": " + path_and_reason);
}

// ---- valid configs -------------------------------------------------------------------------------

TEST(Config, LoadsExample) {
  const Config c = load_config("configs/example.yaml");
  EXPECT_EQ(c.name, "brown-moe");
  EXPECT_EQ(c.seed, 1234u);
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.model.seq_len, 128);
  EXPECT_EQ(c.model.d_model, 128);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.n_heads, 4);
  EXPECT_EQ(c.model.ffn_hidden, 512);
  EXPECT_TRUE(c.model.tie_embeddings);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.routing.top_k, 2);
  EXPECT_EQ(c.moe.expert_hidden, 256);
  EXPECT_EQ(c.moe.layers, MoeLayers{});
  EXPECT_EQ(c.moe.capacity_factor, 0.0);
  EXPECT_EQ(c.moe.routing.normalize_topk, TopkNormalize::by_default);
  EXPECT_TRUE(c.moe.routing.normalizes());
  EXPECT_EQ(c.moe.aux_loss_coef, 0.01);
  EXPECT_EQ(c.moe.z_loss_coef, 0.001);
  EXPECT_EQ(c.parallel.expert_parallel, 1);
  EXPECT_EQ(c.train.micro_batch_size, 16);
  EXPECT_EQ(c.train.grad_accum_steps, 1);
  EXPECT_EQ(c.train.steps, 800);
  EXPECT_EQ(c.train.optimizer, OptimizerKind::adamw);
  EXPECT_EQ(c.train.lr, 3e-3);
  EXPECT_EQ(c.train.min_lr, 3e-4);
  EXPECT_EQ(c.train.warmup_steps, 50);
  EXPECT_EQ(c.train.weight_decay, 0.1);
  EXPECT_EQ(c.train.beta1, 0.9);
  EXPECT_EQ(c.train.beta2, 0.95);
  EXPECT_EQ(c.train.eps, 1e-8);
  EXPECT_EQ(c.train.grad_clip, 1.0);
  EXPECT_EQ(c.data.path, "corpora/brown.h5");
  EXPECT_EQ(c.eval.every, 100);
  EXPECT_EQ(c.eval.tokens, 40960);
  EXPECT_EQ(c.checkpoint.dir, "");
  EXPECT_EQ(c.checkpoint.every, 0);
  EXPECT_EQ(c.checkpoint.keep_last, 3);
  EXPECT_EQ(c.run.dir, "runs/brown-moe");
  EXPECT_EQ(c.run.log_every, 10);
  EXPECT_EQ(c.run.backend, Device::cpu);
  EXPECT_EQ(c.run.precision, Precision::fp32);
  EXPECT_EQ(c.source_file, "configs/example.yaml");
}

TEST(Config, LoadsTiny) {
  const Config c = load_config("configs/tiny.yaml");
  EXPECT_EQ(c.model.seq_len, 16);
  EXPECT_EQ(c.model.d_model, 16);
  EXPECT_EQ(c.model.n_layers, 2);
  EXPECT_EQ(c.model.n_heads, 2);
  EXPECT_EQ(c.model.ffn_hidden, 32);
  EXPECT_EQ(c.moe.num_experts, 4);
  EXPECT_EQ(c.moe.routing.top_k, 2);
  EXPECT_EQ(c.moe.expert_hidden, 16);
  EXPECT_EQ(c.train.micro_batch_size, 4);
  EXPECT_EQ(c.train.steps, 30);
  EXPECT_EQ(c.train.lr, 1e-2);
  EXPECT_EQ(c.train.warmup_steps, 5);
  EXPECT_EQ(c.run.dir, "runs/tiny");
  EXPECT_EQ(c.run.log_every, 5);
  EXPECT_EQ(c.eval.every, 10);
  EXPECT_EQ(c.eval.tokens, 128);  // 8 sequences of 16
}

TEST(Config, EmptyFileAndEmptySectionsGiveDefaults) {
  const Config defaults;
  const Config c = load_config(write_temp("model:\nmoe:\n"));
  EXPECT_EQ(config_to_yaml(c), config_to_yaml(defaults));
  EXPECT_EQ(load_config(write_temp("")).train.lr, defaults.train.lr);
}

TEST(Config, DefaultConfigIsValid) { EXPECT_TRUE(validate_config(Config{}).empty()); }

// ---- round trip ----------------------------------------------------------------------------------

void expect_round_trip(const Config& original) {
  const std::string yaml = config_to_yaml(original);
  const Config back = load_config(write_temp(yaml));
  EXPECT_EQ(config_to_yaml(back), yaml);
  EXPECT_EQ(back.name, original.name);
  EXPECT_EQ(back.seed, original.seed);
  EXPECT_EQ(back.moe.layers, original.moe.layers);
  EXPECT_EQ(back.moe.routing.normalize_topk, original.moe.routing.normalize_topk);
  EXPECT_EQ(back.moe.capacity_factor, original.moe.capacity_factor);  // bit-exact doubles
  EXPECT_EQ(back.train.lr, original.train.lr);
  EXPECT_EQ(back.train.min_lr, original.train.min_lr);
  EXPECT_EQ(back.train.eps, original.train.eps);
  EXPECT_EQ(back.checkpoint.dir, original.checkpoint.dir);
}

TEST(Config, RoundTripExample) { expect_round_trip(load_config("configs/example.yaml")); }

TEST(Config, RoundTripAwkwardValues) {
  Config c = load_config("configs/tiny.yaml");
  c.name = "a: \"quoted\" # not a comment \\ ";
  c.seed = 18446744073709551615ull;
  c.moe.layers = MoeLayers::listed({1, 0});
  c.moe.routing.normalize_topk = TopkNormalize::off;
  c.moe.capacity_factor = 1.0 / 3.0;
  c.train.lr = 0.1 + 0.2;  // 0.30000000000000004
  c.train.min_lr = 1e-300;
  c.checkpoint.dir = "";
  c.eval.questions = "hella swag.jsonl";
  c.eval.questions_choices = {"sol1", "sol2"};
  c.eval.questions_delimiter = " ";  // a space alone must survive the YAML
  ASSERT_TRUE(validate_config(c).empty());
  expect_round_trip(c);
  EXPECT_EQ(load_config(write_temp(config_to_yaml(c))).eval.questions_delimiter, " ");
  c.eval.questions_delimiter = "";
  EXPECT_EQ(load_config(write_temp(config_to_yaml(c))).eval.questions_delimiter, "");

  c.moe.layers = MoeLayers::every_nth(2);
  c.moe.routing.normalize_topk = TopkNormalize::on;
  expect_round_trip(c);

  c.moe.layers = MoeLayers::listed({});  // an empty list: dense
  expect_round_trip(c);
}

TEST(Config, YamlHasEveryKey) {
  const std::string yaml = config_to_yaml(Config{});
  for (const char* key : {"name:", "seed:", "vocab_size:", "tie_embeddings:", "layers: all",
                          "normalize_topk: null", "expert_parallel:", "grad_clip:", "path:",
                          "tokens: 40960", "keep_last:", "dir: \"\"", "precision:"})
    EXPECT_NE(yaml.find(key), std::string::npos) << key << "\n" << yaml;
}

// ---- overrides -----------------------------------------------------------------------------------

TEST(Config, Overrides) {
  const Config c = load_config("configs/example.yaml",
                               {"name=other", "seed=3", "moe.layers=[1,3]", "train.lr=1e-3",
                                "moe.normalize_topk=false", "checkpoint.dir=", "run.dir=runs/x",
                                "moe.top_k=1", "moe.top_k=3"});
  EXPECT_EQ(c.name, "other");
  EXPECT_EQ(c.seed, 3u);
  EXPECT_EQ(c.moe.layers, MoeLayers::listed({1, 3}));
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.moe.routing.normalize_topk, TopkNormalize::off);
  EXPECT_EQ(c.checkpoint.dir, "");
  EXPECT_EQ(c.run.dir, "runs/x");
  EXPECT_EQ(c.moe.routing.top_k, 3);  // applied in order
}

TEST(Config, OverrideCreatesMissingSection) {
  const Config c = load_config(write_temp("name: x\n"), {"moe.num_experts=4", "moe.layers=every_2"});
  EXPECT_EQ(c.moe.num_experts, 4);
  EXPECT_EQ(c.moe.layers, MoeLayers::every_nth(2));
}

TEST(Config, OverridesAreValidated) {
  const std::string file = "configs/example.yaml";
  EXPECT_TRUE(has_line(load_errors(file, {"moe.top_k=9"}),
                       file + ": moe.top_k: 9 exceeds moe.num_experts (8)"));
  EXPECT_TRUE(has_line(load_errors(file, {"model.d_model=abc"}),
                       file + ": model.d_model: expected an integer, got abc"));
  EXPECT_TRUE(has_line(load_errors(file, {"moe.top_k="}),
                       file + ": moe.top_k: expected an integer, got an empty value"));
}

TEST(Config, BadOverride) {
  const std::string file = "configs/example.yaml";
  EXPECT_TRUE(has_line(load_errors(file, {"moe.foo=1"}),
                       file + ": --set moe.foo=1: unknown key moe.foo"));
  EXPECT_TRUE(has_line(load_errors(file, {"nosection.lr=1"}),
                       file + ": --set nosection.lr=1: unknown key nosection.lr"));
  EXPECT_TRUE(has_line(load_errors(file, {"train.lr"}),
                       file + ": --set train.lr: expected section.key=value"));
  EXPECT_TRUE(has_line(load_errors(file, {"train=1"}),
                       file + ": --set train=1: train is a section; set its keys one by one, as "
                              "train.<key>=value"));
  EXPECT_TRUE(has_line(load_errors(file, {"lr=1"}), file + ": --set lr=1: unknown key lr"));
  const std::vector<std::string> errors = load_errors(file, {"moe.layers=[1,"});
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind(file + ": --set moe.layers=[1,: value is not valid YAML", 0), 0u)
      << errors[0];
}

// ---- unknown keys and wrong types -----------------------------------------------------------------

TEST(ConfigErrors, UnknownTopLevelKey) { EXPECT_TRUE(rejects("modle:\n  d_model: 8\n", "modle: unknown key")); }

TEST(ConfigErrors, UnknownNestedKey) {
  EXPECT_TRUE(rejects("moe:\n  num_expert: 8\n", "moe.num_expert: unknown key"));
  EXPECT_TRUE(rejects("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown key"));
}

TEST(ConfigErrors, DuplicateKey) {
  EXPECT_TRUE(rejects("train:\n  lr: 0.1\n  lr: 0.2\n", "train.lr: duplicate key"));
}

TEST(ConfigErrors, WrongTypes) {
  EXPECT_TRUE(rejects("model:\n  d_model: wide\n", "model.d_model: expected an integer, got wide"));
  EXPECT_TRUE(rejects("model:\n  d_model: 12.5\n", "model.d_model: expected an integer, got 12.5"));
  EXPECT_TRUE(rejects("train:\n  steps: 1e3\n", "train.steps: expected an integer, got 1e3"));
  EXPECT_TRUE(rejects("model:\n  n_layers: \"4\"\n",
                      "model.n_layers: expected an integer, got the string \"4\""));
  EXPECT_TRUE(rejects("train:\n  lr: fast\n", "train.lr: expected a number, got fast"));
  EXPECT_TRUE(rejects("model:\n  tie_embeddings: 1\n",
                      "model.tie_embeddings: expected true or false, got 1"));
  EXPECT_TRUE(rejects("moe:\n  normalize_topk: yes\n",
                      "moe.normalize_topk: expected true or false, got yes"));
  EXPECT_TRUE(rejects("model:\n  d_model: {a: 1}\n", "model.d_model: expected an integer, got a mapping"));
  EXPECT_TRUE(rejects("data:\n  path: [a, b]\n", "data.path: expected a string, got a sequence"));
  EXPECT_TRUE(rejects("model:\n  seq_len:\n", "model.seq_len: expected an integer, got null"));
  EXPECT_TRUE(rejects("model: 3\n", "model: expected a mapping, got 3"));
  EXPECT_TRUE(rejects("- a\n- b\n", "(top level): expected a mapping of sections, got a sequence"));
}

TEST(ConfigErrors, Seed) {
  EXPECT_TRUE(rejects("seed: -1\n", "seed: must be a non-negative integer, got -1"));
  EXPECT_TRUE(rejects("seed: 1.5\n", "seed: expected a non-negative integer, got 1.5"));
}

TEST(ConfigErrors, AllErrorsAreReported) {
  const std::string file = write_temp("model:\n  d_model: x\n  n_heads: 0\ntrain:\n  lr: -1\n");
  const std::vector<std::string> errors = load_errors(file);
  EXPECT_EQ(errors.size(), 3u);
  EXPECT_TRUE(has_line(errors, file + ": model.d_model: expected an integer, got x"));
  EXPECT_TRUE(has_line(errors, file + ": model.n_heads: must be >= 1, got 0"));
  EXPECT_TRUE(has_line(errors, file + ": train.lr: must be > 0, got -1.0"));
}

// ---- ranges and cross-field rules ------------------------------------------------------------------

TEST(ConfigRules, ModelShapes) {
  EXPECT_TRUE(rejects("model:\n  vocab_size: 1\n", "model.vocab_size: must be >= 2, got 1"));
  EXPECT_TRUE(rejects("model:\n  seq_len: 0\n", "model.seq_len: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("model:\n  n_layers: 0\n", "model.n_layers: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("model:\n  ffn_hidden: 0\n", "model.ffn_hidden: must be >= 1, got 0"));
}

TEST(ConfigRules, DModelDivisibleByHeads) {
  EXPECT_TRUE(rejects("model:\n  d_model: 130\n  n_heads: 4\n",
                      "model.d_model: 130 is not divisible by model.n_heads (4); "
                      "model.head_dim sets the heads' width"));
}

// model.head_dim decouples the heads from d_model (Qwen3): any even width.
TEST(ConfigRules, HeadDim) {
  const std::string file = write_temp("model:\n  d_model: 130\n  n_heads: 4\n  head_dim: 64\n");
  EXPECT_EQ(load_errors(file, {}), std::vector<std::string>{});
  EXPECT_EQ(load_config(file).model.q_width(), 256);
  EXPECT_TRUE(rejects("model:\n  head_dim: 7\n",
                      "model.head_dim: 7 is odd; rotary embedding needs an even head width"));
  EXPECT_TRUE(rejects("model:\n  head_dim: -2\n", "model.head_dim: must be >= 0, got -2"));
}

// model.qk_norm: none, full or per_head; true and false (its spellings before per_head) read as
// full and none, and are written back as those.
TEST(ConfigRules, QkNormChoices) {
  EXPECT_EQ(load_config(write_temp("model:\n  qk_norm: per_head\n")).model.qk_norm,
            QkNorm::per_head);
  const Config old = load_config(write_temp("model:\n  qk_norm: true\n"));
  EXPECT_EQ(old.model.qk_norm, QkNorm::full);
  EXPECT_NE(config_to_yaml(old).find("qk_norm: \"full\"\n"), std::string::npos);
  EXPECT_EQ(load_config(write_temp("model:\n  qk_norm: false\n")).model.qk_norm, QkNorm::none);
  EXPECT_TRUE(rejects("model:\n  qk_norm: sideways\n",
                      "model.qk_norm: unknown value \"sideways\" (expected none, full, per_head, "
                      "false or true)"));
}

TEST(ConfigRules, OddHeadWidth) {
  EXPECT_TRUE(rejects("model:\n  n_heads: 4\n  n_kv_heads: 3\n",
                      "model.n_kv_heads: 3 does not divide model.n_heads (4); each key/value "
                      "head serves a whole group"));
  EXPECT_TRUE(rejects("model:\n  n_kv_heads: -1\n", "model.n_kv_heads: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("model:\n  d_model: 12\n  n_heads: 4\n",
                      "model.n_heads: head width d_model / n_heads = 3 is odd; rotary embedding "
                      "needs an even head width"));
}

TEST(ConfigRules, RopeThetaAndNormEps) {
  EXPECT_TRUE(rejects("model:\n  rope_theta: 0\n", "model.rope_theta: must be > 0, got 0.0"));
  EXPECT_TRUE(rejects("model:\n  norm_eps: -1e-6\n", "model.norm_eps: must be > 0, got -1.0e-06"));
  EXPECT_TRUE(rejects("model:\n  rope_theta: .inf\n",
                      "model.rope_theta: must be a finite number, got .inf"));
}

// model.rope_scaling's parameters are checked only for the rule that reads them.
TEST(ConfigRules, RopeScaling) {
  const Config llama3 = load_config(write_temp(
      "model:\n  rope_scaling: llama3\n  rope_factor: 32\n  rope_original_max_position: 8192\n"));
  EXPECT_EQ(llama3.model.rotary().scaling, RopeScaling::llama3);
  EXPECT_EQ(llama3.model.rotary().factor, 32.0);
  EXPECT_TRUE(rejects("model:\n  rope_scaling: linear\n  rope_factor: 0\n",
                      "model.rope_factor: must be > 0, got 0.0"));
  EXPECT_TRUE(rejects("model:\n  rope_scaling: llama3\n  rope_high_freq_factor: 1\n",
                      "model.rope_high_freq_factor: 1.0 must be above "
                      "model.rope_low_freq_factor (1.0)"));
  EXPECT_TRUE(rejects("model:\n  rope_scaling: llama3\n  rope_original_max_position: 0\n",
                      "model.rope_original_max_position: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("model:\n  rope_scaling: yarn\n",
                      "model.rope_scaling: unknown value \"yarn\" (expected none, linear or "
                      "llama3)"));
  // Unread without a scaling.
  EXPECT_EQ(load_errors(write_temp("model:\n  rope_factor: 0\n")), std::vector<std::string>{});
}

TEST(ConfigRules, UpcycleNeedsADenseCheckpointAndAnMoeModel) {
  EXPECT_TRUE(rejects("checkpoint:\n  upcycle: true\n",
                      "checkpoint.upcycle: needs checkpoint.init_from: the dense checkpoint to "
                      "upcycle"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 0\ncheckpoint:\n  upcycle: true\n  init_from: x.h5\n",
                      "checkpoint.upcycle: needs an MoE model (moe.num_experts > 0) to upcycle "
                      "into"));
}

TEST(ConfigRules, TopK) {
  EXPECT_TRUE(rejects("moe:\n  num_experts: 8\n  top_k: 9\n", "moe.top_k: 9 exceeds moe.num_experts (8)"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 8\n  top_k: 0\n", "moe.top_k: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: -1\n", "moe.num_experts: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  expert_hidden: 0\n",
                      "moe.expert_hidden: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  shared_expert_hidden: -1\n",
                      "moe.shared_expert_hidden: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 0\n  shared_expert_hidden: 8\n",
                      "moe.shared_expert_hidden: is 8 but the model is dense (moe.num_experts 0): "
                      "a shared expert sits beside routed ones"));
  // A dense model ignores top_k.
  EXPECT_TRUE(load_errors(write_temp("moe:\n  num_experts: 0\n  top_k: 9\n")).empty());
}

TEST(ConfigRules, ExpertsDivisibleByExpertParallel) {
  EXPECT_TRUE(rejects("moe:\n  num_experts: 6\nparallel:\n  expert_parallel: 4\n",
                      "moe.num_experts: 6 is not divisible by parallel.expert_parallel (4)"));
  EXPECT_TRUE(rejects("parallel:\n  expert_parallel: 0\n", "parallel.expert_parallel: must be >= 1, got 0"));
}

TEST(ConfigRules, LayersSpec) {
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: some\n",
                      "moe.layers: expected all, every_<n> or a sequence of layer indices, got \"some\""));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: every_0\n",
                      "moe.layers: every_<n> needs n >= 1, got every_0"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: list\n",
                      "moe.layers: expected all, every_<n> or a sequence of layer indices, got \"list\""));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: {a: 1}\n",
                      "moe.layers: expected all, every_<n> or a sequence of layer indices, got a mapping"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: [0, x]\n",
                      "moe.layers[1]: expected a layer index (integer), got x"));
}

TEST(ConfigRules, LayerIndexOutOfRange) {
  EXPECT_TRUE(rejects("model:\n  n_layers: 4\nmoe:\n  num_experts: 4\n  layers: [1, 4]\n",
                      "moe.layers[1]: layer 4 is out of range [0, 4) (model.n_layers = 4)"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: [-1]\n",
                      "moe.layers[0]: layer -1 is out of range [0, 4) (model.n_layers = 4)"));
  EXPECT_TRUE(rejects("moe:\n  num_experts: 4\n  layers: [1, 2, 1]\n",
                      "moe.layers[2]: layer 1 is listed twice"));
}

TEST(ConfigRules, MoeCoefficients) {
  EXPECT_TRUE(rejects("moe:\n  capacity_factor: .inf\n",
                      "moe.capacity_factor: must be a finite number, got .inf"));
  EXPECT_TRUE(rejects("moe:\n  aux_loss_coef: -0.5\n", "moe.aux_loss_coef: must be >= 0, got -0.5"));
  EXPECT_TRUE(rejects("moe:\n  z_loss_coef: -1e-3\n", "moe.z_loss_coef: must be >= 0, got -0.001"));
}

TEST(ConfigRules, BalancingOptions) {
  EXPECT_TRUE(rejects("moe:\n  bias_update_rate: -0.001\n",
                      "moe.bias_update_rate: must be >= 0, got -0.001"));
  EXPECT_TRUE(rejects("moe:\n  aux_loss_scope: batch\n",
                      "moe.aux_loss_scope: unknown value \"batch\" (expected micro_batch or global)"));
  EXPECT_TRUE(rejects("moe:\n  router_score: relu\n",
                      "moe.router_score: unknown value \"relu\" (expected softmax or sigmoid)"));
  EXPECT_TRUE(rejects("moe:\n  drop_policy: random\n",
                      "moe.drop_policy: unknown value \"random\" (expected position or probability)"));
  EXPECT_TRUE(rejects("moe:\n  overflow: spill\n",
                      "moe.overflow: unknown value \"spill\" (expected drop or reroute)"));
  const Config c = load_config("configs/example.yaml",
                               {"moe.router_score=sigmoid", "moe.overflow=reroute",
                                "moe.drop_policy=probability", "moe.aux_loss_scope=global",
                                "moe.bias_update_rate=0.001"});
  EXPECT_EQ(c.moe.routing.score, RouterScore::sigmoid);
  EXPECT_EQ(c.moe.routing.overflow, Overflow::reroute);
  EXPECT_EQ(c.moe.routing.drop_policy, DropPolicy::probability);
  EXPECT_EQ(c.moe.aux_loss_scope, AuxLossScope::global);
  EXPECT_EQ(c.moe.bias_update_rate, 0.001);
  // sigmoid scores are normalised by default, also at top-1
  EXPECT_TRUE(c.moe.routing.normalizes());
  Config top1 = c;
  top1.moe.routing.top_k = 1;
  EXPECT_TRUE(top1.moe.routing.normalizes());
  top1.moe.routing.score = RouterScore::softmax;
  EXPECT_FALSE(top1.moe.routing.normalizes());
  expect_round_trip(c);
}

TEST(ConfigRules, LearningRates) {
  EXPECT_TRUE(rejects("train:\n  lr: -0.001\n", "train.lr: must be > 0, got -0.001"));
  EXPECT_TRUE(rejects("train:\n  lr: 0\n", "train.lr: must be > 0, got 0.0"));
  EXPECT_TRUE(rejects("train:\n  lr: .nan\n", "train.lr: must be > 0, got .nan"));
  EXPECT_TRUE(rejects("train:\n  lr: 0.001\n  min_lr: 0.01\n", "train.min_lr: 0.01 exceeds train.lr (0.001)"));
  EXPECT_TRUE(rejects("train:\n  min_lr: -1e-4\n", "train.min_lr: must be >= 0, got -0.0001"));
  EXPECT_TRUE(rejects("train:\n  decay_steps: -1\n", "train.decay_steps: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("train:\n  lr_decay: wsd\n",
                      "train.lr_decay: unknown value \"wsd\" (expected cosine, linear or 1-sqrt)"));
  // A decay longer than the run after its warmup is allowed, like such a warmup (smoke runs).
  EXPECT_TRUE(validate_config(
                  load_config("configs/example.yaml", {"train.steps=20", "train.decay_steps=500"}))
                  .empty());
}

TEST(ConfigRules, Optimizer) {
  EXPECT_TRUE(rejects("train:\n  optimizer: adam\n",
                      "train.optimizer: unknown value \"adam\" (expected adamw or sgd)"));
}

// The keys that were strings before they were enums: every name reads into its value and is
// written back as the same text (checkpoints compare the written config on resume).
TEST(ConfigRules, ChoiceKeysReadAndWriteTheirNames) {
  struct Key {
    const char* path;
    std::vector<std::string> names;
    std::function<std::string(const Config&)> name_of;
  };
  const std::vector<Key> keys = {
      {"train.optimizer",
       {"adamw", "sgd"},
       [](const Config& c) { return to_string(c.train.optimizer); }},
      {"train.lr_decay",
       {"cosine", "linear", "1-sqrt"},
       [](const Config& c) { return to_string(c.train.lr_decay); }},
      {"train.recompute",
       {"none", "norms", "attention", "layer"},
       [](const Config& c) { return to_string(c.train.recompute); }},
      {"parallel.communicator",
       {"auto", "nccl", "mpi"},
       [](const Config& c) { return to_string(c.parallel.communicator); }},
      {"run.backend", {"cpu", "cuda"}, [](const Config& c) { return to_string(c.run.backend); }},
      {"run.precision",
       {"fp32", "bf16"},
       [](const Config& c) { return to_string(c.run.precision); }},
  };
  for (const Key& key : keys) {
    const std::string section = std::string(key.path).substr(0, std::string(key.path).find('.'));
    const std::string name_key = std::string(key.path).substr(section.size() + 1);
    for (const std::string& name : key.names) {
      const Config c = load_config("configs/example.yaml", {std::string(key.path) + "=" + name});
      EXPECT_EQ(key.name_of(c), name) << key.path;
      const std::string yaml = config_to_yaml(c);
      EXPECT_NE(yaml.find("  " + name_key + ": \"" + name + "\"\n"), std::string::npos)
          << key.path << " " << name << "\n" << yaml;
      expect_round_trip(c);
    }
  }
  // The table maps each name to its own value.
  EXPECT_EQ(load_config("configs/example.yaml", {"train.optimizer=sgd"}).train.optimizer,
            OptimizerKind::sgd);
  EXPECT_EQ(load_config("configs/example.yaml", {"train.recompute=layer"}).train.recompute,
            Recompute::layer);
  EXPECT_EQ(load_config("configs/example.yaml", {"train.recompute=attention"}).train.recompute,
            Recompute::attention);
  EXPECT_EQ(load_config("configs/example.yaml", {"train.lr_decay=1-sqrt"}).train.lr_decay,
            LrDecay::one_minus_sqrt);
  EXPECT_EQ(load_config("configs/example.yaml", {"train.lr_decay=linear"}).train.lr_decay,
            LrDecay::linear);
  EXPECT_EQ(load_config("configs/example.yaml", {"run.backend=cuda"}).run.backend, Device::cuda);
  EXPECT_EQ(load_config("configs/example.yaml", {"parallel.communicator=nccl"}).parallel.communicator,
            CommunicatorKind::nccl);
  EXPECT_EQ(load_config("configs/example.yaml", {"run.precision=bf16"}).run.precision,
            Precision::bf16);
  EXPECT_TRUE(rejects("train:\n  recompute: all\n",
                      "train.recompute: unknown value \"all\" (expected none, norms, attention or layer)"));
  EXPECT_TRUE(rejects("parallel:\n  communicator: gloo\n",
                      "parallel.communicator: unknown value \"gloo\" (expected auto, nccl or mpi)"));
  EXPECT_TRUE(rejects("run:\n  backend: [cpu]\n", "run.backend: expected a string, got a sequence"));
}

// data.train_paths and data.train_weights: YAML sequences, written back as flow sequences, their
// rules checked with the entry named.
TEST(ConfigRules, DataMixture) {
  const Config c = load_config("configs/example.yaml", {"data.train_paths=[a.h5, \"b c.h5\"]",
                                                        "data.train_weights=[0.7, 0.1]"});
  EXPECT_EQ(c.data.train_paths, (std::vector<std::string>{"a.h5", "b c.h5"}));
  EXPECT_EQ(c.data.train_weights, (std::vector<double>{0.7, 0.1}));
  EXPECT_NE(config_to_yaml(c).find("  train_paths: [\"a.h5\", \"b c.h5\"]\n  train_weights: "
                                   "[0.7, 0.1]\n"),
            std::string::npos);
  expect_round_trip(c);
  const Config back = load_config(write_temp(config_to_yaml(c)));
  EXPECT_EQ(back.data.train_paths, c.data.train_paths);
  EXPECT_EQ(back.data.train_weights, c.data.train_weights);
  EXPECT_TRUE(
      load_config("configs/example.yaml", {"data.train_paths=[]"}).data.train_paths.empty());
  EXPECT_TRUE(
      rejects("data:\n  train_paths: a.h5\n", "data.train_paths: expected a sequence, got a.h5"));
  EXPECT_TRUE(rejects("data:\n  train_paths: [a.h5, [b]]\n",
                      "data.train_paths[1]: expected a string, got a sequence"));
  EXPECT_TRUE(
      rejects("data:\n  train_paths: [a.h5, \"\"]\n", "data.train_paths[1]: must not be empty"));
  EXPECT_TRUE(
      rejects("data:\n  train_paths: [a.h5]\n  train_weights: [1, 2]\n",
              "data.train_weights: 2 weights for 1 data.train_paths (one each, or none: by size)"));
  EXPECT_TRUE(rejects("data:\n  train_paths: [a.h5, b.h5]\n  train_weights: [1, x]\n",
                      "data.train_weights[1]: expected a number, got x"));
  EXPECT_TRUE(rejects("data:\n  train_paths: [a.h5, b.h5]\n  train_weights: [1, -1]\n",
                      "data.train_weights[1]: must be finite and >= 0, got -1.0"));
  EXPECT_TRUE(rejects("data:\n  train_paths: [a.h5]\n  train_weights: [0]\n",
                      "data.train_weights: must not all be 0"));
}

TEST(ConfigRules, Steps) {
  EXPECT_TRUE(rejects("train:\n  steps: 0\n", "train.steps: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("train:\n  micro_batch_size: 0\n", "train.micro_batch_size: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("train:\n  grad_accum_steps: 0\n", "train.grad_accum_steps: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("train:\n  warmup_steps: -1\n", "train.warmup_steps: must be >= 0, got -1"));
  EXPECT_TRUE(load_errors(write_temp("train:\n  steps: 10\n  warmup_steps: 20\n")).empty());
  EXPECT_TRUE(load_errors(write_temp("train:\n  steps: 1\n  warmup_steps: 0\n")).empty());
}

TEST(ConfigRules, OptimizerHyperparameters) {
  EXPECT_TRUE(rejects("train:\n  weight_decay: -0.1\n", "train.weight_decay: must be >= 0, got -0.1"));
  EXPECT_TRUE(rejects("train:\n  beta1: 1.0\n", "train.beta1: must be in [0, 1), got 1.0"));
  EXPECT_TRUE(rejects("train:\n  beta2: -0.5\n", "train.beta2: must be in [0, 1), got -0.5"));
  EXPECT_TRUE(rejects("train:\n  eps: 0\n", "train.eps: must be > 0, got 0.0"));
  EXPECT_TRUE(rejects("train:\n  grad_clip: -1\n",
                      "train.grad_clip: must be >= 0 (0 turns clipping off), got -1.0"));
}

TEST(ConfigRules, DataEvalCheckpointRun) {
  EXPECT_TRUE(rejects("data:\n  path: \"\"\n", "data.path: must not be empty"));
  EXPECT_TRUE(rejects("eval:\n  every: -1\n", "eval.every: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("eval:\n  batches: -2\n", "eval.batches: must be >= 0, got -2"));
  EXPECT_TRUE(rejects("eval:\n  tokens: -1\n", "eval.tokens: must be >= 0, got -1"));
  EXPECT_TRUE(
      rejects("eval:\n  questions: q.jsonl\n  tokens: 0\n",
              "eval.questions: are scored at each evaluation, and eval.tokens 0 turns it off"));
  EXPECT_TRUE(
      rejects("eval:\n  questions_limit: -1\n", "eval.questions_limit: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("eval:\n  questions_choices: []\n",
                      "eval.questions_choices: must name a member, or several"));
  EXPECT_TRUE(rejects("eval:\n  questions_choices: [sol1, \"\"]\n",
                      "eval.questions_choices[1]: must not be empty"));
  EXPECT_TRUE(
      rejects("eval:\n  questions_context: \"\"\n", "eval.questions_context: must not be empty"));
  EXPECT_TRUE(rejects("checkpoint:\n  every: -1\n", "checkpoint.every: must be >= 0, got -1"));
  EXPECT_TRUE(rejects("checkpoint:\n  keep_last: 0\n", "checkpoint.keep_last: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("run:\n  log_every: 0\n", "run.log_every: must be >= 1, got 0"));
  EXPECT_TRUE(rejects("run:\n  backend: tpu\n", "run.backend: unknown value \"tpu\" (expected cpu or cuda)"));
  EXPECT_TRUE(rejects("run:\n  precision: fp16\n",
                      "run.precision: unknown value \"fp16\" (expected fp32 or bf16)"));
}

TEST(ConfigRules, ValidateConfigBuiltInCode) {
  Config c;
  c.moe.num_experts = 8;
  c.moe.routing.top_k = 9;
  const std::vector<std::string> errors = validate_config(c, "code");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], "code: moe.top_k: 9 exceeds moe.num_experts (8)");
}

// ---- files -----------------------------------------------------------------------------------------

TEST(ConfigErrors, MissingFile) {
  const std::string file = "configs/does_not_exist.yaml";
  try {
    load_config(file);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), file + ": cannot read config file (No such file or directory)");
  }
}

TEST(ConfigErrors, YamlSyntaxError) {
  const std::string file = write_temp("model:\n  d_model: 8\n  n_heads: [1, 2\nmoe:\n  top_k: 1\n");
  const std::vector<std::string> errors = load_errors(file);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind(file + ": line ", 0), 0u) << errors[0];
  EXPECT_NE(errors[0].find("YAML syntax error"), std::string::npos) << errors[0];
}

// ---- moe_layer_mask ----------------------------------------------------------------------------------

std::vector<bool> mask_of(int64_t n_layers, int64_t num_experts, const MoeLayers& layers) {
  Config c;
  c.model.n_layers = n_layers;
  c.moe.num_experts = num_experts;
  c.moe.layers = layers;
  return moe_layer_mask(c);
}

TEST(MoeLayerMask, Cases) {
  using L = MoeLayers;
  EXPECT_EQ(mask_of(4, 8, L{}), (std::vector<bool>{true, true, true, true}));
  EXPECT_EQ(mask_of(6, 8, L::every_nth(2)), (std::vector<bool>{false, true, false, true, false, true}));
  EXPECT_EQ(mask_of(6, 8, L::every_nth(3)), (std::vector<bool>{false, false, true, false, false, true}));
  EXPECT_EQ(mask_of(4, 8, L::every_nth(1)), (std::vector<bool>{true, true, true, true}));
  EXPECT_EQ(mask_of(4, 8, L::listed({0, 3})), (std::vector<bool>{true, false, false, true}));
  EXPECT_EQ(mask_of(4, 8, L::listed({})), (std::vector<bool>(4, false)));  // empty list: dense
  EXPECT_EQ(mask_of(4, 0, L{}), (std::vector<bool>(4, false)));            // no experts: dense
}

TEST(MoeLayerMask, FromYamlList) {
  const Config c = load_config("configs/example.yaml", {"moe.layers=[1, 3]"});
  EXPECT_EQ(moe_layer_mask(c), (std::vector<bool>{false, true, false, true}));
  const Config dense = load_config("configs/example.yaml", {"moe.layers=[]"});
  EXPECT_EQ(moe_layer_mask(dense), (std::vector<bool>(4, false)));
}

// run.deterministic: on by default, a bool like the others, and written to the resolved config.
TEST(Config, RunDeterministic) {
  EXPECT_TRUE(load_config("configs/example.yaml").run.deterministic);
  const Config off = load_config("configs/example.yaml", {"run.deterministic=false"});
  EXPECT_FALSE(off.run.deterministic);
  EXPECT_NE(config_to_yaml(off).find("deterministic: false"), std::string::npos);
  EXPECT_TRUE(rejects("run:\n  deterministic: maybe\n",
                      "run.deterministic: expected true or false, got maybe"));
}

}  // namespace
}  // namespace sy
