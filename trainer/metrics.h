// metrics.jsonl and the console progress line. Floats are written at round-trip precision
// (17 significant digits) so that runs can be compared bit for bit from the file.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
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

// A JSON object written field by field, in insertion order.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double value);
  JsonLine& add(const std::string& key, int64_t value);
  JsonLine& add(const std::string& key, const std::string& value);
  JsonLine& add(const std::string& key, const std::vector<double>& value);
  JsonLine& add(const std::string& key, const std::vector<std::vector<double>>& value);
  JsonLine& add_json(const std::string& key, const std::string& json);  // already JSON text
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& name);
  std::string body_;
};

std::string json_number(double value);  // 17 significant digits; non-finite as null
std::string json_string(const std::string& value);

// ISO-8601 UTC with milliseconds: "2026-12-02T09:41:07.250Z".
std::string utc_timestamp(std::chrono::system_clock::time_point when);

// Every record ends with "time" (utc_timestamp of the write) and "elapsed_s" (seconds since the
// log opened, which is when this process started the run: 0 again after a resume), so that
// "step" stays the first key (a resume finds its lines by that prefix).
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
