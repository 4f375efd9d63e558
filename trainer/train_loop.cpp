#include "trainer/train_loop.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "data/sampler.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "optim/clip.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/grad_sync.h"
#include "parallel/param_gather.h"
#include "trainer/checkpoint.h"
#include "trainer/evaluate.h"
#include "trainer/memory_estimate.h"
#include "trainer/metrics.h"
#include "trainer/model_card.h"
#include "trainer/provenance.h"
#include "trainer/score.h"
#include "trainer/session.h"
#include "trainer/spike_guard.h"

namespace sy {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// The signal that asked this process to stop (0: none). The handler only records it; the loop
// acts on it between steps, after every rank has agreed.
volatile std::sig_atomic_t g_stop_signal = 0;

void record_stop_signal(int signal) { g_stop_signal = signal; }

// SIGTERM (Slurm's time limit, scancel, mpirun's forwarding), SIGINT (Ctrl-C) and SIGUSR1
// (Slurm's --signal warning, forwarded by mpirun) for the life of one train() call; the previous
// handlers come back after it.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = record_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // MPI's and HDF5's system calls carry on
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &action, &previous_[i]);
  }
  ~StopSignals() {
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &previous_[i], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr std::array<int, 3> kSignals{SIGTERM, SIGINT, SIGUSR1};
  std::array<struct sigaction, 3> previous_{};
};

std::string signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal " + std::to_string(signal);
  }
}

std::string errno_text() { return std::strerror(errno); }

// The time in a run id and a moved-aside run's suffix: compact, sortable, no separators.
std::string utc_stamp() { return utc_now("%Y%m%dT%H%M%SZ"); }

// flock() on <run.dir>/.lock, held while the object lives. The kernel drops it when the process
// ends however it ends, so a dead job's lock never blocks the next one.
class RunDirLock {
 public:
  RunDirLock() = default;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock() { release(); }

  void acquire(const fs::path& run_dir) {
    release();
    const fs::path path = run_dir / ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error(path.string() + ": cannot create the lock: " + errno_text());
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int why = errno;
      release();
      if (why == EWOULDBLOCK)
        throw std::runtime_error("run.dir " + run_dir.string() +
                                 " is in use by another job (it holds " + path.string() +
                                 "); wait for it to end or choose another run.dir");
      throw std::runtime_error(path.string() + ": cannot lock: " + std::strerror(why));
    }
    // Who holds it, for a person looking (the lock itself is the flock, not this text).
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::string owner = "pid " + std::to_string(::getpid()) + " on " + host + "\n";
    if (::ftruncate(fd_, 0) == 0) (void)!::write(fd_, owner.data(), owner.size());
  }
  void release() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Creates `dir` and proves it writable by creating and removing a file in it, so that an
// unusable folder is found before the first step rather than at the first save.
void check_writable(const fs::path& dir, const char* what) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) throw std::runtime_error(std::string(what) + " " + dir.string() + ": cannot create: " + error.message());
  const fs::path probe = dir / (".write_test." + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(std::string(what) + " " + dir.string() + ": not writable: " + errno_text());
  ::close(fd);
  fs::remove(probe, error);
}

bool holds_checkpoints(const fs::path& checkpoints) {
  std::error_code error;
  if (!fs::is_directory(checkpoints, error)) return false;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints, error)) {
    const std::string name = entry.path().filename().string();
    if (name == "latest" || (name.starts_with("step_") && name.ends_with(".h5"))) return true;
  }
  return false;
}

// What says that a folder already holds a run: a step in its metrics, or checkpoints. (A run that
// failed before its first step leaves an empty metrics.jsonl: that is no run.)
bool holds_run(const fs::path& run_dir, const fs::path& checkpoints) {
  std::error_code error;
  const auto metrics_bytes = fs::file_size(run_dir / "metrics.jsonl", error);
  return (!error && metrics_bytes > 0) || holds_checkpoints(checkpoints);
}

void move_aside(const fs::path& from, const fs::path& to) {
  std::error_code error;
  fs::rename(from, to, error);
  if (error)
    throw std::runtime_error("--overwrite: cannot move " + from.string() + " to " + to.string() +
                             ": " + error.message());
}

// Rank 0's part of TrainOptions::guard_run_dir; returns what to tell the user.
std::vector<std::string> guard_run_dir(const Config& config, const TrainOptions& options,
                                       RunDirLock& lock) {
  std::vector<std::string> messages;
  const fs::path run_dir = config.run.dir;
  const fs::path checkpoints = checkpoint_dir(config);
  check_writable(run_dir, "run.dir");
  lock.acquire(run_dir);
  if (options.resume.empty() && holds_run(run_dir, checkpoints)) {
    const std::string aside_suffix = ".old-" + utc_stamp();
    if (!options.overwrite)
      throw std::runtime_error(
          "run.dir " + run_dir.string() + " already holds a run (metrics.jsonl or checkpoints in " +
          checkpoints.string() + "): continue it with --resume auto, choose a new run.dir, or "
          "pass --overwrite to move it aside to " + run_dir.string() + aside_suffix);
    // Checkpoints kept outside run.dir go aside too, so that keep_last and --resume auto of the
    // new run never see the old run's files.
    const fs::path relative = checkpoints.lexically_relative(run_dir);
    const bool inside = !relative.empty() && *relative.begin() != "..";
    if (!inside && holds_checkpoints(checkpoints)) {
      const fs::path aside = checkpoints.string() + aside_suffix;
      move_aside(checkpoints, aside);
      messages.push_back("--overwrite: moved the old checkpoints to " + aside.string());
    }
    const fs::path aside = run_dir.string() + aside_suffix;
    move_aside(run_dir, aside);  // our lock moves with it, so no one else starts in between
    check_writable(run_dir, "run.dir");
    lock.acquire(run_dir);
    messages.push_back("--overwrite: moved the old run to " + aside.string());
  }
  check_writable(checkpoints, "checkpoint.dir");
  return messages;
}

