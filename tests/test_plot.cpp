// metrics.jsonl and switchyard plot: what MetricsLog writes reads back bit for bit (read_metrics),
// a resume cuts the file back to its checkpoint's step, the file parses into the right series
// (nulls, optional keys, resumed runs, dense models), bad files fail with "<path>:<line>: ...",
// and the charts come out as real PNGs. The rendering tests skip when gnuplot is not installed
// (launch/setup.sh installs gnuplot-nox).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "trainer/metrics.h"
#include "trainer/plot.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

const char* kFixture = "tests/data/metrics_fixture.jsonl";  // 30 steps, 2 MoE layers x 4 experts

// A fresh folder under the system's temporary folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "test_plot-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

// The message of the std::runtime_error that `f` throws ("" when it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}

// A step line as trainers before the balance statistics wrote it.
std::string old_step_line(int step, const std::string& expert_load) {
  return "{\"step\": " + std::to_string(step) + ", \"loss\": " + std::to_string(5.0 - 0.1 * step) +
         ", \"lm_loss\": 4.5, \"aux_loss\": 0.01, \"z_loss\": 0.001, \"lr\": 0.0003, "
         "\"grad_norm\": 1.2, \"tokens_per_s\": 40000, \"dropped_frac\": 0, \"expert_load\": " +
         expert_load + ", \"peak_memory_bytes\": 0}\n";
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Equal as bits: NaN equals NaN, 0.0 differs from -0.0.
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(Metrics, JsonLineLaysOutNlohmannText) {
  EXPECT_EQ(JsonLine()
                .add("step", int64_t{3})
                .add("x", std::vector<std::vector<double>>{{0.5, 0.25}, {}})
                .add("y", std::vector<double>{})
                .str(),
            "{\"step\": 3, \"x\": [[0.5, 0.25], []], \"y\": []}")
      << "a space after every ',' and ':', as scripts grep";
  EXPECT_EQ(JsonLine().add("a\"b\\c\n\x01", std::string("\t")).str(),
            "{\"a\\\"b\\\\c\\n\\u0001\": \"\\t\"}");
  EXPECT_EQ(JsonLine().add("name", std::string("caf\xe9")).str(), "{\"name\": \"caf\xef\xbf\xbd\"}")
      << "invalid UTF-8 is replaced, not refused";
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(JsonLine().add("n", std::nan("")).add("i", -inf).add("v", std::vector<double>{inf}).str(),
            "{\"n\": null, \"i\": null, \"v\": [null]}");
  EXPECT_EQ(JsonLine().add_fixed("s", 2.5, 3).add_fixed("t", 0.0004, 3).str(),
            "{\"s\": 2.500, \"t\": 0.000}");
  for (double x : {0.1, 1.0 / 3.0, 2.718281828459045, 1e-300, 5e-324, -123456.789, 1e300,
                   0.00011999999999999999, -0.0, 40000.0}) {
    const std::string line = JsonLine().add("x", x).str();
    const double back = std::strtod(line.c_str() + 6, nullptr);  // after {"x": 
    EXPECT_TRUE(same_bits(back, x)) << line;
  }
}

// Every field MetricsLog writes comes back from read_metrics with the same bits.
TEST(Metrics, WrittenRecordsReadBackExactly) {
  TempDir dir;
  const std::string path = (dir.path / "metrics.jsonl").string();
  StepMetrics first;
  first.step = 1;
  first.loss = 1.0 / 3.0;
  first.lm_loss = 0.1 + 0.2;
  first.aux_loss = 5e-324;  // the smallest denormal
  first.z_loss = -0.0;
  first.lr = 0.00011999999999999999;
  first.grad_norm = std::nan("");  // written as null, read as NaN
  first.tokens_per_s = 123456.789;
  first.dropped_frac = 0.0;
  first.rerouted_frac = 2.0 / 7.0;
  first.expert_load = {{0.125, 0.375, 0.5}, {1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0}};
  first.load_cv = {0.4714045207910317, 1e-17};
  first.load_max_mean = {1.5, 1.0000000000000002};
  first.layer_dropped_frac = {0.0, 0.015625};
  first.router_entropy = {1.0397207708399179, 1.0986122886681098};
  first.expert_bias = {{-1e-3, 0.0, 1e-3}, {0.1, -0.2, 0.30000000000000004}};
  first.eta_s = 99.0;  // the console's, not the file's
  first.peak_memory_bytes = (int64_t{1} << 53) - 1;
  StepMetrics dense;  // no MoE layer, no bias balancing
  dense.step = 2;
  dense.loss = 1e300;
  {
    MetricsLog log(path);
    log.write_step(first);
    log.write_eval(1, 2.718281828459045, "bits_per_byte", 2.718281828459045 / std::log(2.0), 336);
    log.write_step(dense);
    log.write_eval(2, std::numeric_limits<double>::infinity());
  }
  const std::vector<std::string> lines = read_lines(path);
  ASSERT_EQ(lines.size(), 4u);
  for (const std::string& line : lines) {
    EXPECT_EQ(line.rfind("{\"step\": ", 0), 0u) << line;
    EXPECT_NE(line.find(", \"time\": \""), std::string::npos) << line;
    EXPECT_NE(line.find("Z\", \"elapsed_s\": "), std::string::npos) << line;
    const size_t point = line.rfind('.');
    EXPECT_EQ(line.size() - point, 5u) << "elapsed_s has 3 decimals: " << line;
  }

  const MetricsRecords records = read_metrics(path);
  EXPECT_EQ(records.lines, 4);
  EXPECT_EQ(records.moe_layers, 2);
  EXPECT_EQ(records.experts, 3);
  ASSERT_EQ(records.steps.size(), 2u);
  const StepRecord& r = records.steps[0];
  EXPECT_EQ(r.step, 1);
  for (const auto& [read, written] : std::vector<std::pair<double, double>>{
           {r.loss, first.loss},
           {r.lm_loss, first.lm_loss},
           {r.aux_loss, first.aux_loss},
           {r.z_loss, first.z_loss},
           {r.lr, first.lr},
           {r.grad_norm, first.grad_norm},
           {r.tokens_per_s, first.tokens_per_s},
           {r.dropped_frac, first.dropped_frac},
           {r.rerouted_frac, first.rerouted_frac},
           {r.peak_memory_bytes, static_cast<double>(first.peak_memory_bytes)}})
    EXPECT_TRUE(same_bits(read, written)) << read << " read back for " << written;
  EXPECT_TRUE(r.has_rerouted_frac);
  EXPECT_EQ(r.expert_load, first.expert_load);
  EXPECT_EQ(r.expert_bias, first.expert_bias);
  EXPECT_EQ(r.load_cv, first.load_cv);
  EXPECT_EQ(r.load_max_mean, first.load_max_mean);
  EXPECT_EQ(r.layer_dropped_frac, first.layer_dropped_frac);
  EXPECT_EQ(r.router_entropy, first.router_entropy);

  const StepRecord& d = records.steps[1];
  EXPECT_EQ(d.step, 2);
  EXPECT_EQ(d.loss, 1e300);
  EXPECT_TRUE(d.expert_load.empty() && d.expert_bias.empty() && d.load_cv.empty());

  ASSERT_EQ(records.evals.size(), 2u);
  EXPECT_EQ(records.evals[0].step, 1);
  EXPECT_EQ(records.evals[0].val_loss, 2.718281828459045);
  EXPECT_EQ(records.evals[0].val_tokens, 336);
  EXPECT_EQ(records.evals[1].step, 2);
  EXPECT_TRUE(std::isnan(records.evals[1].val_loss)) << "a diverged eval is written as null";
  EXPECT_EQ(records.evals[1].val_tokens, -1);
}

TEST(Metrics, AResumeCutsTheFileBackToItsStep) {
  TempDir dir;
  const std::string path = dir.write(
      "metrics.jsonl", old_step_line(1, "[]") + old_step_line(2, "[]") +
                           "{\"step\": 2, \"val_loss\": 4.75}\n" + old_step_line(3, "[]") +
                           old_step_line(4, "[]") + "{\"step\": 4, \"lo");  // torn by a crash
  const std::vector<std::string> before = read_lines(path);
  const std::vector<std::string> notes = truncate_metrics_after(path, 2);
  EXPECT_EQ(read_lines(path), std::vector<std::string>(before.begin(), before.begin() + 3))
      << "the lines up to step 2, as written";
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0].rfind(path + ":6: malformed JSON", 0), 0u) << notes[0];
  EXPECT_NE(notes[0].find("dropped"), std::string::npos) << notes[0];
  EXPECT_TRUE(truncate_metrics_after(path, 2).empty());
  EXPECT_TRUE(truncate_metrics_after((dir.path / "none.jsonl").string(), 2).empty());
  EXPECT_FALSE(fs::exists(dir.path / "none.jsonl"));
}

