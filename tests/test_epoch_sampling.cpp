// Epoch sampling (data.sampling: epoch, docs/data.md "Epochs"): the keyed permutation is a
// bijection; every window of the split is taken once an epoch, in a new order each epoch, as a
// pure function of (seed, step, sequence); over a mixture, the files are interleaved by weight
// and each walks its own epochs; a run trains and logs its epochs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/mixture_interleave.h"
#include "data/permutation.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "data/token_window.h"
#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/config.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

std::vector<uint64_t> all_of(const KeyedPermutation& p) {
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < p.size(); ++i) out.push_back(p(i));
  return out;
}

TEST(KeyedPermutation, IsABijectionOfEverySize) {
  for (uint64_t n :
       {1ull, 2ull, 3ull, 4ull, 5ull, 17ull, 64ull, 65ull, 255ull, 1000ull, 65537ull}) {
    std::vector<uint64_t> order = all_of(KeyedPermutation(n, 12345));
    std::sort(order.begin(), order.end());
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(order[i], i) << "n = " << n;
  }
}

TEST(KeyedPermutation, DependsOnTheKeyOnly) {
  const std::vector<uint64_t> a = all_of(KeyedPermutation(1000, 1));
  EXPECT_EQ(all_of(KeyedPermutation(1000, 1)), a);
  EXPECT_NE(all_of(KeyedPermutation(1000, 2)), a);
  // Not the identity, nor close to it: few fixed points.
  int64_t fixed = 0;
  for (uint64_t i = 0; i < a.size(); ++i) fixed += a[i] == i;
  EXPECT_LT(fixed, 20);
  EXPECT_THROW(KeyedPermutation(0, 1), std::runtime_error);
  EXPECT_THROW(KeyedPermutation(5, 1)(5), std::logic_error);
}

// N = 1000 tokens, S = 7: W = 142 windows; 5 sequences a step (not a divisor of W), so epochs
// end inside steps.
class EpochSampler : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 1000, kS = 7, kPerStep = 5;
  std::vector<int32_t> tokens = [] {
    std::vector<int32_t> t(kN);
    for (int64_t i = 0; i < kN; ++i) t[i] = static_cast<int32_t>(i % 251);
    return t;
  }();

  StepSampler sampler(uint64_t seed) const {
    StepSampler s(tokens, kS, seed);
    s.sample_epochs(kPerStep);
    return s;
  }
  // The window starts of the run's sequences [first, first + count).
  static std::vector<int64_t> starts(const StepSampler& s, int64_t first, int64_t count) {
    std::vector<int64_t> out;
    for (int64_t q = first; q < first + count; ++q)
      out.push_back(s.offset(q / kPerStep, q % kPerStep));
    return out;
  }
};

TEST_F(EpochSampler, TakesEveryWindowOnceAnEpochInANewOrder) {
  const StepSampler s = sampler(7);
  ASSERT_TRUE(s.samples_epochs());
  const int64_t W = s.epoch_windows();
  ASSERT_EQ(W, (kN - 1) / kS);
  EXPECT_DOUBLE_EQ(s.epochs_after(W), static_cast<double>(kPerStep));
  std::vector<int64_t> every(W);
  for (int64_t k = 0; k < W; ++k) every[k] = k * kS;
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t e = 0; e < 3; ++e) {
    epochs.push_back(starts(s, e * W, W));
    std::vector<int64_t> sorted = epochs.back();
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, every) << "epoch " << e;
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST_F(EpochSampler, IsAPureFunctionOfSeedStepAndSequence) {
  const std::vector<int64_t> a = starts(sampler(7), 0, 400);
  EXPECT_EQ(starts(sampler(7), 0, 400), a);  // another sampler: nothing carried between calls
  EXPECT_NE(starts(sampler(8), 0, 400), a);
  // Asked out of order, the same windows (resuming at any step needs only the step).
  const StepSampler s = sampler(7);
  for (int64_t q = 399; q >= 0; q -= 37) EXPECT_EQ(s.offset(q / kPerStep, q % kPerStep), a[q]);
  EXPECT_THROW(s.offset(0, kPerStep), std::logic_error);  // past the step's sequences
}

TEST_F(EpochSampler, GroupsReadTheirWindows) {
  const StepSampler s = sampler(3);
  const int64_t step = 40, B = 2;  // sequences 2 and 3 of step 40: inside the second epoch
  std::vector<int32_t> inputs(B * kS), targets(B * kS);
  s.group(step, 1, B, inputs.data(), targets.data());
  for (int64_t b = 0; b < B; ++b) {
    const int64_t start = s.offset(step, B + b);
    EXPECT_EQ(start % kS, 0);
    for (int64_t t = 0; t < kS; ++t) {
      EXPECT_EQ(inputs[b * kS + t], tokens[start + t]);
      EXPECT_EQ(targets[b * kS + t], tokens[start + t + 1]);
    }
  }
}

