// metrics.jsonl, its one writer (MetricsLog) and its one reader (read_metrics), and the console
// progress line. Numbers are nlohmann-json's: the shortest text that reads back as the same
// double (at most 17 significant digits), so that runs can be compared bit for bit from the file.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/tensorboard.h"

namespace sy {

// What one optimizer step produced, reduced over its routing groups.
struct StepMetrics {
  int64_t step = 0;         // optimizer steps completed (1-based)
  double loss = 0.0;        // mean over groups of the group loss
  double lm_loss = 0.0, aux_loss = 0.0, z_loss = 0.0;
  // With a loss mask (docs/data.md): the step's counted targets over every rank, the divisor of
  // lm_loss; -1 without one (not logged).
  int64_t lm_targets = -1;
  // With data.sampling: epoch, the epochs taken by the end of this step (1.5: halfway through
  // the second); -1 otherwise (not logged).
  double epoch = -1.0;
  // The same over a mixture, per file: {"epoch/<name>", epochs} (docs/data.md, "Epochs").
  std::vector<std::pair<std::string, double>> source_epochs;
  double lr = 0.0;
  double grad_norm = 0.0;   // before clipping
  double tokens_per_s = 0.0;
  double dropped_frac = 0.0;
  double rerouted_frac = 0.0;  // assignments moved to another expert (moe.overflow reroute)
  std::vector<std::vector<double>> expert_load;  // [MoE layer][E], fractions before drops
  // Per MoE layer (docs/load-balancing.md): the coefficient of variation of expert_load, its
  // max over its mean, the dropped fraction, and the mean router entropy per token (nats).
  std::vector<double> load_cv, load_max_mean, layer_dropped_frac, router_entropy;
  std::vector<std::vector<double>> expert_bias;  // [MoE layer][E] after the step; empty when off
  double eta_s = 0.0;
  int64_t peak_memory_bytes = 0;  // device memory, max over ranks (0 on the CPU)
};

// How evenly one layer's load fractions spread over its experts: the coefficient of variation
// (population standard deviation over mean: 0 when uniform, sqrt(E - 1) when one expert takes
// all) and the largest load over the mean (1 when uniform, E at collapse).
struct LoadBalance {
  double cv = 0.0, max_over_mean = 0.0;
};
LoadBalance load_balance(const std::vector<double>& load);

// A JSON object on one line, written field by field in insertion order: the project's one JSON
// writer (metrics.jsonl, `eval`'s result, the benchmark's summary). Keys, strings and numbers
// are nlohmann-json's (escapes; invalid UTF-8 replaced by U+FFFD; a double as the shortest text
// that reads back to it, a non-finite one as null); a space follows every ',' and ':' between
// items, `{"step": 3, "x": [[0.5, 0.25], []]}`, the shape that scripts grep for.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double value);
  JsonLine& add(const std::string& key, int64_t value);
  JsonLine& add(const std::string& key, const std::string& value);
  JsonLine& add(const std::string& key, const std::vector<double>& value);
  JsonLine& add(const std::string& key, const std::vector<std::vector<double>>& value);
  // `value` with exactly `decimals` digits after the point (the clock fields: digits beyond
  // what the clock resolves would be noise).
  JsonLine& add_fixed(const std::string& key, double value, int decimals);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& name);
  std::string body_;
};

// ISO-8601 UTC with milliseconds: "2026-12-02T09:41:07.250Z".
std::string utc_timestamp(std::chrono::system_clock::time_point when);

// Every record ends with "time" (utc_timestamp of the write) and "elapsed_s" (seconds since the
// log opened, which is when this process started the run: 0 again after a resume, written with
// 3 decimals); "step" is the first key.
class MetricsLog {
 public:
  // Truncates, or with `append` (a resumed run) adds to what is there.
  explicit MetricsLog(const std::string& path, bool append = false);
  ~MetricsLog();
  void write_step(const StepMetrics& metrics);
  void write_eval(int64_t step, double val_loss);
  // With the loss in a reader's units (`unit` e.g. "bits_per_byte", written as "val_<unit>") and
  // the number of validation tokens it averages over.
  void write_eval(int64_t step, double val_loss, const std::string& unit, double unit_value,
                  int64_t val_tokens);
  // The same record with more keys: a mixture's per-file validation losses, each as
  // {"val_loss/<name>": loss} (data.train_paths, docs/data.md).
  void write_eval(int64_t step, double val_loss, const std::string& unit, double unit_value,
                  int64_t val_tokens, const std::vector<std::pair<std::string, double>>& more);
  // From now on every record's numbers also go to TensorBoard event files in `dir`, tagged by
  // their metrics.jsonl key; per-layer arrays as "<key>/layer<l>", per-expert ones as
  // "<key>/layer<l>/expert<e>". Throws std::runtime_error when the file cannot be created.
  void add_tensorboard(const std::string& dir);