// Every rank's parameters finite? Checked where a checkpoint is due, so that none is ever
// written from non-finite weights (one sum of squares per tensor, a fraction of the save's I/O).
bool weights_finite(Backend& backend, const std::vector<Param*>& params, Communicator& world) {
  std::vector<Tensor> values;
  for (const Param* param : params) values.push_back(param->value);
  std::vector<double> squares(values.size());
  backend.sum_squares_many(values, squares);
  std::vector<int64_t> bad{0};
  for (double sum : squares) bad[0] |= !std::isfinite(sum);
  world.all_reduce_host(bad, ReduceOp::max);
  return bad[0] == 0;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void write_resolved_config(const Config& config, const std::filesystem::path& run_dir) {
  const std::filesystem::path path = run_dir / "config.yaml";
  std::ofstream out(path);
  out << config_to_yaml(config);
  if (!out) throw std::runtime_error(path.string() + ": cannot write the resolved config");
}

// The tokens stay on disk (docs/data.md, Token files larger than memory): the sampler reads each
// sequence's window, the validation set its few sequences.
TokenFile load_tokens(const Config& config) {
  TokenFile data = open_token_file(config.data.path);
  if (data.vocab_size > config.model.vocab_size)
    throw std::runtime_error(config.data.path + ": vocab_size " + std::to_string(data.vocab_size) +
                             " exceeds model.vocab_size " +
                             std::to_string(config.model.vocab_size));
  const std::string eval_problem = validation_fit_problem(
      eval_sequences(config), config.model.seq_len, data.val->size());
  if (!eval_problem.empty()) throw std::runtime_error(config.data.path + ": " + eval_problem);
  return data;
}

// Every rank reads the token file itself; a rank that cannot is reported by rank 0.
TokenFile load_tokens_on_every_rank(const Config& config, Communicator& world) {
  TokenFile data;
  std::string problem;
  try {
    data = load_tokens(config);
  } catch (const std::exception& error) {
    problem = error.what();
  }
  agree_or_throw(world, problem);
  return data;
}
// Sums the per-group statistics of one step into its metrics (means over groups).
struct StepAccumulator {
  bool masked = false;  // a loss mask: the LM loss is lm_loss_sum / lm_targets, not a group mean
  int64_t groups = 0, assignments = 0, dropped = 0, rerouted = 0, tokens = 0, lm_targets = 0;
  double loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0, lm_loss_sum = 0;
  std::vector<std::vector<double>> load_counts;  // [MoE layer][E], choices before drops
  std::vector<int64_t> dropped_per_layer, rerouted_per_layer;
  std::vector<double> entropy_sum;  // [MoE layer], summed over groups

  void add(const GroupStats& stats) {
    ++groups;
    tokens += stats.tokens;
    loss += stats.loss;
    lm_loss += stats.lm_loss;
    lm_loss_sum += stats.lm_loss_sum;
    lm_targets += stats.lm_targets;
    aux_loss += stats.aux_loss;
    z_loss += stats.z_loss;
    assignments += stats.assignments;
    dropped += stats.dropped;
    rerouted += stats.rerouted;
    const size_t layers = stats.assignments_per_expert.size();
    load_counts.resize(layers);
    dropped_per_layer.resize(layers);
    rerouted_per_layer.resize(layers);
    entropy_sum.resize(layers);
    for (size_t l = 0; l < layers; ++l) {
      load_counts[l].resize(stats.assignments_per_expert[l].size());
      for (size_t e = 0; e < load_counts[l].size(); ++e)
        load_counts[l][e] += stats.assignments_per_expert[l][e];
      dropped_per_layer[l] += stats.dropped_per_layer[l];
      rerouted_per_layer[l] += stats.rerouted_per_layer[l];
      entropy_sum[l] += stats.entropy_per_layer[l];
    }
  }

  // Sums every field over the ranks, so that the metrics cover the whole step.
  void reduce(Communicator& world) {
    std::vector<double> sums{loss, lm_loss, aux_loss, z_loss, lm_loss_sum};
    sums.insert(sums.end(), entropy_sum.begin(), entropy_sum.end());
    world.all_reduce_host(sums, ReduceOp::sum);
    loss = sums[0], lm_loss = sums[1], aux_loss = sums[2], z_loss = sums[3], lm_loss_sum = sums[4];
    std::copy(sums.begin() + 5, sums.end(), entropy_sum.begin());
    std::vector<int64_t> counts{groups, assignments, dropped, rerouted, tokens, lm_targets};
    counts.insert(counts.end(), dropped_per_layer.begin(), dropped_per_layer.end());
    counts.insert(counts.end(), rerouted_per_layer.begin(), rerouted_per_layer.end());
    for (const std::vector<double>& layer : load_counts)
      for (double count : layer) counts.push_back(static_cast<int64_t>(count));
    world.all_reduce_host(counts, ReduceOp::sum);
    groups = counts[0], assignments = counts[1], dropped = counts[2], rerouted = counts[3];
    tokens = counts[4], lm_targets = counts[5];
    size_t next = 6;
    for (int64_t& count : dropped_per_layer) count = counts[next++];
    for (int64_t& count : rerouted_per_layer) count = counts[next++];
    for (std::vector<double>& layer : load_counts)
      for (double& count : layer) count = static_cast<double>(counts[next++]);
  }

  // The step's loss: the mean over its groups, or with a loss mask the LM part over the step's
  // counted targets plus the groups' mean of the router terms (the objective backward takes).
  double step_loss() const {
    if (!masked) return loss / groups;
    return step_lm_loss() + (loss - lm_loss) / groups;
  }
  double step_lm_loss() const {
    if (!masked) return lm_loss / groups;
    return lm_targets > 0 ? lm_loss_sum / static_cast<double>(lm_targets) : 0.0;
  }

  void finish(StepMetrics& m) const {
    m.loss = step_loss();
    m.lm_loss = step_lm_loss();
    if (masked) m.lm_targets = lm_targets;
    m.aux_loss = aux_loss / groups;
    m.z_loss = z_loss / groups;
    m.dropped_frac = assignments ? static_cast<double>(dropped) / assignments : 0.0;
    m.rerouted_frac = assignments ? static_cast<double>(rerouted) / assignments : 0.0;
    m.expert_load = load_counts;
    for (size_t l = 0; l < load_counts.size(); ++l) {
      std::vector<double>& load = m.expert_load[l];
      double total = 0;
      for (double count : load) total += count;
      for (double& count : load) count = total > 0 ? count / total : 0.0;
      const LoadBalance balance = load_balance(load);
      m.load_cv.push_back(balance.cv);
      m.load_max_mean.push_back(balance.max_over_mean);
      m.layer_dropped_frac.push_back(total > 0 ? dropped_per_layer[l] / total : 0.0);
      m.router_entropy.push_back(entropy_sum[l] / groups);
    }
  }
};

// ---- what the stages share ---------------------------------------------------------------------

// What setup builds once and every stage reads: the model session, the optimizer and this rank's
// part (world rank 0 alone prints and writes files). Collective to build: the session, the
// run.dir guard (TrainOptions::guard_run_dir) and the memory check (run.memory_check).
struct Run {
  Run(const Config& config, const TrainOptions& options);
  // A run that leaves by an exception still lets a background checkpoint write finish (its file
  // complete, or removed) and says if it failed; on the normal path finish() waited for it.
  ~Run() {
    const std::string error = join_checkpoint_write();
    if (!error.empty())
      std::fprintf(stderr, "switchyard: error: background checkpoint write: %s\n", error.c_str());
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  const Config& config;
  const TrainOptions& options;
  ModelSession session;
  Backend& backend;
  Transformer& model;
  ProcessGroups& groups;
  Communicator& world;
  const bool lead;     // world rank 0
  const bool speak;    // lead, and options.print: the model card, progress lines, warnings
  RunConsole console;  // the console, and <run.dir>/train.log
  StopSignals stop_signals;
  RunDirLock run_dir_lock;  // rank 0's, with guard_run_dir
  MemoryCheck memory_check;
  std::vector<Param*> params;
  std::unique_ptr<Optimizer> optimizer;
  GradientReducer gradient_reducer{backend, groups};
  const std::string checkpoints = checkpoint_dir(config);
};

// The global batch in sequences: every rank's micro-batches of one step.
int64_t global_batch(const Run& run) {
  const TrainConfig& tc = run.config.train;
  return run.world.size() * tc.grad_accum_steps * tc.micro_batch_size;
}

Run::Run(const Config& config_in, const TrainOptions& options_in)
    : config(config_in),
      options(options_in),
      session(make_model_session(config_in, options_in.world)),
      backend(*session.backend),
      model(*session.model),
      groups(session.groups),
      world(*session.groups.world),
      lead(world.rank() == 0),
      speak(options_in.print && lead),
      console(speak) {
  if (options.guard_run_dir) {
    std::vector<std::string> messages;
    std::string problem;
    if (lead) {
      try {
        messages = guard_run_dir(config, options, run_dir_lock);
      } catch (const std::exception& error) {
        problem = error.what();
      }
    }
    agree_or_throw(world, problem);
    if (speak)
      for (const std::string& line : messages) console.print("%s\n", line.c_str());
  }
  // Before the optimizer's state and the first activations exist.
  memory_check = check_memory(config, backend, options.world, lead);
  agree_or_throw(world, memory_check.problem);
  params = model.params();
  optimizer = make_optimizer(optimizer_settings(config.train));
}

// What the loop carries from step to step besides the weights and the optimizer's moments. The
// sampler is stateless (a step's batch is a function of the seed and the step), so the step is
// the data position, and a resume restores it with the weights and moments.
struct TrainState {
  int64_t step = 0;          // steps done; the one running is step + 1 (the sampler's `step`)
  int64_t first_step = 0;    // where this call started: the resumed checkpoint's step, or 0
  std::string run_id;        // in every checkpoint's provenance: keep_last removes only its files
  // The grads are ready for the next backward: zero, or stale after Optimizer::step (to be
  // overwritten, Param::GradState); a skipped step leaves them live, to be zeroed.
  bool grads_ready = false;
  int64_t bad_in_a_row = 0;  // steps skipped in a row (train.max_bad_steps)
  // The progress line's interval: training time only (evaluation and saving are taken out).
  Clock::time_point run_start, interval_start;
  int64_t interval_tokens = 0;
  TrainSummary summary;      // what train() returns, filled as the run goes
};

// Rank 0's files of the run, and the spike guard, whose window one of them refills on resume.
struct RunOutputs {
  std::unique_ptr<MetricsLog> metrics_log;  // <run.dir>/metrics.jsonl, rank 0
  SpikeGuard spike_guard;                   // every rank, the same window
  std::ofstream spike_log;                  // <run.dir>/spike_guard.jsonl, rank 0, guard on
};

// The training tokens (read window by window from disk through the sampler) and the validation
// set (docs/data.md, Token files larger than memory).
struct TrainData {
  TokenFile file;
  StepSampler sampler;
  ValidationSet val;
  MixtureValidation mixture_val;  // a mixture's other files, each logged as val_loss/<name>
  // data.sampling: epoch over a mixture: each file's epochs logged as epoch/<name>.
  std::vector<std::string> epoch_keys;
  // eval.questions: the multiple-choice questions and the token file's tokenizer that encodes
  // them; none without the key.
  std::vector<ChoiceExample> questions;
  std::shared_ptr<const Tokenizer> question_tokenizer;
};

// eval.questions read and encoded once (a question that cannot fit model.seq_len is refused here,
// before the first step), with data.path's tokenizer.
void load_questions(const Config& config, TrainData& data) {
  const EvalConfig& eval = config.eval;
  if (eval.questions.empty()) return;
  data.question_tokenizer = tokenizer_of(tokenizer_data(data.file), config.data.path);
  data.questions = read_choice_examples(
      eval.questions, {eval.questions_context, eval.questions_choices, eval.questions_answer},
      eval.questions_limit);
  try {
    longest_choice_sequence(*data.question_tokenizer, data.questions, eval.questions_delimiter,
                            config.model.seq_len + 1);
  } catch (const std::exception& error) {
    throw std::runtime_error("eval.questions " + eval.questions + ": " + error.what());
  }
}

// "epoch/<name>" for each file of an epoch-sampled mixture; none otherwise.
std::vector<std::string> epoch_keys(const Config& config, const StepSampler& sampler) {
  std::vector<std::string> keys;
  if (!sampler.samples_epochs() || sampler.num_sources() < 2) return keys;
  std::vector<std::string> taken;
  for (const std::string& path : config.data.train_paths)
    keys.push_back(file_key("epoch", path, taken));
  return keys;
}

// One step's micro-batches on this rank: micro-step m is routing group m*W + r of the step's
// global batch (SPEC.md section 3).
struct StepBatch {
  std::vector<std::vector<int32_t>> inputs, targets;  // [grad_accum_steps][B*S]
  // Document masking: each token's document start in its sequence, [grad_accum_steps][B*S];
  // empty without it.
  std::vector<std::vector<int32_t>> doc_start;
  // The data has a loss mask (docs/data.md, "Loss masks"), or document masking drops the
  // targets that cross into the next document.
  bool masked = false;
  int64_t step_targets = 0;  // then: the counted targets of the whole step, over every rank
};

// Whether a step may update, decided the same on every rank.
struct StepVerdict {
  int stop_signal = 0;      // the signal that asked any rank to stop, else 0
  bool non_finite = false;  // the loss on some rank, or the global grad norm, is not finite
  bool spike = false;       // the loss spiked (train.spike_window) and is finite
  bool bad() const { return non_finite || spike; }
};

// ---- setup -------------------------------------------------------------------------------------

// The step to start from: options.resume's checkpoint loaded into the model and optimizer (one
// call, trainer/checkpoint.h), else step 0 (with checkpoint.init_from's weights, if set); and
// the run id, the resumed checkpoint's or, for a fresh run (or one resumed from a checkpoint
// without one), a new one from rank 0.
TrainState start_or_resume(Run& run) {
  TrainState state;
  TrainSummary& summary = state.summary;
  if (!run.options.resume.empty()) {
    ResumePoint resumed = resume_from(run.options.resume, run.checkpoints, run.config, run.model,
                                      run.optimizer.get(), run.groups, run.backend);
    state.step = resumed.step;
    state.run_id = resumed.run_id;
    summary.resumed_from = resumed.path;
    summary.resume_messages = std::move(resumed.messages);
    if (run.speak) {
      for (const std::string& line : summary.resume_messages)
        run.console.write(line.rfind("warning", 0) == 0 ? stderr : stdout, "%s\n", line.c_str());
      std::fflush(stdout);
    }
  }
  if (summary.resumed_from.empty() && !run.config.checkpoint.init_from.empty()) {
    const InitPoint init = init_from_checkpoint(run.config.checkpoint.init_from, run.config,
                                                run.model, run.groups, run.backend);
    summary.initialised_from = init.path;
    if (run.speak) {
      for (const std::string& line : init.messages) run.console.print("%s\n", line.c_str());
      std::fflush(stdout);
    }
  }
  state.first_step = summary.first_step = summary.steps = state.step;
  if (state.run_id.empty()) {
    if (run.lead) {
      char random_part[16];
      std::snprintf(random_part, sizeof random_part, "%08x", std::random_device{}());
      state.run_id = utc_stamp() + "-" + random_part;
    }
    state.run_id = run.world.all_gather_host(state.run_id)[0];
  }
  return state;
}

// The spike guard's window, refilled on resume from rank 0's log (trainer/spike_guard.h), and
// that log opened for this run's lines. Collective.
void restore_spike_guard(Run& run, const TrainState& state, RunOutputs& outputs) {
  std::string window_text;
  std::string problem;
  if (run.lead) {
    try {
      const std::string path = spike_guard_log_path(run.config.run.dir);
      const bool resumed = !state.summary.resumed_from.empty();
      if (resumed) {
        bool found = false;
        const std::vector<double> losses = read_spike_guard_log(path, state.step, found);
        const size_t keep =
            std::min(losses.size(), static_cast<size_t>(run.config.train.spike_window));
        char text[40];
        for (size_t i = losses.size() - keep; i < losses.size(); ++i) {
          std::snprintf(text, sizeof text, "%.17g\n", losses[i]);
          window_text += text;
        }
        if (found) {
          for (const std::string& note : truncate_metrics_after(path, state.step))
            run.console.write(stderr, "warning: %s\n", note.c_str());
        } else if (run.options.print) {
          run.console.write(stderr, "warning: %s is missing: the loss-spike guard starts with an "
                            "empty window (it acts after train.spike_min_steps steps)\n",
                            path.c_str());
        }
      }
      outputs.spike_log.open(path, resumed ? std::ios::app : std::ios::trunc);
      if (!outputs.spike_log) throw std::runtime_error(path + ": cannot open: " + errno_text());
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  agree_or_throw(run.world, problem);
  window_text = run.world.all_gather_host(window_text)[0];
  std::vector<double> window;
  for (size_t begin = 0, end; (end = window_text.find('\n', begin)) != std::string::npos;
       begin = end + 1)
    window.push_back(std::strtod(window_text.c_str() + begin, nullptr));
  outputs.spike_guard.restore(window);
}

// Rank 0 writes the resolved config.yaml and opens train.log and metrics.jsonl (a resumed run's
// keeps the lines up to the checkpoint's step: a run that went on past its last checkpoint wrote
// lines that the resumed run writes again); then the spike guard. Collective.
RunOutputs open_outputs(Run& run, const TrainState& state) {
  const Config& config = run.config;
  RunOutputs outputs{nullptr,
                     SpikeGuard(config.train.spike_window, config.train.spike_z,
                                config.train.spike_min_steps),
                     {}};
  std::string problem;
  if (run.lead) {
    try {
      const fs::path run_dir = config.run.dir;
      fs::create_directories(run_dir);
      write_resolved_config(config, run_dir);
      run.console.open_log((run_dir / "train.log").string());
      const fs::path metrics_path = run_dir / "metrics.jsonl";
      const bool resumed = !state.summary.resumed_from.empty();
      if (resumed)
        for (const std::string& note : truncate_metrics_after(metrics_path.string(), state.step))
          run.console.write(stderr, "warning: %s\n", note.c_str());
      outputs.metrics_log = std::make_unique<MetricsLog>(metrics_path.string(), resumed);
      if (config.run.tensorboard)
        outputs.metrics_log->add_tensorboard((run_dir / "tensorboard").string());
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  agree_or_throw(run.world, problem);
  if (outputs.spike_guard.enabled()) restore_spike_guard(run, state, outputs);
  return outputs;
}

// The training batches' sampler: over data.path's /train, or over the /train splits of
// data.train_paths (docs/data.md, Mixtures), each checked like data.path against the model and
// against data.path's tokenizer, weighted by data.train_weights or else by their sizes.
// `mixture`: open_train_files(config.data, file). `sequences_per_step`: the global batch, which
// numbers the run's sequences for data.sampling: epoch.
StepSampler make_sampler(const Config& config, const TokenFile& file,
                         const std::vector<TokenFile>& mixture, int64_t sequences_per_step) {
  const DataConfig& d = config.data;
  if (d.train_paths.empty()) {
    if (d.document_mask && !file.train->document_starts())
      throw std::runtime_error(no_documents_error(d.path + " /train"));
    StepSampler sampler(file.train, config.model.seq_len, config.seed);
    if (d.document_mask) sampler.mask_documents();
    if (d.sampling == Sampling::epoch) sampler.sample_epochs(sequences_per_step);
    return sampler;
  }
  std::vector<std::shared_ptr<const TokenSource>> sources;
  std::vector<double> weights = d.train_weights;
  for (size_t i = 0; i < d.train_paths.size(); ++i) {
    const std::string& path = d.train_paths[i];
    const TokenFile& source = mixture.at(i);
    if (source.vocab_size > config.model.vocab_size)
      throw std::runtime_error(path + " (data.train_paths): vocab_size " +
                               std::to_string(source.vocab_size) + " exceeds model.vocab_size " +
                               std::to_string(config.model.vocab_size));
    if (source.tokenizer != file.tokenizer || source.tokenizer_model != file.tokenizer_model)
      throw std::runtime_error(path + " (data.train_paths): its tokenizer (" + source.tokenizer +
                               ") is not data.path's (" + file.tokenizer + ", " + d.path +
                               "): a mixture shares one tokenizer");
    sources.push_back(source.train);
    if (d.train_weights.empty()) weights.push_back(static_cast<double>(source.train->size()));
  }
  StepSampler sampler(std::move(sources), std::move(weights), d.train_paths, config.model.seq_len,
                      config.seed);
  if (d.document_mask) sampler.mask_documents();  // names the first file without boundaries
  if (d.sampling == Sampling::epoch) sampler.sample_epochs(sequences_per_step);
  return sampler;
}

TrainData load_train_data(Run& run) {
  const Config& config = run.config;
  TokenFile file = load_tokens_on_every_rank(config, run.world);
  std::optional<TrainData> data;
  std::string problem;
  try {
    ValidationSet val = read_validation_set(*file.val, eval_sequences(config), config.model.seq_len,
                                            config.data.document_mask, config.data.path + " /val");
    const std::vector<TokenFile> mixture = open_train_files(config.data, file);
    StepSampler sampler = make_sampler(config, file, mixture, global_batch(run));
    MixtureValidation mixture_val =
        read_mixture_validation(config.data, mixture, eval_sequences(config), config.model.seq_len);
    std::vector<std::string> keys = epoch_keys(config, sampler);
    data.emplace(TrainData{std::move(file), std::move(sampler), std::move(val),
                           std::move(mixture_val), std::move(keys)});
    load_questions(config, *data);
  } catch (const std::exception& error) {
    problem = error.what();
  }
  agree_or_throw(run.world, problem);
  return std::move(*data);
}

// The epochs taken by the end of metrics.step (data.sampling: epoch): `epoch` for one file, and
// epoch/<name> for each file of a mixture.
void record_epochs(const TrainData& data, StepMetrics& metrics) {
  if (!data.sampler.samples_epochs()) return;
  if (data.epoch_keys.empty()) {
    metrics.epoch = data.sampler.epochs_after(metrics.step);
    return;
  }
  for (size_t j = 0; j < data.epoch_keys.size(); ++j)
    metrics.source_epochs.emplace_back(
        data.epoch_keys[j], data.sampler.epochs_after(metrics.step, static_cast<int64_t>(j)));
}

// Rank 0's start-up lines: the model card, the layout, the data, the memory estimate.
void announce(Run& run, const TrainData& data, const TrainState& state) {
  if (!run.speak) return;
  const Config& config = run.config;
  const TrainConfig& tc = config.train;
  const int64_t W = run.world.size();
  run.console.print("%s", format_model_card(config, make_model_card(config)).c_str());
  run.console.print(
      "  %lld ranks (expert_parallel %lld, grad_accum_steps %lld): global batch "
      "%lld sequences\n",
      static_cast<long long>(W), static_cast<long long>(config.parallel.expert_parallel),
      static_cast<long long>(tc.grad_accum_steps), static_cast<long long>(global_batch(run)));
  if (config.data.train_paths.empty())
    run.console.print("  run dir %s, data %s (%lld train / %lld val tokens)\n",
                      config.run.dir.c_str(), config.data.path.c_str(),
                      static_cast<long long>(data.file.train->size()),
                      static_cast<long long>(data.file.val->size()));
  else
    run.console.print(
        "  run dir %s, training on a mixture of %lld token files (%s), validation "
        "on %s (%lld tokens)\n",
        config.run.dir.c_str(), static_cast<long long>(data.sampler.num_sources()),
        data.sampler.describe_sources().c_str(), config.data.path.c_str(),
        static_cast<long long>(data.file.val->size()));
  if (data.sampler.masked())
    run.console.print("  loss mask: the LM loss counts only the targets the token files' masks "
                      "keep, over their number in each step (docs/data.md, Loss masks)\n");
  if (data.sampler.masks_documents())
    run.console.print(
        "  document masking: attention and rotary positions restart at each "
        "document, and no target crosses into the next (docs/data.md, Document "
        "masking)\n");
  if (data.sampler.samples_epochs() && data.sampler.num_sources() == 1)
    run.console.print(
        "  sampling: epochs of %lld sequences of %lld tokens, %.6g steps an epoch "
        "(docs/data.md, Epochs)\n",
        static_cast<long long>(data.sampler.epoch_windows()),
        static_cast<long long>(config.model.seq_len), 1.0 / data.sampler.epochs_after(1));
  if (data.sampler.samples_epochs() && data.sampler.num_sources() > 1) {
    run.console.print(
        "  sampling: each file's epochs on its own, the files interleaved by weight "
        "(docs/data.md, Epochs):\n");
    for (int64_t j = 0; j < data.sampler.num_sources(); ++j) {
      const char* name = data.sampler.source_name(j).c_str();
      if (data.sampler.share(j) == 0) {
        run.console.print("    %s: weight 0, never sampled\n", name);
        continue;
      }
      run.console.print(
          "    %s: epochs of %lld sequences of %lld tokens, %.4g%% of the sequences, %.6g steps "
          "an epoch\n",
          name, static_cast<long long>(data.sampler.epoch_windows(j)),
          static_cast<long long>(config.model.seq_len), 100.0 * data.sampler.share(j),
          1.0 / data.sampler.epochs_after(1, j));
    }
  }
  run.console.print("  learning rate: %s\n", describe(lr_schedule(config.train)).c_str());
  for (const std::string& note : data.mixture_val.notes)
    run.console.write(stderr, "note: %s\n", note.c_str());
  run.console.print("  %s\n", run.memory_check.summary.c_str());
  std::fflush(stdout);
  if (state.step >= tc.steps)
    run.console.print("nothing to train: the checkpoint is at step %lld and train.steps is %lld\n",
                      static_cast<long long>(state.step), static_cast<long long>(tc.steps));
}

// ---- one step ----------------------------------------------------------------------------------

StepBatch next_batch(const Run& run, const TrainData& data, const TrainState& state) {
  const int64_t W = run.world.size(), rank = run.world.rank();
  const int64_t A = run.config.train.grad_accum_steps;
  const int64_t B = run.config.train.micro_batch_size, S = run.config.model.seq_len;
  StepBatch batch;
  const bool documents = data.sampler.masks_documents();
  batch.inputs.assign(A, std::vector<int32_t>(B * S));
  batch.targets.assign(A, std::vector<int32_t>(B * S));
  if (documents) batch.doc_start.assign(A, std::vector<int32_t>(B * S));
  for (int64_t micro = 0; micro < A; ++micro)
    data.sampler.group(state.step, micro * W + rank, B, batch.inputs[micro].data(),
                       batch.targets[micro].data(),
                       documents ? batch.doc_start[micro].data() : nullptr);
  batch.masked = data.sampler.masked() || documents;
  if (batch.masked) {
    // An integer sum over the ranks: exact, and the same whatever the layout.
    std::vector<int64_t> counted{0};
    for (const std::vector<int32_t>& targets : batch.targets)
      counted[0] += std::count_if(targets.begin(), targets.end(),
                                  [](int32_t target) { return target != kIgnoreTarget; });
    run.world.all_reduce_host(counted, ReduceOp::sum);
    batch.step_targets = counted[0];
  }
  return batch;
}

// Every micro-batch forward and backward; parameter gradients accumulate, scaled so that the
// step's objective is the mean over its W*A routing groups (SPEC.md section 3); with a loss mask
// its language-model part is the mean over the step's counted targets instead (docs/data.md,
// "Loss masks"). Then the tests' fault injections (TrainOptions::after_backward, loss_offset).
StepAccumulator forward_backward(Run& run, const StepBatch& batch, const TrainState& state) {
  if (!state.grads_ready) run.model.zero_grads();
  const int64_t A = run.config.train.grad_accum_steps;
  const double loss_scale = 1.0 / static_cast<double>(run.world.size() * A);
  std::optional<double> lm_target_scale;  // unmasked: the group's mean, loss_scale / (B*S)
  if (batch.masked)  // a step whose every target is masked trains only the routers
    lm_target_scale = batch.step_targets > 0 ? 1.0 / static_cast<double>(batch.step_targets) : 0.0;
  // The last micro-batch's backward hands each layer's final gradients to the reducer, which
  // sums them over the ranks behind the layers below; not with a hook that edits gradients
  // after backward (it must see them unreduced, as without overlap).
  const bool overlap = run.config.parallel.overlap_grad_reduce && run.gradient_reducer.overlaps() &&
                       !run.options.after_backward;
  StepAccumulator acc;
  acc.masked = batch.masked;
  for (int64_t micro = 0; micro < A; ++micro) {
    if (overlap && micro == A - 1)
      run.model.set_grads_finished(
          [&run](std::span<Param* const> params) { run.gradient_reducer.reduce(params); });
    acc.add(run.model.forward_backward(
        batch.inputs[micro], batch.targets[micro], run.config.train.micro_batch_size, true,
        loss_scale, lm_target_scale,
        batch.doc_start.empty() ? std::span<const int32_t>() : batch.doc_start[micro]));
  }
  run.model.set_grads_finished(nullptr);
  const int64_t step_number = state.step + 1;
  if (run.options.after_backward) {
    run.options.after_backward(step_number, run.params, run.backend);
    // The hook may have changed any gradient: the norm reads them all (Param::grad_squares).
    for (Param* param : run.params) param->grad_squares_valid = false;
  }
  if (run.options.loss_offset) acc.loss += run.options.loss_offset(step_number);
  return acc;
}

// The gradients summed over the ranks that hold each parameter (docs/parallel.md); returns their
// global norm, the same on every rank.
double sync_gradients(Run& run) {
  run.gradient_reducer.finish(run.params);
  return distributed_grad_norm(run.backend, run.params, run.groups);
}

// The step's statistics summed over the ranks (the spike guard judges the loss that
// metrics.loss reports, as StepAccumulator::finish computes it), then one 3-integer all-reduce,
// so that every rank takes the same decisions: a stop signal on any rank, a non-finite loss on
// any rank (grad_norm is global already), a spike.
StepVerdict judge_step(Run& run, const SpikeGuard& spike_guard, StepAccumulator& acc,
                       double grad_norm) {
  const bool loss_finite_here = std::isfinite(acc.loss);
  acc.reduce(run.world);
  const double step_loss = acc.step_loss();
  std::vector<int64_t> flags{static_cast<int64_t>(g_stop_signal), loss_finite_here ? 0 : 1,
                             spike_guard.is_spike(step_loss) ? 1 : 0};
  run.world.all_reduce_host(flags, ReduceOp::max);
  StepVerdict verdict;
  verdict.stop_signal = static_cast<int>(flags[0]);
  verdict.non_finite = flags[1] != 0 || !std::isfinite(grad_norm);
  verdict.spike = flags[2] != 0 && !verdict.non_finite;
  return verdict;
}

// A good step: the clip scale, the update and the bf16 copies of the new master weights in one
// pass on CUDA, the grads left for the next backward to overwrite (optim/optimizer.h); then aux-loss-free balancing (a
// no-op when off). A bad step changes nothing: its grads are dropped by the next step's
// zero_grads. Returns the step's learning rate.
double clip_and_update(Run& run, TrainState& state, const StepVerdict& verdict, double grad_norm,
                       const StepAccumulator& acc) {
  const double lr = lr_at(lr_schedule(run.config.train), state.step);
  state.grads_ready = !verdict.bad();
  if (verdict.bad()) return lr;
  run.optimizer->step(run.backend, run.params, lr, clip_factor(grad_norm, run.config.train.grad_clip));
  run.model.update_expert_bias(acc.load_counts);
  return lr;
}

// A skipped step is counted and reported; train.max_bad_steps of them in a row end the run.
void count_bad_step(Run& run, TrainState& state, const StepVerdict& verdict,
                    const SpikeGuard& spike_guard, const StepMetrics& metrics) {
  const TrainConfig& tc = run.config.train;
  TrainSummary& summary = state.summary;
  ++summary.skipped_steps;
  summary.spike_steps += verdict.spike;
  ++state.bad_in_a_row;
  const std::string step = "step " + std::to_string(metrics.step) + ": ";
  const std::string what =
      verdict.spike ? step + spike_guard.describe(metrics.loss)
                    : step + "loss " + std::to_string(metrics.loss) + ", grad_norm " +
                          std::to_string(metrics.grad_norm) + " (not finite)";
  if (state.bad_in_a_row >= tc.max_bad_steps)
    throw DivergedError(what + ", " + std::to_string(state.bad_in_a_row) +
                        " such steps in a row (train.max_bad_steps " +
                        std::to_string(tc.max_bad_steps) + "): training diverged; lower "
                        "train.lr or set train.grad_clip, and resume from the last finite "
                        "checkpoint");
  if (run.speak)
    run.console.write(stderr, "warning: %s: skipped, no update (%lld in a row, %lld skipped in "
                      "all; train.max_bad_steps %lld)\n", what.c_str(),
                      static_cast<long long>(state.bad_in_a_row),
                      static_cast<long long>(summary.skipped_steps),
                      static_cast<long long>(tc.max_bad_steps));
}

// The step is done: its metrics, the run's counts, and the spike guard's verdict applied (a good
// step's loss enters the window and rank 0's log). Advances state.step.
StepMetrics record_step(Run& run, TrainState& state, RunOutputs& outputs,
                        const StepVerdict& verdict, const StepAccumulator& acc, double lr,
                        double grad_norm) {
  StepMetrics metrics;
  metrics.step = state.step + 1;
  metrics.lr = lr;
  metrics.grad_norm = grad_norm;
  acc.finish(metrics);
  state.summary.losses.push_back(metrics.loss);
  state.summary.dropped_any |= metrics.dropped_frac > 0;
  state.interval_tokens += acc.tokens;
  state.summary.steps = state.step = metrics.step;
  if (verdict.bad()) {
    count_bad_step(run, state, verdict, outputs.spike_guard, metrics);
  } else {
    state.bad_in_a_row = 0;
    outputs.spike_guard.accept(metrics.loss);
    if (outputs.spike_log.is_open()) {
      outputs.spike_log << spike_guard_log_line(metrics.step, metrics.loss);
      outputs.spike_log.flush();
    }
  }
  return metrics;
}

// Every run.log_every steps and at the last: the interval's throughput, the expert biases, a
// metrics.jsonl line and a progress line. The peak device memory is reduced then, and after the
// first step (printed once: the buffers are reused from there on).
void log_step(Run& run, TrainState& state, RunOutputs& outputs, StepMetrics& metrics) {
  const TrainConfig& tc = run.config.train;
  const bool last = state.step == tc.steps;
  const bool first = state.step == state.first_step + 1;
  const bool log_now = state.step % run.config.run.log_every == 0 || last;
  if (log_now || first) {
    std::vector<int64_t> peak{static_cast<int64_t>(run.backend.peak_memory_bytes())};
    run.world.all_reduce_host(peak, ReduceOp::max);
    metrics.peak_memory_bytes = peak[0];
    if (first && run.speak && peak[0] > 0)
      run.console.print("  peak device memory after the first step: %.1f MiB per rank (max over "
                        "ranks; buffers are reused from here on)\n",
                        peak[0] / 1048576.0);
  }
  if (!log_now) return;
  run.backend.synchronize();  // a device's queued work belongs to this interval
  const double interval_s = seconds_since(state.interval_start);
  metrics.tokens_per_s = interval_s > 0 ? state.interval_tokens / interval_s : 0.0;
  metrics.eta_s = seconds_since(state.run_start) / (state.step - state.first_step) *
                  (tc.steps - state.step);
  for (auto& [path, bias] : run.model.expert_biases())
    metrics.expert_bias.push_back(run.backend.read(bias));
  if (run.lead) outputs.metrics_log->write_step(metrics);
  if (run.speak) run.console.print("%s\n", progress_line(metrics, tc.steps).c_str());
  state.interval_start = Clock::now();
  state.interval_tokens = 0;
}

// Every eval.every steps and at the last: the validation loss (trainer/evaluate.h) and, with
// eval.questions, the multiple-choice accuracy (trainer/score.h), logged and printed. Evaluation
// does not count as training time.
void maybe_evaluate(Run& run, const TrainData& data, TrainState& state, RunOutputs& outputs) {
  const Config& config = run.config;
  const int64_t sequences = eval_sequences(config);
  const bool due = (config.eval.every > 0 && state.step % config.eval.every == 0) ||
                   state.step == config.train.steps;
  if (sequences <= 0 || !due) return;
  const Clock::time_point eval_start = Clock::now();
  const Validation validation = evaluate(run.model, data.val, sequences, run.world);
  // a mixture's val_loss/<name>, then the accuracies
  std::vector<std::pair<std::string, double>> more =
      evaluate_mixture(run.model, data.mixture_val, sequences, run.world);
  const LossInUnits units = loss_in_units(validation.loss, data.file.tokenizer);
  state.summary.final_val_loss = validation.loss;
  if (!data.questions.empty()) {
    // Every rank runs every question (the all-to-alls need the whole EP group): the same totals.
    const ScoreTotals totals = score_examples(run.model, *data.question_tokenizer, data.questions,
                                              config.eval.questions_delimiter);
    more.emplace_back("choice_accuracy", totals.accuracy());
    more.emplace_back("choice_accuracy_norm", totals.accuracy_norm());
  }
  if (run.lead)
    outputs.metrics_log->write_eval(state.step, validation.loss, units.name, units.value,
                                    validation.tokens, more);
  if (run.speak) {
    std::string extra;
    for (const auto& [key, value] : more) {
      char text[128];
      std::snprintf(text, sizeof text, " | %s %.4f", key.c_str(), value);
      extra += text;
    }
    run.console.print("eval   step %6lld | val_loss %.4f | %s %.4f%s | %lld tokens in %.1fs\n",
                      static_cast<long long>(state.step), validation.loss, units.name.c_str(),
                      units.value, extra.c_str(), static_cast<long long>(validation.tokens),
                      seconds_since(eval_start));
  }
  state.interval_start += Clock::now() - eval_start;
}

// Every checkpoint.every steps, at the last, and when a signal asked to stop: a checkpoint of
// the current weights, refused (DivergedError) when they are not finite. Saving does not count
// as training time.
void maybe_save(Run& run, TrainState& state, const StepVerdict& verdict) {
  const Config& config = run.config;
  const bool due = (config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0) ||
                   (state.step == config.train.steps && config.checkpoint.at_end);
  if (!due && verdict.stop_signal == 0) return;
  if (!weights_finite(run.backend, run.params, run.world))
    throw DivergedError("step " + std::to_string(state.step) +
                        ": the weights are not finite after the update, so no checkpoint is "
                        "written (" + run.checkpoints + "/latest still names the last finite "
                        "one); lower train.lr or set train.grad_clip");
  const Clock::time_point save_start = Clock::now();
  std::string& saved = state.summary.last_checkpoint;
  saved = save_checkpoint(run.checkpoints, state.step, config, run.model, run.optimizer.get(),
                          run.groups, run.backend, state.run_id);
  if (run.speak && config.checkpoint.async) {
    run.console.print("saving step %6lld | %s (in the background; the step waited %.2fs)\n",
                      static_cast<long long>(state.step), saved.c_str(), seconds_since(save_start));
  } else if (run.speak) {
    std::error_code error;
    const auto bytes = fs::file_size(saved, error);
    run.console.print("saved  step %6lld | %s (%.1f MB in %.2fs)\n",
                      static_cast<long long>(state.step), saved.c_str(),
                      error ? 0.0 : bytes / 1e6, seconds_since(save_start));
  }
  state.interval_start += Clock::now() - save_start;
}

// A stop signal ended the run after the checkpoint maybe_save wrote for it.
void report_stop(Run& run, TrainState& state, int stop_signal) {
  state.summary.stop_signal = stop_signal;
  if (!run.speak) return;
  run.console.print("stopped by %s after step %lld: checkpoint %s; continue with --resume auto "
                    "(exit status %d)\n",
                    signal_name(stop_signal).c_str(), static_cast<long long>(state.step),
                    state.summary.last_checkpoint.c_str(), kExitPreempted);
  std::fflush(stdout);
}

// ---- finish ------------------------------------------------------------------------------------

// Waits for the last asynchronous save (its file complete, or its error raised on every rank),
// then the summary: steps, time, throughput; and with collect_parameters every parameter on
// rank 0.
TrainSummary finish(Run& run, TrainState& state) {
  finish_checkpoint_write(run.groups);
  const TrainConfig& tc = run.config.train;
  TrainSummary& summary = state.summary;
  if (summary.stop_signal == 0) summary.steps = std::max(state.first_step, tc.steps);
  summary.seconds = seconds_since(state.run_start);
  const int64_t steps_run = std::max<int64_t>(0, summary.steps - state.first_step);
  const int64_t tokens_per_step = global_batch(run) * run.config.model.seq_len;
  summary.tokens_per_s =
      summary.seconds > 0 ? steps_run * tokens_per_step / summary.seconds : 0.0;
  if (run.speak && steps_run > 0 && summary.stop_signal == 0) {
    char validation[64] = ", no validation (eval.tokens 0)";
    if (eval_sequences(run.config) > 0)
      std::snprintf(validation, sizeof validation, ", final val_loss %.4f", summary.final_val_loss);
    run.console.print("done: %lld steps in %.1fs (%.0f tokens/s)%s\n",
                      static_cast<long long>(steps_run), summary.seconds, summary.tokens_per_s,
                      validation);
  }
  if (run.options.collect_parameters)
    for (Param* param : run.params) {
      std::vector<double> full =
          gather_to_rank0(param->value, param->is_expert, run.groups, run.backend);
      if (run.lead) summary.parameters.emplace_back(param->path, std::move(full));
    }
  return std::move(summary);
}

}  // namespace

TrainSummary train(const Config& config, const TrainOptions& options) {
  Run run(config, options);
  TrainState state = start_or_resume(run);
  // checkpoint.async: the snapshot's host memory, prepared while the first steps run.
  if (state.step < config.train.steps)
    prepare_checkpoint_snapshot(config, run.model, run.optimizer.get(), run.groups, run.backend);
  RunOutputs outputs = open_outputs(run, state);
  const TrainData data = load_train_data(run);
  announce(run, data, state);
  state.run_start = state.interval_start = Clock::now();
  while (state.step < config.train.steps) {
    const StepBatch batch = next_batch(run, data, state);
    StepAccumulator acc = forward_backward(run, batch, state);
    const double grad_norm = sync_gradients(run);
    const StepVerdict verdict = judge_step(run, outputs.spike_guard, acc, grad_norm);
    const double lr = clip_and_update(run, state, verdict, grad_norm, acc);
    StepMetrics metrics = record_step(run, state, outputs, verdict, acc, lr, grad_norm);
    record_epochs(data, metrics);
    run.backend.profile_step();
    log_step(run, state, outputs, metrics);
    maybe_evaluate(run, data, state, outputs);
    maybe_save(run, state, verdict);
    if (verdict.stop_signal != 0) {
      report_stop(run, state, verdict.stop_signal);
      break;
    }
    if (run.speak) std::fflush(stdout);
  }
  return finish(run, state);
}

}  // namespace sy