// The interleave's shares are the weights' to the nearest 65536th (largest remainders); each
// period holds exactly those counts, every prefix of it stays within a sequence of its share,
// and the ordinal of a source's n-th sequence is n.
TEST(MixtureInterleave, KeepsTheSharesInEveryPrefix) {
  const std::vector<double> weights = {0.7, 0.2, 0.0, 0.1};
  const MixtureInterleave mix(weights, {"a", "b", "c", "d"});
  constexpr int64_t P = MixtureInterleave::kPeriod;
  EXPECT_EQ(MixtureInterleave::per_period(weights),
            (std::vector<int64_t>{45875, 13107, 0, 6554}));  // 45875.2, 13107.2, 6553.6
  std::vector<int64_t> seen(weights.size(), 0);
  for (int64_t q = 0; q < 2 * P + 1000; ++q) {
    const int64_t j = mix.source(q);
    ASSERT_NE(j, 2) << "a zero weight took sequence " << q;
    ASSERT_EQ(mix.ordinal(q), seen[j]) << "sequence " << q;
    ++seen[j];
    for (size_t k = 0; k < weights.size(); ++k)
      ASSERT_LE(std::abs(static_cast<double>(seen[k]) - mix.share(k) * (q + 1)), 1.0)
          << "source " << k << " after " << q + 1 << " sequences";
    if ((q + 1) % P != 0) continue;
    for (size_t k = 0; k < weights.size(); ++k)
      EXPECT_EQ(seen[k], (q + 1) / P * MixtureInterleave::per_period(weights)[k]);
  }
  EXPECT_DOUBLE_EQ(mix.share(0), 45875.0 / P);
}

TEST(MixtureInterleave, RefusesAShareUnderOneSequenceAPeriodByName) {
  try {
    MixtureInterleave({1.0, 1e-6}, {"big.h5", "tiny.h5"});
    FAIL() << "a weight of 1e-6 got a share";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("tiny.h5"), std::string::npos) << error.what();
  }
}

// A mixture of two splits (1000 and 500 tokens, S 7: 142 and 71 windows), weights 2:1: each
// file's sequences walk its own epochs, every window once an epoch of that file.
TEST_F(EpochSampler, WalksEachFileOfAMixtureThroughItsOwnEpochs) {
  std::vector<int32_t> shorter(500);
  for (int64_t i = 0; i < 500; ++i) shorter[i] = static_cast<int32_t>(1000 + i);
  std::vector<std::shared_ptr<const TokenSource>> sources = {
      std::make_shared<TokensInMemory>(tokens), std::make_shared<TokensInMemory>(shorter)};
  StepSampler s(sources, {2.0, 1.0}, {"a.h5", "b.h5"}, kS, 9);
  s.sample_epochs(kPerStep);
  const int64_t W[2] = {s.epoch_windows(0), s.epoch_windows(1)};
  ASSERT_EQ(W[0], 142);
  ASSERT_EQ(W[1], 71);
  EXPECT_NEAR(s.share(0), 2.0 / 3.0, 1.0 / MixtureInterleave::kPeriod);
  EXPECT_DOUBLE_EQ(s.epochs_after(1, 1), kPerStep * s.share(1) / W[1]);
  // Three epochs of the shorter file, and what the longer one took meanwhile.
  std::vector<int64_t> starts[2];
  std::vector<int32_t> inputs(kS), targets(kS);
  for (int64_t q = 0; static_cast<int64_t>(starts[1].size()) < 3 * W[1]; ++q) {
    s.group(q / kPerStep, q % kPerStep, 1, inputs.data(), targets.data());
    const int64_t j = inputs[0] >= 1000 ? 1 : 0;  // the shorter split's tokens are >= 1000
    const int64_t start = s.offset(q / kPerStep, q % kPerStep);
    EXPECT_EQ(inputs[0], j ? shorter[start] : tokens[start]) << "sequence " << q;
    EXPECT_EQ(s.source(q / kPerStep, q % kPerStep), j) << "sequence " << q;
    starts[j].push_back(start);
  }
  EXPECT_NEAR(static_cast<double>(starts[0].size()), 2.0 * starts[1].size(), 3.0);
  for (int64_t j = 0; j < 2; ++j)
    for (int64_t e = 0; (e + 1) * W[j] <= static_cast<int64_t>(starts[j].size()); ++e) {
      std::vector<int64_t> epoch(starts[j].begin() + e * W[j], starts[j].begin() + (e + 1) * W[j]);
      std::sort(epoch.begin(), epoch.end());
      for (int64_t k = 0; k < W[j]; ++k)
        ASSERT_EQ(epoch[k], k * kS) << "file " << j << ", epoch " << e;
    }
  // A pure function of (seed, step, sequence): another sampler, asked backwards, agrees.
  StepSampler again(sources, {2.0, 1.0}, {"a.h5", "b.h5"}, kS, 9);
  again.sample_epochs(kPerStep);
  for (int64_t q = 300; q >= 0; q -= 7)
    EXPECT_EQ(again.offset(q / kPerStep, q % kPerStep), s.offset(q / kPerStep, q % kPerStep));
}

