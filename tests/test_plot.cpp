// switchyard plot: metrics.jsonl parses into the right series (nulls, optional keys, resumed runs,
// dense models), bad files fail with "<path>:<line>: ...", and the charts come out as real PNGs.
// The rendering tests skip when gnuplot is not installed (launch/setup.sh installs gnuplot-nox).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

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
       {"loss", "expert_load_layer0", "expert_load_layer1", "dropped", "balance"})
    expected.push_back((out.path / "charts" / (std::string(name) + ".png")).string());
  ASSERT_EQ(result.written, expected);
  for (const std::string& png : result.written) {
    ASSERT_TRUE(fs::exists(png)) << png;
    EXPECT_TRUE(starts_with_png_signature(png)) << png;
    EXPECT_GT(fs::file_size(png), 5000u) << png << " looks blank";
    EXPECT_EQ(png_size(png).first, 900u) << png;
  }
  EXPECT_EQ(png_size(expected[0]).second, 500u);
  EXPECT_EQ(png_size(expected[4]).second, 700u) << "balance.png has two panels";
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
  ASSERT_EQ(old.skipped.size(), 2u);
  // Its lines all wrote dropped_frac 0: a flat chart at 0% says nothing.
  EXPECT_EQ(old.skipped[0].rfind("dropped.png: every dropped and rerouted fraction is 0", 0), 0u)
      << old.skipped[0];
  EXPECT_EQ(old.skipped[1].rfind("balance.png: ", 0), 0u) << old.skipped[1];

  dense.write("metrics.jsonl", old_step_line(1, "[]") + old_step_line(2, "[]"));
  const PlotResult result = plot_run(dense.path.string());
  EXPECT_EQ(result.written, std::vector<std::string>{(dense.path / "loss.png").string()});
  EXPECT_EQ(result.skipped.size(), 3u);  // expert load, dropped, balance
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
