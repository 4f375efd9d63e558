// switchyard plot: PNG charts of a run's metrics.jsonl (loss, expert load per MoE layer, drops,
// load balance), drawn by gnuplot's pngcairo terminal from a script and data files written to a
// temporary folder. Parsing is separate from drawing so that it can be tested without gnuplot.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

// Every line of a metrics.jsonl, as columns. Row i of each step series belongs to steps[i]; a
// value the file wrote as null, or a key a line lacked, is NaN. Keys newer than the file (the
// balance statistics) leave their series empty when no line has them.
struct MetricsHistory {
  // Step lines in step order. A step logged twice (a run resumed from a checkpoint older than
  // its last logged step) keeps its later line.
  std::vector<int64_t> steps;
  std::vector<double> loss, lm_loss, aux_loss, z_loss, lr, grad_norm, tokens_per_s;
  std::vector<double> dropped_frac, peak_memory_bytes;
  std::vector<double> rerouted_frac;  // empty when no line has it

  int64_t moe_layers = 0;  // 0: a dense model
  int64_t experts = 0;     // per MoE layer
  // [MoE layer][step row][expert]: the fraction of the layer's assignments each expert got.
  std::vector<std::vector<std::vector<double>>> expert_load;
  std::vector<std::vector<std::vector<double>>> expert_bias;  // empty without bias balancing
  // [MoE layer][step row]; each empty when no line has the key.
  std::vector<std::vector<double>> load_cv, load_max_mean, layer_dropped_frac, router_entropy;

  // Eval lines in step order (a repeated step keeps its later line).
  std::vector<int64_t> eval_steps;
  std::vector<double> val_loss;
  // eval.questions' accuracies, NaN where a line lacks them.
  std::vector<double> choice_accuracy, choice_accuracy_norm;
  // A mixture's per-file validation losses: [file][eval line], NaN where a line lacks the file.
  std::vector<std::string> val_files;
  std::vector<std::vector<double>> val_loss_by_file;
};

// A metrics.jsonl (read by read_metrics, trainer/metrics.h) as columns. Throws
// std::runtime_error "<path>:<line>: <what>" for a line that is not a JSON object of metrics,
// and "<path>: <what>" for a file that cannot be read or holds no step line. Blank lines are
// ignored.
MetricsHistory read_metrics_history(const std::string& path);

struct PlotResult {
  std::vector<std::string> written;  // PNG paths, in the order drawn
  std::vector<std::string> skipped;  // "<chart>.png: <why>" for each chart left out
};

// Draws the charts of run_dir/metrics.jsonl into output_dir (run_dir when empty; created when
// missing): loss.png, expert_load_layer<l>.png per MoE layer, dropped.png, balance.png, each
// skipped when its data is absent. The title is config.yaml's `name` (else the folder's name).
// Throws std::runtime_error for a bad metrics file, a missing gnuplot or a failed chart.
PlotResult plot_run(const std::string& run_dir, const std::string& output_dir = "");

// Draws two or more runs side by side into output_dir (created when missing), a line per run
// named as plot_run titles it (the folder as given where two names are the same):
// compare_val_loss.png (val_loss at each evaluation), compare_lm_loss.png (the LM loss of each
// logged step) and compare_tokens_per_s.png, each against the step, each skipped when no run has
// its data. For runs of the same global batch, a step is the same number of tokens: MoE against
// dense at equal active compute (README). Throws as plot_run does, and for fewer than two runs.
PlotResult plot_runs(const std::vector<std::string>& run_dirs, const std::string& output_dir);

// The gnuplot executable on PATH, or "" when there is none.
std::string find_gnuplot();

}  // namespace sy
