#include "trainer/plot.h"

#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "trainer/metrics.h"

namespace sy {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- the history of a run ---------------------------------------------------------------------

// Step order, one record per step: a resumed run appends the steps after its checkpoint again,
// and the later (resumed) line is the one the run's weights continue from.
template <class Record>
void keep_last_per_step(std::vector<Record>& records) {
  std::stable_sort(records.begin(), records.end(),
                   [](const Record& a, const Record& b) { return a.step < b.step; });
  std::vector<Record> kept;
  for (size_t i = 0; i < records.size(); ++i)
    if (i + 1 == records.size() || records[i + 1].step != records[i].step)
      kept.push_back(std::move(records[i]));
  records = std::move(kept);
}

std::vector<double> column(const std::vector<StepRecord>& rows, double StepRecord::*member) {
  std::vector<double> values;
  for (const StepRecord& r : rows) values.push_back(r.*member);
  return values;
}

// [layer][row] of a per-layer key; empty when no line has it.
std::vector<std::vector<double>> per_layer(const std::vector<StepRecord>& rows,
                                           std::vector<double> StepRecord::*member,
                                           int64_t layers) {
  bool any = false;
  for (const StepRecord& r : rows) any |= !(r.*member).empty();
  if (!any) return {};
  std::vector<std::vector<double>> series(layers, std::vector<double>(rows.size(), kNaN));
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t l = 0; l < (rows[i].*member).size(); ++l) series[l][i] = (rows[i].*member)[l];
  return series;
}

// [layer][row][expert] of a per-expert key; empty when no line has it.
std::vector<std::vector<std::vector<double>>> per_expert(
    const std::vector<StepRecord>& rows, std::vector<std::vector<double>> StepRecord::*member,
    int64_t layers, int64_t experts) {
  bool any = false;
  for (const StepRecord& r : rows) any |= !(r.*member).empty();
  if (!any || experts <= 0) return {};
  std::vector<std::vector<std::vector<double>>> series(
      layers, std::vector<std::vector<double>>(rows.size(), std::vector<double>(experts, kNaN)));
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t l = 0; l < (rows[i].*member).size(); ++l) series[l][i] = (rows[i].*member)[l];
  return series;
}

MetricsHistory assemble(MetricsRecords records) {
  std::vector<StepRecord>& rows = records.steps;
  std::vector<EvalRecord>& evals = records.evals;
  keep_last_per_step(rows);
  keep_last_per_step(evals);
  MetricsHistory h;
  for (const StepRecord& r : rows) h.steps.push_back(r.step);
  h.loss = column(rows, &StepRecord::loss);
  h.lm_loss = column(rows, &StepRecord::lm_loss);
  h.aux_loss = column(rows, &StepRecord::aux_loss);
  h.z_loss = column(rows, &StepRecord::z_loss);
  h.lr = column(rows, &StepRecord::lr);
  h.grad_norm = column(rows, &StepRecord::grad_norm);
  h.tokens_per_s = column(rows, &StepRecord::tokens_per_s);
  h.dropped_frac = column(rows, &StepRecord::dropped_frac);
  h.peak_memory_bytes = column(rows, &StepRecord::peak_memory_bytes);
  bool any_rerouted = false;
  for (const StepRecord& r : rows) any_rerouted |= r.has_rerouted_frac;
  if (any_rerouted) h.rerouted_frac = column(rows, &StepRecord::rerouted_frac);

  h.moe_layers = records.moe_layers;
  h.experts = records.experts;
  h.expert_load = per_expert(rows, &StepRecord::expert_load, h.moe_layers, h.experts);
  h.expert_bias = per_expert(rows, &StepRecord::expert_bias, h.moe_layers, h.experts);
  h.load_cv = per_layer(rows, &StepRecord::load_cv, h.moe_layers);
  h.load_max_mean = per_layer(rows, &StepRecord::load_max_mean, h.moe_layers);
  h.layer_dropped_frac = per_layer(rows, &StepRecord::layer_dropped_frac, h.moe_layers);
  h.router_entropy = per_layer(rows, &StepRecord::router_entropy, h.moe_layers);
  for (const EvalRecord& e : evals) {
    h.eval_steps.push_back(e.step);
    h.val_loss.push_back(e.val_loss);
    h.choice_accuracy.push_back(e.choice_accuracy);
    h.choice_accuracy_norm.push_back(e.choice_accuracy_norm);
    for (const auto& [file, loss] : e.val_loss_by_file) {
      auto found = std::find(h.val_files.begin(), h.val_files.end(), file);
      if (found == h.val_files.end()) {
        h.val_files.push_back(file);
        h.val_loss_by_file.emplace_back(h.eval_steps.size() - 1, kNaN);  // earlier lines lack it
        found = h.val_files.end() - 1;
      }
      std::vector<double>& series = h.val_loss_by_file[found - h.val_files.begin()];
      series.resize(h.eval_steps.size(), kNaN);
      series.back() = loss;
    }
  }
  for (std::vector<double>& series : h.val_loss_by_file) series.resize(h.eval_steps.size(), kNaN);
  return h;
}