TEST(Plot, ParsesTheFixture) {
  const MetricsHistory h = read_metrics_history(kFixture);
  ASSERT_EQ(h.steps.size(), 30u);
  EXPECT_EQ(h.steps.front(), 10);
  EXPECT_EQ(h.steps.back(), 300);
  EXPECT_DOUBLE_EQ(h.loss[0], 5.0363816848783802);
  EXPECT_DOUBLE_EQ(h.lm_loss[0], 5.0209911752214138);
  EXPECT_DOUBLE_EQ(h.lr[1], 0.00011999999999999999);
  EXPECT_TRUE(std::isnan(h.grad_norm[12])) << "step 130 wrote grad_norm null";
  EXPECT_TRUE(std::isfinite(h.grad_norm[11]));
  EXPECT_EQ(h.moe_layers, 2);
  EXPECT_EQ(h.experts, 4);
  ASSERT_EQ(h.expert_load.size(), 2u);
  ASSERT_EQ(h.expert_load[1].size(), 30u);
  ASSERT_EQ(h.expert_load[1][0].size(), 4u);
  EXPECT_DOUBLE_EQ(h.expert_load[1][0][1], 0.45899280841219381);
  double sum = 0;
  for (double load : h.expert_load[0][29]) sum += load;
  EXPECT_NEAR(sum, 1.0, 1e-12) << "an expert_load row is a distribution";
  EXPECT_EQ(h.rerouted_frac.size(), 30u);
  EXPECT_DOUBLE_EQ(h.rerouted_frac[0], 0.069510584674687667);
  for (const auto* series :
       {&h.load_cv, &h.load_max_mean, &h.layer_dropped_frac, &h.router_entropy}) {
    ASSERT_EQ(series->size(), 2u);
    EXPECT_EQ((*series)[0].size(), 30u);
  }
  EXPECT_DOUBLE_EQ(h.load_max_mean[1][0], 1.8359712336487752);
  EXPECT_DOUBLE_EQ(h.layer_dropped_frac[0][0], 0.085209140503431757);
  ASSERT_EQ(h.expert_bias.size(), 2u);
  EXPECT_DOUBLE_EQ(h.expert_bias[0][0][3], 0.0059231964260005009);
  ASSERT_EQ(h.eval_steps, (std::vector<int64_t>{100, 200, 300}));
  EXPECT_DOUBLE_EQ(h.val_loss[0], 2.8633804949139803);
  EXPECT_EQ(h.choice_accuracy, (std::vector<double>{0.25, 0.375, 0.4375}));
  EXPECT_EQ(h.choice_accuracy_norm, (std::vector<double>{0.3125, 0.375, 0.5}));
}

