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
#include <random>
#include <sstream>

#include "data/sampler.h"
#include "data/token_file.h"
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

std::string utc_stamp() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  gmtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%dT%H%M%SZ", &parts);
  return text;
}

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

// The checkpoint to resume from: `resume` itself, or for "auto" the newest complete one in the
// checkpoint folder as rank 0 finds it, passing over `failed` ("" when there is none).
// Collective over `world`.
std::string resolve_resume(const std::string& resume, const Config& config, Communicator& world,
                           std::vector<std::string>& messages,
                           const std::vector<std::string>& failed) {
  if (resume != "auto") return resume;
  const std::string dir = checkpoint_dir(config);
  std::string found, problem;
  std::vector<std::string> skipped;
  if (world.rank() == 0) {
    try {
      found = find_latest_checkpoint(dir, &skipped, failed);
    } catch (const std::exception& error) {
      problem = dir + ": " + error.what();
    }
  }
  agree_or_throw(world, problem);
  found = world.all_gather_host(found)[0];
  if (!failed.empty()) return found;  // what was skipped is said already
  for (const std::string& line : skipped)  // rank 0's findings (only rank 0 reports them)
    if (line.find("latest: missing") == std::string::npos || found.empty())
      messages.push_back("resume auto: skipped " + line);
  if (found.empty())
    messages.push_back("resume auto: no checkpoint in " + dir + "; starting fresh");
  return found;
}

// Sums the per-group statistics of one step into its metrics (means over groups).
struct StepAccumulator {
  int64_t groups = 0, assignments = 0, dropped = 0, rerouted = 0, tokens = 0;
  double loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0;
  std::vector<std::vector<double>> load_counts;  // [MoE layer][E], choices before drops
  std::vector<int64_t> dropped_per_layer, rerouted_per_layer;
  std::vector<double> entropy_sum;  // [MoE layer], summed over groups

  void add(const GroupStats& stats) {
    ++groups;
    tokens += stats.tokens;
    loss += stats.loss;
    lm_loss += stats.lm_loss;
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
    std::vector<double> sums{loss, lm_loss, aux_loss, z_loss};
    sums.insert(sums.end(), entropy_sum.begin(), entropy_sum.end());
    world.all_reduce_host(sums, ReduceOp::sum);
    loss = sums[0], lm_loss = sums[1], aux_loss = sums[2], z_loss = sums[3];
    std::copy(sums.begin() + 4, sums.end(), entropy_sum.begin());
    std::vector<int64_t> counts{groups, assignments, dropped, rerouted, tokens};
    counts.insert(counts.end(), dropped_per_layer.begin(), dropped_per_layer.end());
    counts.insert(counts.end(), rerouted_per_layer.begin(), rerouted_per_layer.end());
    for (const std::vector<double>& layer : load_counts)
      for (double count : layer) counts.push_back(static_cast<int64_t>(count));
    world.all_reduce_host(counts, ReduceOp::sum);
    groups = counts[0], assignments = counts[1], dropped = counts[2], rerouted = counts[3];
    tokens = counts[4];
    size_t next = 5;
    for (int64_t& count : dropped_per_layer) count = counts[next++];
    for (int64_t& count : rerouted_per_layer) count = counts[next++];
    for (std::vector<double>& layer : load_counts)
      for (double& count : layer) count = static_cast<double>(counts[next++]);
  }

  void finish(StepMetrics& m) const {
    m.loss = loss / groups;
    m.lm_loss = lm_loss / groups;
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

}  // namespace

TrainSummary train(const Config& config, const TrainOptions& options) {
  ModelSession session = make_model_session(config, options.world);
  Backend& backend = *session.backend;
  Transformer& model = *session.model;
  ProcessGroups& groups = session.groups;
  Communicator& world = *groups.world;
  const bool lead = world.rank() == 0;  // rank 0 alone prints and writes files
  RunConsole console(options.print && lead);  // the console, and <run.dir>/train.log
  StopSignals stop_signals;
  RunDirLock run_dir_lock;  // rank 0's, with guard_run_dir
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
    if (options.print && lead)
      for (const std::string& line : messages) console.print("%s\n", line.c_str());
  }
  // Before the optimizer's state and the first activations exist (run.memory_check).
  const MemoryCheck memory_check = check_memory(config, backend, options.world);
  agree_or_throw(world, memory_check.problem);