bool blank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

// ---- drawing ----------------------------------------------------------------------------------

// A folder under the system's temporary folder, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "switchyard-plot-XXXXXX").string();
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error(pattern +
                               ": cannot create a temporary folder: " + std::strerror(errno));
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// gnuplot single-quoted string: no escapes inside, a quote is written twice.
std::string gp_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string num(double value) {
  if (!std::isfinite(value)) return "NaN";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

bool has_finite(const std::vector<double>& values) {
  for (double v : values)
    if (std::isfinite(v)) return true;
  return false;
}

double max_finite(const std::vector<std::vector<double>>& series) {
  double top = 0.0;
  for (const auto& values : series)
    for (double v : values)
      if (std::isfinite(v)) top = std::max(top, v);
  return top;
}

double value_at(const std::vector<std::vector<double>>& series, size_t layer, size_t row) {
  return series.empty() ? kNaN : series[layer][row];
}

// steps.dat columns: 1 step, 2 loss, 3 lm_loss, 4 dropped_frac, 5 rerouted_frac, then per MoE
// layer l: layer_dropped_frac, load_cv and load_max_mean (see the *_column functions).
int layer_dropped_column(int64_t l) { return 6 + static_cast<int>(l); }
int load_cv_column(const MetricsHistory& h, int64_t l) {
  return 6 + static_cast<int>(h.moe_layers + l);
}
int load_max_mean_column(const MetricsHistory& h, int64_t l) {
  return 6 + static_cast<int>(2 * h.moe_layers + l);
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

std::string steps_table(const MetricsHistory& h) {
  std::ostringstream out;
  out << "# step loss lm_loss dropped_frac rerouted_frac layer_dropped_frac[l] load_cv[l] "
         "load_max_mean[l]\n";
  for (size_t i = 0; i < h.steps.size(); ++i) {
    out << h.steps[i] << ' ' << num(h.loss[i]) << ' ' << num(h.lm_loss[i]) << ' '
        << num(h.dropped_frac[i]) << ' '
        << num(h.rerouted_frac.empty() ? kNaN : h.rerouted_frac[i]);
    for (const auto* series : {&h.layer_dropped_frac, &h.load_cv, &h.load_max_mean})
      for (int64_t l = 0; l < h.moe_layers; ++l) out << ' ' << num(value_at(*series, l, i));
    out << '\n';
  }
  return out.str();
}

std::string eval_table(const MetricsHistory& h) {
  std::ostringstream out;
  out << "# step val_loss choice_accuracy choice_accuracy_norm";
  for (const std::string& file : h.val_files) out << " val_loss/" << file;
  out << '\n';
  for (size_t i = 0; i < h.eval_steps.size(); ++i) {
    out << h.eval_steps[i] << ' ' << num(h.val_loss[i]) << ' ' << num(h.choice_accuracy[i]) << ' '
        << num(h.choice_accuracy_norm[i]);
    for (const std::vector<double>& series : h.val_loss_by_file) out << ' ' << num(series[i]);
    out << '\n';
  }
  return out.str();
}

// The expert loads of one layer as an image: a row per expert, a column per step bin. Bins are
// equally wide so that `with image` can draw them; a bin holds the mean of its rows (one row per
// bin while the steps are evenly logged and fewer than kMaxColumns), NaN (blank) when empty.
constexpr int64_t kMaxColumns = 600;

struct LoadImage {
  std::string matrix;  // rows = experts, columns = bins
  double first_step = 0, bin_width = 1, top = 0;
};

LoadImage load_image(const MetricsHistory& h, int64_t layer) {
  const int64_t rows = static_cast<int64_t>(h.steps.size());
  const int64_t bins = std::min(rows, kMaxColumns);
  LoadImage image;
  image.first_step = static_cast<double>(h.steps.front());
  image.bin_width = static_cast<double>(h.steps.back() - h.steps.front()) / (bins - 1);
  std::vector<std::vector<double>> sum(h.experts, std::vector<double>(bins, 0.0));
  std::vector<std::vector<int64_t>> count(h.experts, std::vector<int64_t>(bins, 0));
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t bin = std::llround((h.steps[i] - image.first_step) / image.bin_width);
    for (int64_t e = 0; e < h.experts; ++e) {
      const double load = h.expert_load[layer][i][e];
      if (!std::isfinite(load)) continue;
      sum[e][bin] += load;
      ++count[e][bin];
    }
  }
  std::ostringstream out;
  for (int64_t e = 0; e < h.experts; ++e) {
    for (int64_t b = 0; b < bins; ++b) {
      const double mean = count[e][b] ? sum[e][b] / count[e][b] : kNaN;
      if (std::isfinite(mean)) image.top = std::max(image.top, mean);
      out << (b ? " " : "") << num(mean);
    }
    out << '\n';
  }
  image.matrix = out.str();
  return image;
}

// What every chart's script starts with. Line type l+1 is MoE layer l's colour in every chart:
// the tab10 colours without their gray, which (with black) marks the totals.
std::string preamble(const fs::path& png, int width, int height) {
  std::string script = "set terminal pngcairo size " + std::to_string(width) + "," +
                       std::to_string(height) + " noenhanced font 'Sans,11'\n" + "set output " +
                       gp_quote(png.string()) + "\n";
  const char* colours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                           "#8c564b", "#e377c2", "#bcbd22", "#17becf"};
  for (int i = 0; i < 9; ++i)
    script += "set linetype " + std::to_string(i + 1) + " lc rgb '" + colours[i] + "'\n";
  return script +
         "set linetype cycle 9\n"
         "set datafile missing 'NaN'\n"
         "set grid\n"
         "set xlabel 'step'\n";
}

