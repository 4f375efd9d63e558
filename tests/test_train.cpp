// A short end-to-end training run on a synthetic corpus: the loss falls, metrics.jsonl holds the
// promised fields, and two runs with the same seed agree bit for bit.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/config.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class TrainTest : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("sy_train_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
    // A learnable byte stream: a few repeated sentences.
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "the quick brown fox jumps over the lazy dog. "
                              "a mixture of experts routes each token to a few of its experts. ",
                              60, 95);
  }
  void TearDown() override { fs::remove_all(dir); }

  Config config() const {
    Config c = test::tiny_moe(32);
    c.moe.capacity_factor = 1.25;
    c.train.micro_batch_size = 4;
    c.train.grad_accum_steps = 2;
    c.train.steps = 40;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 5;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 20;
    c.eval.batches = 2;
    c.run.dir = (dir / "run").string();
    c.run.log_every = 5;
    return c;
  }
};

double mean(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return sum / (end - begin);
}

TEST_F(TrainTest, LossFallsAndMetricsAreWritten) {
  const TrainSummary summary = train(config(), {.print = false});
  ASSERT_EQ(summary.losses.size(), 40u);
  const double first = mean(summary.losses, 0, 5), last = mean(summary.losses, 35, 40);
  EXPECT_LT(last, first - 1.0) << "first " << first << " last " << last;
  EXPECT_LT(summary.final_val_loss, 4.0);

  std::ifstream metrics(dir / "run" / "metrics.jsonl");
  std::string line;
  int steps = 0, evals = 0;
  while (std::getline(metrics, line)) {
    if (line.find("\"val_loss\"") != std::string::npos) {
      ++evals;
      continue;
    }
    ++steps;
    for (const char* key : {"\"step\"", "\"loss\"", "\"lm_loss\"", "\"aux_loss\"", "\"z_loss\"",
                            "\"lr\"", "\"grad_norm\"", "\"tokens_per_s\"", "\"dropped_frac\"",
                            "\"expert_load\""})
      EXPECT_NE(line.find(key), std::string::npos) << key << " missing in " << line;
  }
  EXPECT_EQ(steps, 8);
  EXPECT_EQ(evals, 2);
  EXPECT_TRUE(fs::exists(dir / "run" / "config.yaml"));
  // The saved config is the resolved one: loading it gives the same run.
  const Config reloaded = load_config((dir / "run" / "config.yaml").string());
  EXPECT_EQ(reloaded.train.steps, 40);
  EXPECT_EQ(reloaded.moe.capacity_factor, 1.25);
}

TEST_F(TrainTest, SameSeedSameLosses) {
  Config c = config();
  c.train.steps = 6;
  c.eval.batches = 0;
  const TrainSummary a = train(c, {.print = false});
  const TrainSummary b = train(c, {.print = false});
  EXPECT_EQ(a.losses, b.losses);  // bit for bit
  c.seed += 1;
  const TrainSummary other = train(c, {.print = false});
  EXPECT_NE(a.losses, other.losses);
}

TEST_F(TrainTest, DenseModelTrains) {
  Config c = config();
  c.moe.num_experts = 0;
  c.train.steps = 20;
  const TrainSummary summary = train(c, {.print = false});
  EXPECT_LT(mean(summary.losses, 15, 20), mean(summary.losses, 0, 5) - 0.5);
}

}  // namespace
}  // namespace sy