TEST(EpochSamplingConfig, ValidatesTheKey) {
  Config c;
  c.data.sampling = Sampling::epoch;
  c.data.train_paths = {"a.h5", "b.h5"};
  c.data.train_weights = {1.0, 3.0};
  for (const std::string& problem : validate_config(c, "run.yaml"))
    EXPECT_EQ(problem.find("data.sampling"), std::string::npos) << problem;
  c.data.train_weights = {1.0, 1e-7};  // under one sequence of the interleave's period
  bool named = false;
  for (const std::string& problem : validate_config(c, "run.yaml"))
    named |= problem.find("data.train_weights[1]") != std::string::npos;
  EXPECT_TRUE(named);
  EXPECT_STREQ(to_string(Sampling::epoch), "epoch");
  EXPECT_STREQ(to_string(Sampling::random), "random");
}

// A run: epoch sampling trains, and the first steps differ from random sampling's; the
// epochs taken are logged, per file over a mixture.
TEST(EpochSamplingRun, TrainsAndDiffersFromRandomWindows) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("sy_epoch_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string data = (dir / "prose.h5").string();
  test::write_repeated_text(data, "the router picks two experts for every token. ", 40, 90);
  auto config = [&](Sampling sampling) {
    Config c = test::tiny_moe(16);
    c.seed = 5;
    c.train.micro_batch_size = 2;
    c.train.steps = 4;
    c.train.warmup_steps = 1;
    c.eval.every = 0;
    c.eval.tokens = 0;
    c.checkpoint.dir = "";
    c.checkpoint.every = 0;
    c.checkpoint.at_end = false;
    c.data.path = data;
    c.data.sampling = sampling;
    c.run.dir = (dir / to_string(sampling)).string();
    return c;
  };
  const TrainSummary epoch = train(config(Sampling::epoch), {.print = false});
  const TrainSummary random = train(config(Sampling::random), {.print = false});
  ASSERT_EQ(epoch.losses.size(), 4u);
  EXPECT_NE(epoch.losses, random.losses);
  // metrics.jsonl's last step line: the epochs taken, 4 steps of 2 sequences over the windows.
  const TokenData tokens = read_token_file(data);
  const int64_t seq_len = config(Sampling::epoch).model.seq_len;
  const double windows = static_cast<double>((tokens.train.size() - 1) / seq_len);
  std::ifstream metrics(dir / "epoch" / "metrics.jsonl");
  std::string line, last;
  while (std::getline(metrics, line))
    if (line.find("\"loss\"") != std::string::npos) last = line;
  const size_t at = last.find("\"epoch\": ");
  ASSERT_NE(at, std::string::npos) << last;
  EXPECT_DOUBLE_EQ(std::stod(last.substr(at + 9)), 4 * 2 / windows) << last;

  // A mixture: each file's epochs, logged as epoch/<name>.
  const std::string code = (dir / "code.h5").string();
  test::write_repeated_text(code, "for (int e = 0; e < experts; ++e) load[e] += rows[e]; ", 30, 90);
  Config mixed = config(Sampling::epoch);
  mixed.data.train_paths = {data, code};
  mixed.data.train_weights = {3.0, 1.0};
  mixed.run.dir = (dir / "mixture").string();
  EXPECT_EQ(train(mixed, {.print = false}).losses.size(), 4u);
  std::ifstream mixture_metrics(dir / "mixture" / "metrics.jsonl");
  last.clear();
  while (std::getline(mixture_metrics, line))
    if (line.find("\"loss\"") != std::string::npos) last = line;
  EXPECT_EQ(last.find("\"epoch\": "), std::string::npos) << last;
  const double code_windows =
      static_cast<double>((read_token_file(code).train.size() - 1) / seq_len);
  for (const auto& [key, expected] :
       {std::pair{std::string("\"epoch/prose\": "), 4 * 2 * 0.75 / windows},
        std::pair{std::string("\"epoch/code\": "), 4 * 2 * 0.25 / code_windows}}) {
    const size_t found = last.find(key);
    ASSERT_NE(found, std::string::npos) << key << " in " << last;
    EXPECT_NEAR(std::stod(last.substr(found + key.size())), expected, 1e-9) << last;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sy