std::string xrange(double first, double last) {
  if (first == last) first -= 1, last += 1;
  return "set xrange [" + num(first) + ":" + num(last) + "]\n";
}

std::string steps_xrange(const MetricsHistory& h) {
  return xrange(static_cast<double>(h.steps.front()), static_cast<double>(h.steps.back()));
}

// A y range from `low` to a little above the largest value (or to `empty_top` when all are low).
std::string yrange(double low, double top, double empty_top) {
  const double high = top > low ? low + (top - low) * 1.08 : empty_top;
  return "set yrange [" + num(low) + ":" + num(high) + "]\n";
}

std::string key_placement(int64_t series) {
  return series > 6 ? "set key outside right top\n" : "set key top right\n";
}

std::string join_plots(const std::vector<std::string>& plots) {
  std::string out = "plot ";
  for (size_t i = 0; i < plots.size(); ++i) out += (i ? ", \\\n     " : "") + plots[i];
  return out + "\n";
}

struct Chart {
  std::string file;    // the PNG's name
  std::string script;  // everything after the preamble; empty: skipped
  std::string why_skipped;
  int width = 900, height = 500;
};

Chart skipped(const std::string& file, const std::string& why) {
  Chart chart;
  chart.file = file;
  chart.why_skipped = why;
  return chart;
}