  std::vector<Param*> params = model.params();
  std::unique_ptr<Optimizer> optimizer = make_optimizer(optimizer_settings(config.train));

  // Resume: parameters, optimizer moments and step count, and the step (the sampler is
  // stateless, so the step is the data position).
  TrainSummary summary;
  // A run that leaves by an exception still lets a background checkpoint write finish (its file
  // complete, or removed) and says if it failed; on the normal path it has already been waited for.
  struct JoinCheckpointWrite {
    ~JoinCheckpointWrite() {
      const std::string error = join_checkpoint_write();
      if (!error.empty()) std::fprintf(stderr, "switchyard: error: background checkpoint write: %s\n", error.c_str());
    }
  } join_checkpoint_write_on_exit;
  int64_t start_step = 0;
  if (!options.resume.empty()) {
    // --resume auto falls back past a checkpoint that looked complete but does not load (a
    // damaged tensor); if none loads, the newest one's error stands. A failed load may have
    // read some tensors, but the next one overwrites every tensor and moment.
    std::vector<std::string> failed;
    std::string first_error;
    std::string path;
    LoadResult loaded;
    for (;;) {
      path = resolve_resume(options.resume, config, world, summary.resume_messages, failed);
      if (path.empty()) {
        if (!failed.empty()) throw CollectiveError(first_error);
        break;
      }
      try {
        loaded = load_checkpoint(path, config, model, optimizer.get(), groups, backend);
        break;
      } catch (const CollectiveError& error) {
        if (options.resume != "auto") throw;
        if (first_error.empty()) first_error = error.what();
        failed.push_back(path);
        summary.resume_messages.push_back(std::string("warning: resume auto: skipped ") +
                                          error.what() + "; trying an older checkpoint");
      }
    }
    if (!path.empty()) {
      start_step = loaded.header.step;
      summary.resumed_from = path;
      summary.resume_messages.push_back("resumed from " + path + " at step " +
                                        std::to_string(start_step));
      for (const std::string& line : loaded.diff.notes)
        summary.resume_messages.push_back("note: changed since the checkpoint: " + line);
      for (const std::string& line : loaded.diff.warnings)
        summary.resume_messages.push_back(
            "warning: changed since the checkpoint: " + line +
            "; the routing groups differ, so the run does not continue the checkpoint's trajectory "
            "exactly");
    }
    if (options.print && lead) {
      for (const std::string& line : summary.resume_messages)
        console.write(line.rfind("warning", 0) == 0 ? stderr : stdout, "%s\n", line.c_str());
      std::fflush(stdout);
    }
  }
  summary.first_step = start_step;
  // This run's id, in every checkpoint's provenance, so that keep_last removes only this run's
  // files: the resumed checkpoint's, else a new one from rank 0.
  std::string run_id = summary.resumed_from.empty()
                           ? ""
                           : provenance_run_id(read_checkpoint_header(summary.resumed_from).provenance);
  if (run_id.empty()) {
    if (lead) {
      char random_part[16];
      std::snprintf(random_part, sizeof random_part, "%08x", std::random_device{}());
      run_id = utc_stamp() + "-" + random_part;
    }
    run_id = world.all_gather_host(run_id)[0];
  }