 private:
  void write_record(JsonLine& record);
  void write_tensorboard(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::FILE* file_ = nullptr;
  std::string path_;
  std::chrono::steady_clock::time_point opened_;
};

// ---- reading metrics.jsonl ---------------------------------------------------------------------

// One step line as read back. A number the line wrote as null (a non-finite value) or a key it
// lacks (files older than the key) is NaN; a list it lacks is empty (a dense model writes []).
struct StepRecord {
  static constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();
  int64_t step = 0;
  double loss = kAbsent;
  double lm_loss = kAbsent, aux_loss = kAbsent, z_loss = kAbsent, lr = kAbsent;
  double grad_norm = kAbsent, tokens_per_s = kAbsent, dropped_frac = kAbsent;
  double rerouted_frac = kAbsent, peak_memory_bytes = kAbsent;
  bool has_rerouted_frac = false;  // lines before moe.overflow lack it
  std::vector<std::vector<double>> expert_load, expert_bias;  // [MoE layer][E]
  std::vector<double> load_cv, load_max_mean, layer_dropped_frac, router_entropy;  // [MoE layer]
};

// One eval line: val_tokens is -1 where the line lacks it (files before it was logged).
struct EvalRecord {
  int64_t step = 0;
  double val_loss = StepRecord::kAbsent;
  int64_t val_tokens = -1;
  // A mixture's per-file losses ("val_loss/<name>" keys), by name, in the line's order.
  std::vector<std::pair<std::string, double>> val_loss_by_file;
  // eval.questions' accuracies; kAbsent without them.
  double choice_accuracy = StepRecord::kAbsent, choice_accuracy_norm = StepRecord::kAbsent;
};

// A metrics.jsonl's records in file order (a resumed run's file may hold a step twice: the
// later line is the resumed run's). moe_layers and experts are 0 where no line shows them.
struct MetricsRecords {
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  int64_t moe_layers = 0, experts = 0;
  int64_t lines = 0;  // lines read, blank ones included
};

// Reads a metrics.jsonl. A line with "loss" is a step line, one with "val_loss" an eval line
// (a line may be both). Throws std::runtime_error "<path>: cannot open: <why>" and
// "<path>:<line>: <what>" for a line that is not a JSON object of metrics, or whose number of
// MoE layers or experts differs from an earlier line's (they are fixed for a run). Blank lines
// are skipped.
MetricsRecords read_metrics(const std::string& path);

// Cuts a JSON-lines log of steps (metrics.jsonl, spike_guard.jsonl) back to its lines whose
// "step" is at most `last_step`, in place (through <path>.tmp, renamed over it): a resumed run
// writes the later steps again. A line without an integer "step" (a write torn by a crash) is
// dropped too, with a note in the returned list saying so. Nothing happens when the file does
// not exist. Throws std::runtime_error naming the file when it cannot be read or replaced.
std::vector<std::string> truncate_metrics_after(const std::string& path, int64_t last_step);

// The one place a training run's console output goes through: printed on the console and, once
// open_log() is called, appended to the run's train.log with a UTC timestamp on every line.
// Lines printed before the log opens (the resume messages: the run folder may not exist yet)
// are written to it when it opens. A disabled console (print off, or not rank 0) does nothing.
class RunConsole {
 public:
  explicit RunConsole(bool enabled) : enabled_(enabled) {}
  ~RunConsole();
  RunConsole(const RunConsole&) = delete;
  RunConsole& operator=(const RunConsole&) = delete;

  // Opens `path` for appending. Throws std::runtime_error naming it when it cannot.
  void open_log(const std::string& path);
  void print(const char* format, ...) __attribute__((format(printf, 2, 3)));  // to stdout
  void write(std::FILE* stream, const char* format, ...) __attribute__((format(printf, 3, 4)));

  // One timestamped line added to the log at `path`, if that file exists: the reason a run
  // stopped, which its caller learns only after the console is gone. Never throws.
  static void append_if_exists(const std::string& path, const std::string& line);

 private:
  void log(const std::string& text);
  bool enabled_;
  std::FILE* log_ = nullptr;
  std::string log_path_;
  std::string before_open_;  // printed before open_log()
  bool at_line_start_ = true;
};

std::string progress_line(const StepMetrics& metrics, int64_t total_steps);

}  // namespace sy