Chart loss_chart(const MetricsHistory& h, const fs::path& dir, const std::string& name) {
  const std::string steps = gp_quote((dir / "steps.dat").string());
  const std::string style = h.steps.size() > 1 ? "lines" : "points pt 7";
  std::vector<std::string> plots;
  if (has_finite(h.loss))
    plots.push_back(steps + " using 1:2 with " + style +
                    " lw 2 lc rgb '#1f77b4' title 'loss (total)'");
  if (has_finite(h.lm_loss))
    plots.push_back(steps + " using 1:3 with " + style +
                    " lw 1.5 dt 2 lc rgb '#ff7f0e' title 'lm_loss'");
  if (has_finite(h.val_loss))
    plots.push_back(
        gp_quote((dir / "eval.dat").string()) +
        " using 1:2 with linespoints pt 7 ps 1.2 lw 1.5 lc rgb '#d62728' title 'val_loss'");
  static constexpr const char* kFileColours[] = {"#2ca02c", "#9467bd", "#8c564b",
                                                 "#e377c2", "#17becf", "#bcbd22"};
  for (size_t j = 0; j < h.val_files.size(); ++j)  // a mixture's other files
    if (has_finite(h.val_loss_by_file[j]))
      plots.push_back(gp_quote((dir / "eval.dat").string()) + " using 1:" + std::to_string(5 + j) +
                      " with linespoints pt 5 ps 1 lw 1.2 lc rgb '" +
                      kFileColours[j % std::size(kFileColours)] + "' title " +
                      gp_quote("val_loss/" + h.val_files[j]));
  if (plots.empty()) return skipped("loss.png", "no finite loss, lm_loss or val_loss");
  double first = static_cast<double>(h.steps.front()), last = static_cast<double>(h.steps.back());
  if (!h.eval_steps.empty()) {
    first = std::min(first, static_cast<double>(h.eval_steps.front()));
    last = std::max(last, static_cast<double>(h.eval_steps.back()));
  }
  Chart chart;
  chart.file = "loss.png";
  chart.script = "set title " + gp_quote(name + ": loss") + "\n" +
                 "set ylabel 'loss (nats per token)'\n" + xrange(first, last) +
                 "set key top right\n" + join_plots(plots);
  return chart;
}

Chart expert_load_chart(const MetricsHistory& h, int64_t layer, const fs::path& dir,
                        const std::string& name) {
  const std::string file = "expert_load_layer" + std::to_string(layer) + ".png";
  if (h.experts < 2) return skipped(file, "fewer than 2 experts");
  if (h.steps.size() < 2) return skipped(file, "fewer than 2 step lines");
  const LoadImage image = load_image(h, layer);
  const fs::path data = dir / ("load_layer" + std::to_string(layer) + ".dat");
  write_file(data, image.matrix);
  const double half = image.bin_width / 2;
  const double last = static_cast<double>(h.steps.back());  // the last bin's centre
  char title[200];
  std::snprintf(title, sizeof title,
                ": expert load, MoE layer %lld (fraction of the layer's assignments; uniform = "
                "1/%lld = %.3g)",
                static_cast<long long>(layer), static_cast<long long>(h.experts), 1.0 / h.experts);
  Chart chart;
  chart.file = file;
  chart.script = "set title " + gp_quote(name + title) + "\n" + "set ylabel 'expert'\n" +
                 xrange(image.first_step - half, last + half) +
                 "set yrange [-0.5:" + std::to_string(h.experts) + "-0.5]\n" +
                 (h.experts <= 16 ? "set ytics 1\n" : "") +
                 "set cbrange [0:" + num(image.top > 0 ? image.top : 1.0) + "]\n" +
                 "set cblabel 'load fraction'\n"
                 // viridis: dark for starved experts, yellow for the busiest
                 "set palette defined (0 '#440154', 0.25 '#3b528b', 0.5 '#21918c', 0.75 '#5ec962', "
                 "1 '#fde725')\n"
                 "unset grid\n"
                 "set tics out\n"
                 "set rmargin at screen 0.84\n" +  // room for the colour box and its label
                 "plot " +
                 gp_quote(data.string()) + " matrix using (" + num(image.first_step) + " + $1 * " +
                 num(image.bin_width) + "):2:3 with image notitle\n";
  return chart;
}