TEST(Plot, OlderFilesLackTheBalanceKeys) {
  TempDir dir;
  const std::string path = dir.write("metrics.jsonl", old_step_line(1, "[[0.5, 0.5]]") +
                                                          "\n" +  // a blank line is ignored
                                                          old_step_line(2, "[[0.75, 0.25]]"));
  const MetricsHistory h = read_metrics_history(path);
  ASSERT_EQ(h.steps, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(h.moe_layers, 1);
  EXPECT_EQ(h.experts, 2);
  EXPECT_TRUE(h.rerouted_frac.empty());
  EXPECT_TRUE(h.load_cv.empty());
  EXPECT_TRUE(h.load_max_mean.empty());
  EXPECT_TRUE(h.layer_dropped_frac.empty());
  EXPECT_TRUE(h.expert_bias.empty());
  EXPECT_TRUE(h.eval_steps.empty());
  EXPECT_DOUBLE_EQ(h.expert_load[0][1][0], 0.75);
}

bool starts_with_png_signature(const std::string& path);

// A mixture's per-file validation losses (data.train_paths): MetricsLog writes them, the history
// holds one series per file (NaN where a line lacks it), and the loss chart draws each.
TEST(Plot, ReadsAMixturesPerFileValidationLosses) {
  TempDir dir;
  const std::string path = (dir.path / "metrics.jsonl").string();
  {
    MetricsLog log(path);
    StepMetrics step;
    step.step = 1;
    step.loss = 3.0;
    log.write_step(step);
    log.write_eval(1, 2.5, "bits_per_byte", 2.5 / std::log(2.0), 64, {{"val_loss/code", 2.25}});
    step.step = 2;
    log.write_step(step);
    log.write_eval(2, 2.0, "bits_per_byte", 2.0 / std::log(2.0), 64,
                   {{"val_loss/web", 1.75}, {"val_loss/code", 1.5}});
  }
  const MetricsHistory h = read_metrics_history(path);
  ASSERT_EQ(h.val_files, (std::vector<std::string>{"code", "web"}));
  EXPECT_EQ(h.val_loss_by_file[0], (std::vector<double>{2.25, 1.5}));
  EXPECT_TRUE(std::isnan(h.val_loss_by_file[1][0]));
  EXPECT_EQ(h.val_loss_by_file[1][1], 1.75);
  if (find_gnuplot().empty())
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  dir.write("config.yaml", "name: mixture\nseed: 1\n");
  TempDir out;
  const PlotResult result = plot_run(dir.path.string(), out.path.string());
  ASSERT_FALSE(result.written.empty());
  EXPECT_EQ(result.written.front(), (out.path / "loss.png").string());
  EXPECT_TRUE(starts_with_png_signature(result.written.front()));
}

TEST(Plot, AResumedRunKeepsTheLaterLineOfARepeatedStep) {
  TempDir dir;
  // Logged to step 3, resumed from a checkpoint at step 1: steps 2 and 3 come again.
  const std::string path = dir.write(
      "metrics.jsonl", old_step_line(1, "[]") + old_step_line(2, "[]") + old_step_line(3, "[]") +
                           "{\"step\": 2, \"loss\": 9.5}\n" + old_step_line(3, "[]"));
  const MetricsHistory h = read_metrics_history(path);
  ASSERT_EQ(h.steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(h.loss[1], 9.5);
  EXPECT_TRUE(std::isnan(h.lm_loss[1])) << "a key the line lacks is NaN";
  EXPECT_EQ(h.moe_layers, 0) << "a dense model writes expert_load []";
}

TEST(Plot, AMalformedLineNamesTheFileAndLine) {
  TempDir dir;
  const std::string good = old_step_line(1, "[[0.5, 0.5]]");
  const auto error_at_line_3 = [&](const std::string& bad_line) {
    const std::string path = dir.write("metrics.jsonl", good + good + bad_line + "\n" + good);
    return error_of([&] { read_metrics_history(path); });
  };
  const std::string prefix = (dir.path / "metrics.jsonl").string() + ":3: ";
  const std::string truncated = good.substr(0, 40);  // a crash in the middle of a write
  EXPECT_EQ(error_at_line_3(truncated).rfind(prefix + "malformed JSON", 0), 0u)
      << error_at_line_3(truncated);
  EXPECT_EQ(error_at_line_3("[1, 2]"), prefix + "expected a JSON object, got a list");
  EXPECT_EQ(error_at_line_3("{\"loss\": 1.0}"), prefix + "no \"step\" key");
  EXPECT_EQ(error_at_line_3("{\"step\": 1.5, \"loss\": 1.0}"),
            prefix + "step: expected a non-negative integer, got '1.5'");
  EXPECT_EQ(error_at_line_3("{\"step\": 3, \"loss\": \"low\"}"),
            prefix + "loss: expected a number or null, got 'low'");
  EXPECT_EQ(error_at_line_3("{\"step\": 3, \"loss\": \"1.5\"}"),
            prefix + "loss: expected a number or null, got '1.5'")
      << "a quoted number is a JSON string";
  EXPECT_EQ(error_at_line_3("{\"step\": 3, \"lr\": 0.1}"),
            prefix + "neither \"loss\" (a step line) nor \"val_loss\" (an eval line)");
  EXPECT_EQ(error_at_line_3(old_step_line(3, "[[0.5, true]]")),
            prefix + "expert_load[0][1]: expected a number or null, got 'true'");
  EXPECT_EQ(error_at_line_3(old_step_line(3, "[[0.5, 0.5], [0.5, 0.5]]")),
            prefix + "expert_load has 2 MoE layers, line 1 had 1");
  EXPECT_EQ(error_at_line_3(old_step_line(3, "[[0.2, 0.3, 0.5]]")),
            prefix + "expert_load[0] has 3 experts, line 1 had 2");
}

TEST(Plot, AMissingOrEmptyFileNamesIt) {
  TempDir dir;
  const std::string missing = (dir.path / "nope" / "metrics.jsonl").string();
  EXPECT_EQ(error_of([&] { read_metrics_history(missing); }),
            missing + ": cannot open: No such file or directory");
  EXPECT_EQ(error_of([&] { plot_run((dir.path / "nope").string()); }),
            missing + ": cannot open: No such file or directory");
  const std::string empty = dir.write("metrics.jsonl", "");
  EXPECT_EQ(error_of([&] { read_metrics_history(empty); }),
            empty + ": no step lines (the file is empty)");
  const std::string evals_only = dir.write("evals.jsonl", "{\"step\": 10, \"val_loss\": 2.5}\n");
  EXPECT_EQ(error_of([&] { read_metrics_history(evals_only); }), evals_only + ": no step lines");
}

// The PNG's width and height, from its IHDR chunk (big-endian, bytes 16 to 23).
std::pair<uint32_t, uint32_t> png_size(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char head[24] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto be32 = [&](int at) {
    return uint32_t(head[at]) << 24 | uint32_t(head[at + 1]) << 16 | uint32_t(head[at + 2]) << 8 |
           uint32_t(head[at + 3]);
  };
  return {be32(16), be32(20)};
}

bool starts_with_png_signature(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(8, '\0');
  in.read(head.data(), 8);
  return head == std::string("\x89PNG\r\n\x1a\n", 8);
}

TEST(Plot, DrawsEveryChartOfTheFixture) {
  if (find_gnuplot().empty())
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  TempDir run, out;
  fs::copy_file(kFixture, run.path / "metrics.jsonl");
  run.write("config.yaml", "name: fixture-moe\nseed: 1\n");
  const PlotResult result = plot_run(run.path.string(), (out.path / "charts").string());
  EXPECT_TRUE(result.skipped.empty()) << result.skipped.front();
  std::vector<std::string> expected;
  for (const char* name :
       {"loss", "accuracy", "expert_load_layer0", "expert_load_layer1", "dropped", "balance"})
    expected.push_back((out.path / "charts" / (std::string(name) + ".png")).string());
  ASSERT_EQ(result.written, expected);
  for (const std::string& png : result.written) {
    ASSERT_TRUE(fs::exists(png)) << png;
    EXPECT_TRUE(starts_with_png_signature(png)) << png;
    EXPECT_GT(fs::file_size(png), 5000u) << png << " looks blank";
    EXPECT_EQ(png_size(png).first, 900u) << png;
  }
  EXPECT_EQ(png_size(expected[0]).second, 500u);
  EXPECT_EQ(png_size(expected[5]).second, 700u) << "balance.png has two panels";
  EXPECT_FALSE(fs::exists(run.path / "loss.png")) << "--output puts the charts elsewhere";
}

TEST(Plot, SkipsTheChartsWhoseDataIsAbsent) {
  if (find_gnuplot().empty())
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  TempDir moe, dense;
  moe.write("metrics.jsonl", old_step_line(1, "[[0.5, 0.5]]") + old_step_line(2, "[[0.75, 0.25]]") +
                                 "{\"step\": 2, \"val_loss\": 4.75}\n");
  const PlotResult old = plot_run(moe.path.string());
  EXPECT_EQ(old.written, (std::vector<std::string>{(moe.path / "loss.png").string(),
                                                   (moe.path / "expert_load_layer0.png").string()}));
  ASSERT_EQ(old.skipped.size(), 3u);
  EXPECT_EQ(old.skipped[0], "accuracy.png: no choice_accuracy (the run has no eval.questions)");
  // Its lines all wrote dropped_frac 0: a flat chart at 0% says nothing.
  EXPECT_EQ(old.skipped[1].rfind("dropped.png: every dropped and rerouted fraction is 0", 0), 0u)
      << old.skipped[1];
  EXPECT_EQ(old.skipped[2].rfind("balance.png: ", 0), 0u) << old.skipped[2];

  dense.write("metrics.jsonl", old_step_line(1, "[]") + old_step_line(2, "[]"));
  const PlotResult result = plot_run(dense.path.string());
  EXPECT_EQ(result.written, std::vector<std::string>{(dense.path / "loss.png").string()});
  EXPECT_EQ(result.skipped.size(), 4u);  // accuracy, expert load, dropped, balance
}

TEST(Plot, KeepsTheDroppedChartWhenAnyStepDropped) {
  if (find_gnuplot().empty())
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  TempDir run;
  std::string second = old_step_line(2, "[[0.75, 0.25]]");
  const std::string no_drops = "\"dropped_frac\": 0,";
  second.replace(second.find(no_drops), no_drops.size(), "\"dropped_frac\": 0.01,");
  run.write("metrics.jsonl", old_step_line(1, "[[0.5, 0.5]]") + second);
  const PlotResult result = plot_run(run.path.string());
  EXPECT_EQ(result.written, (std::vector<std::string>{(run.path / "loss.png").string(),
                                                      (run.path / "expert_load_layer0.png").string(),
                                                      (run.path / "dropped.png").string()}));
}

// Several runs side by side (plot_runs): a line per run on each comparison chart, named by the
// run (the folders as given where two names are the same), and a chart no run has data for
// skipped.
TEST(Plot, ComparesRunsSideBySide) {
  TempDir moe, dense, same_name, out;
  moe.write("metrics.jsonl", old_step_line(1, "[[0.5, 0.5]]") + old_step_line(2, "[[0.75, 0.25]]") +
                                 "{\"step\": 2, \"val_loss\": 4.75, \"choice_accuracy\": 0.5, "
                                 "\"choice_accuracy_norm\": 0.25}\n");
  moe.write("config.yaml", "name: moe\nseed: 1\n");
  dense.write("metrics.jsonl", old_step_line(1, "[]") + old_step_line(2, "[]") +
                                   old_step_line(3, "[]") + "{\"step\": 3, \"val_loss\": 4.5}\n");
  dense.write("config.yaml", "name: dense\nseed: 1\n");
  EXPECT_EQ(error_of([&] { plot_runs({moe.path.string()}, out.path.string()); }),
            "plot_runs: needs two runs or more");
  if (find_gnuplot().empty())
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  const fs::path charts = out.path / "compare";
  const PlotResult result = plot_runs({moe.path.string(), dense.path.string()}, charts.string());
  EXPECT_TRUE(result.skipped.empty()) << result.skipped.front();
  std::vector<std::string> expected;
  for (const char* name : {"val_loss", "lm_loss", "tokens_per_s", "choice_accuracy"})
    expected.push_back((charts / ("compare_" + std::string(name) + ".png")).string());
  ASSERT_EQ(result.written, expected);
  for (const std::string& png : result.written) {
    EXPECT_TRUE(starts_with_png_signature(png)) << png;
    EXPECT_EQ(png_size(png), (std::pair<uint32_t, uint32_t>{900, 500})) << png;
  }
  // Without eval lines in either run, the val_loss chart is skipped; two runs of one name draw
  // (their legend shows the folders instead).
  moe.write("metrics.jsonl", old_step_line(1, "[[0.5, 0.5]]"));
  same_name.write("metrics.jsonl", old_step_line(1, "[]"));
  same_name.write("config.yaml", "name: moe\nseed: 1\n");
  const PlotResult without_evals =
      plot_runs({moe.path.string(), same_name.path.string()}, charts.string());
  EXPECT_EQ(without_evals.written.size(), 2u);
  ASSERT_EQ(without_evals.skipped.size(), 2u);
  EXPECT_EQ(without_evals.skipped[0], "compare_val_loss.png: no run has a finite val_loss");
  EXPECT_EQ(without_evals.skipped[1],
            "compare_choice_accuracy.png: no run has a finite choice_accuracy");
}

TEST(Plot, AMissingGnuplotSaysWhatToInstall) {
  TempDir run;
  fs::copy_file(kFixture, run.path / "metrics.jsonl");
  const char* saved = std::getenv("PATH");
  const std::string path = saved ? saved : "";
  setenv("PATH", run.path.c_str(), 1);  // a folder without gnuplot
  const std::string error = error_of([&] { plot_run(run.path.string()); });
  setenv("PATH", path.c_str(), 1);
  EXPECT_NE(error.find("gnuplot-nox"), std::string::npos) << error;
  EXPECT_NE(error.find("launch/setup.sh"), std::string::npos) << error;
}

}  // namespace
}  // namespace sy