  const std::filesystem::path run_dir = config.run.dir;
  const std::string checkpoints = checkpoint_dir(config);
  std::unique_ptr<MetricsLog> metrics_log;
  std::string problem;
  if (lead) {
    try {
      std::filesystem::create_directories(run_dir);
      write_resolved_config(config, run_dir);
      console.open_log((run_dir / "train.log").string());
      const std::filesystem::path metrics_path = run_dir / "metrics.jsonl";
      const bool resumed = !summary.resumed_from.empty();
      // A resumed run's metrics.jsonl keeps the lines up to the checkpoint's step (a run that
      // went on past its last checkpoint wrote lines that the resumed run writes again).
      if (resumed)
        for (const std::string& note : truncate_metrics_after(metrics_path.string(), start_step))
          console.write(stderr, "warning: %s\n", note.c_str());
      metrics_log = std::make_unique<MetricsLog>(metrics_path.string(), resumed);
      if (config.run.tensorboard) metrics_log->add_tensorboard((run_dir / "tensorboard").string());
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  agree_or_throw(world, problem);
  // The spike guard's window, refilled on resume from rank 0's log (trainer/spike_guard.h).
  SpikeGuard spike_guard(config.train.spike_window, config.train.spike_z,
                         config.train.spike_min_steps);
  std::ofstream spike_log;
  if (spike_guard.enabled()) {
    std::string window_text;
    if (lead) {
      try {
        const std::string path = spike_guard_log_path(config.run.dir);
        const bool resumed = !summary.resumed_from.empty();
        if (resumed) {
          bool found = false;
          const std::vector<double> losses = read_spike_guard_log(path, start_step, found);
          const size_t keep = std::min(losses.size(), static_cast<size_t>(config.train.spike_window));
          char text[40];
          for (size_t i = losses.size() - keep; i < losses.size(); ++i) {
            std::snprintf(text, sizeof text, "%.17g\n", losses[i]);
            window_text += text;
          }
          if (found) {
            for (const std::string& note : truncate_metrics_after(path, start_step))
              console.write(stderr, "warning: %s\n", note.c_str());
          } else if (options.print) {
            console.write(stderr, "warning: %s is missing: the loss-spike guard starts with an "
                          "empty window (it acts after train.spike_min_steps steps)\n", path.c_str());
          }
        }
        spike_log.open(path, resumed ? std::ios::app : std::ios::trunc);
        if (!spike_log) throw std::runtime_error(path + ": cannot open: " + errno_text());
      } catch (const std::exception& error) {
        problem = error.what();
      }
    }
    agree_or_throw(world, problem);
    window_text = world.all_gather_host(window_text)[0];
    std::vector<double> window;
    for (size_t begin = 0, end; (end = window_text.find('\n', begin)) != std::string::npos;
         begin = end + 1)
      window.push_back(std::strtod(window_text.c_str() + begin, nullptr));
    spike_guard.restore(window);
  }
  const TokenFile data = load_tokens_on_every_rank(config, world);
  const StepSampler sampler(data.train, config.model.seq_len, config.seed);
  const std::vector<int32_t> val_tokens =
      read_validation_tokens(*data.val, eval_sequences(config), config.model.seq_len);

  const TrainConfig& tc = config.train;
  const int64_t W = world.size(), rank = world.rank();
  const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
  if (options.print && lead) {
    console.print("%s", format_model_card(config, make_model_card(config)).c_str());
    console.print("  %lld ranks (expert_parallel %lld, grad_accum_steps %lld): global batch %lld "
                  "sequences\n",
                  static_cast<long long>(W),
                  static_cast<long long>(config.parallel.expert_parallel),
                  static_cast<long long>(tc.grad_accum_steps),
                  static_cast<long long>(W * tc.grad_accum_steps * B));
    console.print("  run dir %s, data %s (%lld train / %lld val tokens)\n", run_dir.c_str(),
                  config.data.path.c_str(), static_cast<long long>(data.train->size()),
                  static_cast<long long>(data.val->size()));
    console.print("  %s\n", memory_check.summary.c_str());
    std::fflush(stdout);
  }

  // SPEC.md section 3: the step's objective is the mean over its W*A routing groups.
  const double loss_scale = 1.0 / static_cast<double>(W * tc.grad_accum_steps);
  std::vector<int32_t> inputs(B * S), targets(B * S);

  if (options.print && lead && start_step >= tc.steps)
    console.print("nothing to train: the checkpoint is at step %lld and train.steps is %lld\n",
                  static_cast<long long>(start_step), static_cast<long long>(tc.steps));
  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  int64_t interval_tokens = 0;
  bool grads_zero = false;  // Optimizer::step leaves the grads zero (optim/optimizer.h)
  int64_t bad_in_a_row = 0;
  summary.steps = start_step;
  // A checkpoint of the current weights, refused (DivergedError) when they are not finite.
  auto save_now_or_refuse = [&](int64_t step_done) {
    if (!weights_finite(backend, params, world))
      throw DivergedError("step " + std::to_string(step_done) +
                          ": the weights are not finite after the update, so no checkpoint is "
                          "written (" + checkpoints + "/latest still names the last finite one); "
                          "lower train.lr or set train.grad_clip");
    const Clock::time_point save_start = Clock::now();
    summary.last_checkpoint = save_checkpoint(checkpoints, step_done, config, model,
                                              optimizer.get(), groups, backend, run_id);
    if (options.print && lead && config.checkpoint.async) {
      console.print("saving step %6lld | %s (in the background; the step waited %.2fs)\n",
                    static_cast<long long>(step_done), summary.last_checkpoint.c_str(),
                    seconds_since(save_start));
    } else if (options.print && lead) {
      std::error_code error;
      const auto bytes = std::filesystem::file_size(summary.last_checkpoint, error);
      console.print("saved  step %6lld | %s (%.1f MB in %.2fs)\n",
                    static_cast<long long>(step_done), summary.last_checkpoint.c_str(),
                    error ? 0.0 : bytes / 1e6, seconds_since(save_start));
    }
    interval_start += Clock::now() - save_start;  // saving does not count as training time
  };
  for (int64_t step = start_step; step < tc.steps; ++step) {
    if (!grads_zero) model.zero_grads();
    StepAccumulator acc;
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const int64_t group = micro * W + rank;  // SPEC.md section 3
      sampler.group(step, group, B, inputs.data(), targets.data());
      acc.add(model.forward_backward(inputs, targets, B, true, loss_scale));
    }
    if (options.after_backward) options.after_backward(step + 1, params, backend);
    if (options.loss_offset) acc.loss += options.loss_offset(step + 1);
    synchronize_gradients(params, groups);
    const double grad_norm = distributed_grad_norm(backend, params, groups);
    const double lr = lr_at(lr_schedule(tc), step);
    const bool loss_finite_here = std::isfinite(acc.loss);
    // The step's statistics over all ranks, before the update: the spike guard judges the loss
    // (metrics.loss, as StepAccumulator::finish computes it).
    acc.reduce(world);
    const double step_loss = acc.loss / static_cast<double>(acc.groups);
    // One 3-integer all-reduce per step, so that every rank takes the same decisions: a stop
    // signal on any rank, a non-finite loss on any rank (grad_norm is already global), a spike.
    std::vector<int64_t> flags{static_cast<int64_t>(g_stop_signal), loss_finite_here ? 0 : 1,
                               spike_guard.is_spike(step_loss) ? 1 : 0};
    world.all_reduce_host(flags, ReduceOp::max);
    const int stop_signal = static_cast<int>(flags[0]);
    const bool non_finite = flags[1] != 0 || !std::isfinite(grad_norm);
    const bool spike = flags[2] != 0 && !non_finite;
    const bool bad_step = non_finite || spike;
    if (!bad_step) {
      // The clip scale, the update, the bf16 copies of the new master weights and the zeroing
      // of the grads, in one pass on CUDA (optim/optimizer.h).
      optimizer->step(backend, params, lr, clip_factor(grad_norm, tc.grad_clip));
      grads_zero = true;
    } else {
      grads_zero = false;  // the non-finite grads are dropped by the next step's zero_grads
    }

    // aux-loss-free balancing (a no-op when off); a skipped step changes nothing
    if (!bad_step) model.update_expert_bias(acc.load_counts);
    StepMetrics metrics;
    metrics.step = step + 1;
    metrics.lr = lr;
    metrics.grad_norm = grad_norm;
    acc.finish(metrics);
    summary.losses.push_back(metrics.loss);
    summary.dropped_any |= metrics.dropped_frac > 0;
    interval_tokens += acc.tokens;
    summary.steps = step + 1;
    if (bad_step) {
      ++summary.skipped_steps;
      summary.spike_steps += spike;
      ++bad_in_a_row;
      const std::string what =
          spike ? "step " + std::to_string(step + 1) + ": " + spike_guard.describe(metrics.loss)
                : "step " + std::to_string(step + 1) + ": loss " + std::to_string(metrics.loss) +
                      ", grad_norm " + std::to_string(grad_norm) + " (not finite)";
      if (bad_in_a_row >= tc.max_bad_steps)
        throw DivergedError(what + ", " + std::to_string(bad_in_a_row) +
                            " such steps in a row (train.max_bad_steps " +
                            std::to_string(tc.max_bad_steps) + "): training diverged; lower "
                            "train.lr or set train.grad_clip, and resume from the last finite "
                            "checkpoint");
      if (options.print && lead)
        console.write(stderr, "warning: %s: skipped, no update (%lld in a row, %lld skipped in all; "
                      "train.max_bad_steps %lld)\n", what.c_str(),
                      static_cast<long long>(bad_in_a_row),
                      static_cast<long long>(summary.skipped_steps),
                      static_cast<long long>(tc.max_bad_steps));
    } else {
      bad_in_a_row = 0;
      spike_guard.accept(metrics.loss);
      if (spike_log.is_open()) {
        spike_log << spike_guard_log_line(step + 1, metrics.loss);
        spike_log.flush();
      }
    }

    const bool last = step + 1 == tc.steps;
    const bool first = step == start_step;
    if ((step + 1) % config.run.log_every == 0 || last || first) {
      std::vector<int64_t> peak{static_cast<int64_t>(backend.peak_memory_bytes())};
      world.all_reduce_host(peak, ReduceOp::max);
      metrics.peak_memory_bytes = peak[0];
      if (first && options.print && lead && peak[0] > 0)
        console.print("  peak device memory after the first step: %.1f MiB per rank (max over "
                      "ranks; buffers are reused from here on)\n",
                      peak[0] / 1048576.0);
    }
    if ((step + 1) % config.run.log_every == 0 || last) {
      backend.synchronize();  // a device's queued work belongs to this interval
      const double interval_s = seconds_since(interval_start);
      metrics.tokens_per_s = interval_s > 0 ? interval_tokens / interval_s : 0.0;
      metrics.eta_s = seconds_since(run_start) / (step + 1 - start_step) * (tc.steps - step - 1);
      for (auto& [path, bias] : model.expert_biases())
        metrics.expert_bias.push_back(backend.read(bias));
      if (lead) metrics_log->write_step(metrics);
      if (options.print && lead) console.print("%s\n", progress_line(metrics, tc.steps).c_str());
      interval_start = Clock::now();
      interval_tokens = 0;
    }
    const bool eval_now = eval_sequences(config) > 0 &&
                          ((config.eval.every > 0 && (step + 1) % config.eval.every == 0) || last);
    if (eval_now) {
      const Clock::time_point eval_start = Clock::now();
      const Validation validation = evaluate(model, val_tokens, eval_sequences(config), world);
      const LossInUnits units = loss_in_units(validation.loss, data.tokenizer);
      summary.final_val_loss = validation.loss;
      if (lead)
        metrics_log->write_eval(step + 1, validation.loss, units.name, units.value,
                                validation.tokens);
      if (options.print && lead)
        console.print("eval   step %6lld | val_loss %.4f | %s %.4f | %lld tokens in %.1fs\n",
                      static_cast<long long>(step + 1), validation.loss, units.name.c_str(),
                      units.value, static_cast<long long>(validation.tokens),
                      seconds_since(eval_start));
      interval_start += Clock::now() - eval_start;  // evaluation does not count as training time
    }
    const bool save_now =
        (config.checkpoint.every > 0 && (step + 1) % config.checkpoint.every == 0) || last;
    if (save_now || stop_signal != 0) save_now_or_refuse(step + 1);
    if (stop_signal != 0) {
      summary.stop_signal = stop_signal;
      if (options.print && lead)
        console.print("stopped by %s after step %lld: checkpoint %s; continue with --resume "
                      "auto (exit status %d)\n",
                      signal_name(stop_signal).c_str(), static_cast<long long>(step + 1),
                      summary.last_checkpoint.c_str(), kExitPreempted);
      if (options.print && lead) std::fflush(stdout);
      break;
    }
    if (options.print && lead) std::fflush(stdout);
  }
  // checkpoint.async: the last save's file is complete (or its error raised on every rank)
  // before train() returns.
  finish_checkpoint_write(groups);
  if (summary.stop_signal == 0) summary.steps = std::max(start_step, tc.steps);
  summary.seconds = seconds_since(run_start);
  const int64_t steps_run = std::max<int64_t>(0, summary.steps - start_step);
  summary.tokens_per_s =
      summary.seconds > 0 ? steps_run * W * tc.grad_accum_steps * B * S / summary.seconds : 0.0;
  if (options.print && lead && steps_run > 0 && summary.stop_signal == 0)
    console.print("done: %lld steps in %.1fs (%.0f tokens/s), final val_loss %.4f\n",
                  static_cast<long long>(steps_run), summary.seconds, summary.tokens_per_s,
                  summary.final_val_loss);
  if (options.collect_parameters)
    for (Param* param : params) {
      std::vector<double> full = gather_to_rank0(param->value, param->is_expert, groups, backend);
      if (lead) summary.parameters.emplace_back(param->path, std::move(full));
    }
  return summary;
}

}  // namespace sy