// eval.questions' accuracies against the step (eval.dat's columns 3 and 4).
Chart accuracy_chart(const MetricsHistory& h, const fs::path& dir, const std::string& name) {
  if (!has_finite(h.choice_accuracy))
    return skipped("accuracy.png", "no choice_accuracy (the run has no eval.questions)");
  const std::string evals = gp_quote((dir / "eval.dat").string());
  Chart chart;
  chart.file = "accuracy.png";
  chart.script =
      "set title " + gp_quote(name + ": multiple-choice accuracy") + "\n" +
      "set ylabel 'accuracy'\n" +
      xrange(static_cast<double>(h.eval_steps.front()), static_cast<double>(h.eval_steps.back())) +
      "set key bottom right\n" +
      join_plots({evals + " using 1:3 with linespoints pt 7 ps 1.2 lw 1.5 lc rgb "
                          "'#1f77b4' title 'choice_accuracy'",
                  evals + " using 1:4 with linespoints pt 5 ps 1 lw 1.2 dt 2 lc rgb "
                          "'#ff7f0e' title 'choice_accuracy_norm'"});
  return chart;
}

Chart dropped_chart(const MetricsHistory& h, const fs::path& dir, const std::string& name) {
  if (h.moe_layers == 0) return skipped("dropped.png", "no MoE layers (expert_load is empty)");
  const std::string steps = gp_quote((dir / "steps.dat").string());
  std::vector<std::string> plots;
  std::vector<std::vector<double>> drawn;
  if (has_finite(h.dropped_frac)) {
    plots.push_back(
        steps +
        " using 1:(100*$4) with lines lw 2.5 lc rgb 'black' title 'dropped, all MoE layers'");
    drawn.push_back(h.dropped_frac);
  }
  for (int64_t l = 0; l < static_cast<int64_t>(h.layer_dropped_frac.size()); ++l) {
    if (!has_finite(h.layer_dropped_frac[l])) continue;
    plots.push_back(steps + " using 1:(100*$" + std::to_string(layer_dropped_column(l)) +
                    ") with lines lw 1.5 lt " + std::to_string(l + 1) +
                    " title 'dropped, MoE layer " + std::to_string(l) + "'");
    drawn.push_back(h.layer_dropped_frac[l]);
  }
  // Every step line carries rerouted_frac, 0 unless moe.overflow is reroute: a line only where
  // some step rerouted.
  const bool rerouted = max_finite({h.rerouted_frac}) > 0.0;
  if (rerouted) {
    plots.push_back(
        steps +
        " using 1:(100*$5) with lines lw 2 dt 2 lc rgb '#7f7f7f' title 'rerouted, all MoE layers'");
    drawn.push_back(h.rerouted_frac);
  }
  if (plots.empty()) return skipped("dropped.png", "no finite dropped_frac");
  // A dropless run (or one that never reached capacity) would draw a flat line at 0%: no chart.
  if (max_finite(drawn) == 0.0)
    return skipped("dropped.png",
                   "every dropped and rerouted fraction is 0 (no assignment went over capacity)");
  Chart chart;
  chart.file = "dropped.png";
  chart.script =
      "set title " +
      gp_quote(name + (rerouted ? ": assignments over expert capacity, dropped or rerouted"
                                : ": assignments dropped at expert capacity")) +
      "\n" + "set ylabel '% of assignments'\n" + steps_xrange(h) +
      yrange(0, 100 * max_finite(drawn), 1) + key_placement(plots.size()) + join_plots(plots);
  return chart;
}

