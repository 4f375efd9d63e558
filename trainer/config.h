// The experiment config: one small typed struct per YAML section (docs/config.md).
// Loaded and validated in one place (config.cpp); each module receives only its own struct.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "model/model_config.h"
#include "model/tensor.h"
#include "model/transformer.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/parallel_config.h"

namespace sy {

struct TrainConfig {
  int64_t micro_batch_size = 16;
  int64_t grad_accum_steps = 1;
  int64_t steps = 800;
  OptimizerKind optimizer = OptimizerKind::adamw;
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup_steps = 50;
  LrDecay lr_decay = LrDecay::cosine;
  int64_t decay_steps = 0;  // the last steps that decay (WSD); 0: every step after the warmup
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;             // <= 0: no clipping
  int64_t max_bad_steps = 3;          // non-finite steps in a row (each skipped) before the run stops
  // What backward rebuilds instead of keeping (model/transformer.h, docs/config.md).
  Recompute recompute = Recompute::norms;
  // Loss-spike guard (trainer/spike_guard.h): a step whose loss is more than spike_z standard
  // deviations above the mean of the last spike_window accepted steps is skipped like a
  // non-finite one, once the window holds spike_min_steps losses. spike_window 0: off.
  int64_t spike_window = 0;
  double spike_z = 6.0;
  int64_t spike_min_steps = 20;
};

// train.* as the optimizer's and the schedule's own settings: optim/ does not read the config.
inline OptimizerSettings optimizer_settings(const TrainConfig& train) {
  return {train.optimizer, train.beta1, train.beta2, train.eps, train.weight_decay};
}
inline LrSchedule lr_schedule(const TrainConfig& train) {
  return {train.lr,    train.min_lr,   train.warmup_steps,
          train.steps, train.lr_decay, train.decay_steps};
}

struct EvalConfig {
  int64_t every = 100;                // 0: only at the end
  // Validation tokens, rounded down to whole sequences of model.seq_len: the first
  // tokens / seq_len sequences of the validation split, whatever the batch shape (docs/config.md).
  // 0: no evaluation. 40960 is what the old default (20 batches of 16 x 128) held.
  int64_t tokens = 40960;
  // Deprecated alias, -1 when not given: when >= 0, replaces tokens by batches *
  // micro_batch_size * seq_len (the sequences it used to choose), so that old configs and run
  // directories keep their validation set. The resolved config writes it only when given.
  int64_t batches = -1;
  // Multiple-choice questions scored at every evaluation, as `switchyard score` scores them
  // (docs/data.md, "Multiple choice"): choice_accuracy and choice_accuracy_norm beside val_loss.
  // "": none. The members, the delimiter and a limit as score's options.
  std::string questions = "";
  std::string questions_context = "context";
  std::vector<std::string> questions_choices = {"choices"};
  std::string questions_answer = "answer";
  std::string questions_delimiter = " ";
  int64_t questions_limit = 0;  // the first N questions (0: all)
};

struct CheckpointConfig {
  std::string dir = "";               // "": <run.dir>/checkpoints
  int64_t every = 0;                  // 0: only at the end
  int64_t keep_last = 3;
  bool async = false;                 // write the file in the background (docs/checkpoint.md)
  bool at_end = true;                 // false: no save when train.steps is reached
  // A fresh run's parameters from this checkpoint (a file, a checkpoints or run folder, or a
  // `latest` file): weights only, the run's own step 0, schedule, optimizer state and data.
  // "": the config's initialisation. Ignored when the run resumes (its checkpoint has them).
  std::string init_from = "";
  // With init_from: the checkpoint is a dense model and this one an MoE model of the same shape
  // otherwise; every expert of an MoE layer starts as that layer's dense FFN (sparse upcycling),
  // the routers as the config initialises them (docs/checkpoint.md).
  bool upcycle = false;
};

// run.precision: the dtype the model computes in; the master weights stay fp32 (docs/cuda.md).
enum class Precision { fp32, bf16 };
inline DType compute_dtype(Precision precision) {
  return precision == Precision::bf16 ? DType::bf16 : DType::f32;
}

// run.weight_grads: which weight gradients that GEMMs write are rounded to bf16 (docs/cuda.md,
// "bf16 weight gradients"; bf16_grads, bf16_grad_storage below). auto: every one; experts: the
// expert weights' only; fp32: none.
enum class WeightGrads { automatic, experts, fp32 };

struct RunConfig {
  std::string dir = "runs/default";
  int64_t log_every = 10;
  Device backend = Device::cpu;       // YAML cpu | cuda
  Precision precision = Precision::fp32;
  // Two runs of one config on the same device and build are bitwise equal. false lets the CUDA
  // backend take cuDNN attention engines whose sums are not order-fixed (the dQ-accumulating
  // backward; docs/cuda.md, Determinism); every kernel of our own is order-fixed either way.
  bool deterministic = true;
  // Rank 0 also writes every metrics.jsonl scalar to TensorBoard event files in
  // <dir>/tensorboard (trainer/tensorboard.h).
  bool tensorboard = false;
  // Refuse to start when the memory estimate (trainer/memory_estimate.h) exceeds what the device
  // or host has; false starts anyway.
  bool memory_check = true;
  WeightGrads weight_grads = WeightGrads::automatic;
};

struct Config {
  std::string name = "switchyard";
  uint64_t seed = 1234;
  ModelConfig model;
  MoeConfig moe;
  ParallelConfig parallel;
  TrainConfig train;
  DataConfig data;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  RunConfig run;