// One panel of balance.png: a line per MoE layer of `series`, from `column_of(l)` of steps.dat.
template <class ColumnOf>
std::string balance_panel(const std::vector<std::vector<double>>& series, ColumnOf column_of,
                          const std::string& title, const std::string& ylabel, double low,
                          const fs::path& dir) {
  const std::string steps = gp_quote((dir / "steps.dat").string());
  std::vector<std::string> plots;
  for (int64_t l = 0; l < static_cast<int64_t>(series.size()); ++l)
    if (has_finite(series[l]))
      plots.push_back(steps + " using 1:" + std::to_string(column_of(l)) +
                      " with lines lw 1.5 lt " + std::to_string(l + 1) + " title 'MoE layer " +
                      std::to_string(l) + "'");
  if (plots.empty()) return "";
  return "set title " + gp_quote(title) + "\n" + "set ylabel " + gp_quote(ylabel) + "\n" +
         yrange(low, max_finite(series), low + 1) + key_placement(plots.size()) + join_plots(plots);
}

Chart balance_chart(const MetricsHistory& h, const fs::path& dir, const std::string& name) {
  if (h.moe_layers == 0) return skipped("balance.png", "no MoE layers (expert_load is empty)");
  if (h.load_cv.empty() && h.load_max_mean.empty())
    return skipped("balance.png", "no load_cv or load_max_mean (the file predates them)");
  std::vector<std::string> panels;
  const std::string cv = balance_panel(
      h.load_cv, [&](int64_t l) { return load_cv_column(h, l); },
      "coefficient of variation of expert load (0 = balanced)", "load CV", 0.0, dir);
  const std::string max_mean = balance_panel(
      h.load_max_mean, [&](int64_t l) { return load_max_mean_column(h, l); },
      "busiest expert's load / mean load (1 = balanced)", "max / mean", 1.0, dir);
  for (const std::string& panel : {cv, max_mean})
    if (!panel.empty()) panels.push_back(panel);
  if (panels.empty()) return skipped("balance.png", "no finite load_cv or load_max_mean");
  Chart chart;
  chart.file = "balance.png";
  chart.height = panels.size() > 1 ? 700 : 500;
  chart.script = steps_xrange(h) + "set multiplot layout " + std::to_string(panels.size()) +
                 ",1 title " + gp_quote(name + ": expert load balance per MoE layer") + "\n";
  for (const std::string& panel : panels) chart.script += panel;
  chart.script += "unset multiplot\n";
  return chart;
}

// config.yaml's `name` when the run dir has one, else the run folder's name. A config.yaml that
// cannot be read only costs the title: said on stderr, and the folder's name is used.
std::string run_name(const std::string& run_dir) {
  const fs::path config_path = fs::path(run_dir) / "config.yaml";
  std::error_code error;
  if (fs::exists(config_path, error)) {
    try {
      const YAML::Node config = YAML::LoadFile(config_path.string());
      const YAML::Node name = config["name"];
      if (name.IsDefined() && name.IsScalar() && !name.Scalar().empty()) return name.Scalar();
    } catch (const YAML::Exception& problem) {
      std::fprintf(stderr, "note: %s: cannot read the run's name (%s): the charts are titled by "
                   "the folder's name\n", config_path.c_str(), problem.what());
    }
  }
  fs::path path = fs::path(run_dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();  // "runs/x/"
  if (path.filename().empty() || path.filename() == "." || path.filename() == "..")
    path = fs::absolute(path).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

// `what`, then gnuplot's last line of output (its error message) when it wrote one.
std::string with_gnuplot_output(const std::string& what, const fs::path& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line))
    if (!blank(line)) last = line;
  return last.empty() ? what : what + ": " + last;
}

bool is_png(const fs::path& path) {
  static const char kSignature[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  std::ifstream in(path, std::ios::binary);
  char head[8] = {};
  return in.read(head, 8) && std::memcmp(head, kSignature, 8) == 0;
}

// plot_runs: each run's history, its name in the legend, and its data file.
struct ComparedRun {
  MetricsHistory history;
  std::string name;
  std::string steps, evals;  // gnuplot-quoted paths: "# step lm_loss tokens_per_s", eval.dat
};

// One line per run that has a finite value of the column, coloured by the run's index.
Chart comparison_chart(const std::vector<ComparedRun>& runs, const std::string& file,
                       const std::string& what, const std::string& ylabel,
                       const std::vector<double> MetricsHistory::*series, bool evals, int column) {
  std::vector<std::string> plots;
  double first = 0, last = 0;
  bool any = false;
  for (size_t r = 0; r < runs.size(); ++r) {
    const MetricsHistory& h = runs[r].history;
    if (!has_finite(h.*series)) continue;
    const std::vector<int64_t>& steps = evals ? h.eval_steps : h.steps;
    first = any ? std::min(first, static_cast<double>(steps.front())) : steps.front();
    last = any ? std::max(last, static_cast<double>(steps.back())) : steps.back();
    any = true;
    const std::string style = evals ? "linespoints pt 7 ps 1" : "lines";
    plots.push_back((evals ? runs[r].evals : runs[r].steps) + " using 1:" + std::to_string(column) +
                    " with " + style + " lw 1.5 lt " + std::to_string(r % 9 + 1) + " title " +
                    gp_quote(runs[r].name));
  }
  if (plots.empty()) return skipped(file, "no run has a finite " + what);
  Chart chart;
  chart.file = file;
  chart.script = "set title " + gp_quote(what + ", " + std::to_string(runs.size()) + " runs") +
                 "\n" + "set ylabel " + gp_quote(ylabel) + "\n" + xrange(first, last) +
                 key_placement(static_cast<int64_t>(plots.size())) + join_plots(plots);
  return chart;
}

// Runs gnuplot on the chart's script in `dir`, then copies the PNG to output_dir. Returns its path.
std::string render(const std::string& gnuplot, const Chart& chart, const fs::path& dir,
                   const fs::path& output_dir) {
  const fs::path png = dir / chart.file;
  const fs::path script = dir / (chart.file + ".gp");
  const fs::path log = dir / (chart.file + ".log");
  write_file(script, preamble(png, chart.width, chart.height) + chart.script);
  const std::string command = shell_quote(gnuplot) + " " + shell_quote(script.string()) + " >" +
                              shell_quote(log.string()) + " 2>&1";
  const int status = std::system(command.c_str());
  if (status == -1)
    throw std::runtime_error("cannot run gnuplot: " + std::string(std::strerror(errno)));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(with_gnuplot_output(
        "gnuplot failed on " + chart.file + " (status " +
            std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : status) + ")",
        log));
  if (!is_png(png))
    throw std::runtime_error(with_gnuplot_output("gnuplot wrote no PNG for " + chart.file, log));
  const fs::path target = output_dir / chart.file;
  std::error_code error;
  fs::copy_file(png, target, fs::copy_options::overwrite_existing, error);
  if (error) throw std::runtime_error(target.string() + ": cannot write: " + error.message());
  return target.string();
}

}  // namespace

MetricsHistory read_metrics_history(const std::string& path) {
  MetricsRecords records = read_metrics(path);
  if (records.steps.empty())
    throw std::runtime_error(path + ": no step lines" +
                             (records.lines == 0 ? " (the file is empty)" : ""));
  return assemble(std::move(records));
}

std::string find_gnuplot() {
  const char* env = std::getenv("PATH");
  const std::string search = env ? env : "/usr/bin:/bin";
  size_t begin = 0;
  while (begin <= search.size()) {
    size_t end = search.find(':', begin);
    if (end == std::string::npos) end = search.size();
    const std::string dir = end > begin ? search.substr(begin, end - begin) : ".";
    const fs::path candidate = fs::path(dir) / "gnuplot";
    std::error_code error;
    if (fs::is_regular_file(candidate, error) && access(candidate.c_str(), X_OK) == 0)
      return candidate.string();
    begin = end + 1;
  }
  return "";
}

namespace {

std::string gnuplot_or_throw() {
  const std::string gnuplot = find_gnuplot();
  if (gnuplot.empty())
    throw std::runtime_error(
        "gnuplot not found on PATH: install the Debian package gnuplot-nox "
        "(launch/setup.sh installs it)");
  return gnuplot;
}

void create_output(const fs::path& out) {
  std::error_code error;
  fs::create_directories(out, error);
  if (error) throw std::runtime_error(out.string() + ": cannot create: " + error.message());
}

PlotResult render_all(const std::string& gnuplot, const std::vector<Chart>& charts,
                      const fs::path& dir, const fs::path& out) {
  PlotResult result;
  for (const Chart& chart : charts) {
    if (chart.script.empty()) result.skipped.push_back(chart.file + ": " + chart.why_skipped);
    else result.written.push_back(render(gnuplot, chart, dir, out));
  }
  return result;
}

}  // namespace