  std::string source_file;  // where it was loaded from ("" when built in code)
};

// The weight gradients that run.weight_grads makes bf16 (TransformerOptions::bf16_grads): on
// CUDA in bf16, every GEMM weight's (auto) or the experts' (experts), rounded once after every
// sum, whatever the layout.
inline Bf16Grads bf16_grads(const Config& c) {
  if (c.run.weight_grads == WeightGrads::fp32 || c.run.backend != Device::cuda ||
      c.run.precision != Precision::bf16)
    return Bf16Grads::none;
  return c.run.weight_grads == WeightGrads::automatic ? Bf16Grads::all : Bf16Grads::experts;
}
// Those of them held in bf16 on `world_size` ranks (TransformerOptions::bf16_grad_storage): only
// where one GEMM writes each whole, with one micro-batch a step and no replica to sum with: the
// experts' where every rank is in the one expert-parallel group, every one on one rank. The
// others are held in fp32 and rounded where they are read.
inline Bf16Grads bf16_grad_storage(const Config& c, int64_t world_size) {
  const Bf16Grads rounded = bf16_grads(c);
  if (rounded == Bf16Grads::none || c.train.grad_accum_steps != 1) return Bf16Grads::none;
  if (world_size == 1) return rounded;
  const bool expert_replicas = world_size != c.parallel.expert_parallel;
  return c.moe.num_experts > 0 && !expert_replicas ? Bf16Grads::experts : Bf16Grads::none;
}

// Raised for a bad config; what() is one line: "<file>: <yaml.path>: <what is wrong>".
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Loads `path`, applies `overrides` ("section.key=value", YAML-parsed value) in order, then validates.
// Throws ConfigError naming the first problem; `all_errors`, when given, receives every problem found.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {},
                   std::vector<std::string>* all_errors = nullptr);
// The same from YAML text; `name` stands for the file in messages and in Config::source_file
// (a checkpoint's stored config: "<checkpoint> (its config)").
Config load_config_text(const std::string& yaml, const std::string& name,
                        const std::vector<std::string>& overrides = {},
                        std::vector<std::string>* all_errors = nullptr);

// Validates a config built in code; returns one line per problem (empty when valid).
std::vector<std::string> validate_config(const Config& config, const std::string& file = "<config>");

// The resolved config (file, overrides and defaults) as YAML text; load_config of it gives it back.
std::string config_to_yaml(const Config& config);

// `value` of the choice-valued key "section.key" as config_to_yaml writes it ("true" of
// model.qk_norm is "full"): a value an older config spelled another way compares equal. Any other
// key or value comes back as it is.
std::string canonical_config_value(const std::string& key, const std::string& value);

// How many validation sequences evaluation runs over: eval.tokens / seq_len, or, where the
// deprecated eval.batches is given, batches * micro_batch_size.
int64_t eval_sequences(const Config& config);

// Notes for check-config on what a change of rank layout keeps: the routing groups are the
// micro-batches, so an MoE run's numbers stay the same only at the same micro_batch_size and the
// same global batch (docs/parallel.md). Empty for a dense model with the micro-batch aux scope.
std::vector<std::string> layout_notes(const Config& config);

// Which layers hold an MoE FFN (SPEC.md section 1).
std::vector<bool> moe_layer_mask(const Config& config);

// The YAML spelling of each choice-valued key's value: what config_to_yaml writes and
// load_config reads back (one name table per enum, in config.cpp).
const char* to_string(AttentionKernel kernel);
const char* to_string(QkNorm qk_norm);
const char* to_string(RopeScaling scaling);
const char* to_string(ExpertKernel kernel);
const char* to_string(AuxLossScope scope);
const char* to_string(RouterScore score);
const char* to_string(DropPolicy policy);
const char* to_string(Overflow overflow);
const char* to_string(CommunicatorKind communicator);
const char* to_string(OptimizerKind optimizer);
const char* to_string(Recompute recompute);
const char* to_string(LrDecay decay);
const char* to_string(Device backend);
const char* to_string(Precision precision);
const char* to_string(WeightGrads grads);
const char* to_string(Sampling sampling);
// all, every_<n>, or the list in flow style ([1, 3]).
std::string to_string(const MoeLayers& layers);

}  // namespace sy