PlotResult plot_run(const std::string& run_dir, const std::string& output_dir) {
  const MetricsHistory history =
      read_metrics_history((fs::path(run_dir) / "metrics.jsonl").string());
  const std::string gnuplot = gnuplot_or_throw();
  const fs::path out = output_dir.empty() ? fs::path(run_dir) : fs::path(output_dir);
  create_output(out);

  TempDir temp;
  write_file(temp.path / "steps.dat", steps_table(history));
  write_file(temp.path / "eval.dat", eval_table(history));
  const std::string name = run_name(run_dir);
  std::vector<Chart> charts;
  charts.push_back(loss_chart(history, temp.path, name));
  charts.push_back(accuracy_chart(history, temp.path, name));
  if (history.expert_load.empty())
    charts.push_back(skipped("expert_load_layer<l>.png", "no MoE layers (expert_load is empty)"));
  for (int64_t l = 0; l < static_cast<int64_t>(history.expert_load.size()); ++l)
    charts.push_back(expert_load_chart(history, l, temp.path, name));
  charts.push_back(dropped_chart(history, temp.path, name));
  charts.push_back(balance_chart(history, temp.path, name));
  return render_all(gnuplot, charts, temp.path, out);
}

PlotResult plot_runs(const std::vector<std::string>& run_dirs, const std::string& output_dir) {
  if (run_dirs.size() < 2) throw std::runtime_error("plot_runs: needs two runs or more");
  TempDir temp;
  std::vector<ComparedRun> runs;
  for (size_t r = 0; r < run_dirs.size(); ++r) {
    ComparedRun run{read_metrics_history((fs::path(run_dirs[r]) / "metrics.jsonl").string()),
                    run_name(run_dirs[r]),
                    {},
                    {}};
    const fs::path steps = temp.path / ("run" + std::to_string(r) + "_steps.dat");
    const fs::path evals = temp.path / ("run" + std::to_string(r) + "_eval.dat");
    std::ostringstream table;
    table << "# step lm_loss tokens_per_s\n";
    for (size_t i = 0; i < run.history.steps.size(); ++i)
      table << run.history.steps[i] << ' ' << num(run.history.lm_loss[i]) << ' '
            << num(run.history.tokens_per_s[i]) << '\n';
    write_file(steps, table.str());
    write_file(evals, eval_table(run.history));
    run.steps = gp_quote(steps.string());
    run.evals = gp_quote(evals.string());
    runs.push_back(std::move(run));
  }
  std::vector<std::string> names;
  for (const ComparedRun& run : runs) names.push_back(run.name);
  for (size_t r = 0; r < runs.size(); ++r)  // two runs of one name: the folders as given
    if (std::count(names.begin(), names.end(), names[r]) > 1) runs[r].name = run_dirs[r];
  const std::string gnuplot = gnuplot_or_throw();
  create_output(output_dir);
  const std::vector<Chart> charts = {
      comparison_chart(runs, "compare_val_loss.png", "val_loss", "loss (nats per token)",
                       &MetricsHistory::val_loss, true, 2),
      comparison_chart(runs, "compare_lm_loss.png", "lm_loss", "loss (nats per token)",
                       &MetricsHistory::lm_loss, false, 2),
      comparison_chart(runs, "compare_tokens_per_s.png", "tokens_per_s", "tokens per second",
                       &MetricsHistory::tokens_per_s, false, 3),
      comparison_chart(runs, "compare_choice_accuracy.png", "choice_accuracy", "accuracy",
                       &MetricsHistory::choice_accuracy, true, 3)};
  return render_all(gnuplot, charts, temp.path, output_dir);
}

}  // namespace sy
