// Training on a mixture of token files (data.train_paths, docs/data.md): a mixture whose weight
// is all on one file trains exactly as that file alone; a file whose tokenizer differs from
// data.path's is refused by name; a real two-file mixture trains and logs its sources.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/token_file.h"
#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/config.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class MixtureTest : public ::testing::Test {
 protected:
  static inline fs::path dir;

  static void SetUpTestSuite() {
    dir = fs::temp_directory_path() / ("sy_mixture_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_repeated_text((dir / "prose.h5").string(),
                              "the router picks two experts for every token, and the load "
                              "balancing loss keeps them busy. ",
                              40, 90);
    test::write_repeated_text((dir / "code.h5").string(),
                              "for (int e = 0; e < experts; ++e) load[e] += count[e]; ", 40, 90);
    // The same bytes under another tokenizer's name: not mixable with the others.
    const TokenData prose = read_token_file((dir / "prose.h5").string());
    write_token_file((dir / "other.h5").string(), prose.train, prose.val, 256, "uniform");
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static Config config(const std::string& run) {
    Config c = test::tiny_moe(16);
    c.seed = 5;
    c.train.micro_batch_size = 2;
    c.train.steps = 6;
    c.train.warmup_steps = 2;
    c.data.path = (dir / "prose.h5").string();
    c.eval.every = 0;
    c.eval.tokens = 64;
    c.checkpoint.every = 0;
    c.checkpoint.at_end = false;
    c.run.dir = (dir / run).string();
    return c;
  }
};

TEST_F(MixtureTest, AllWeightOnOneFileIsThatFileAlone) {
  Config plain = config("code_alone");
  plain.data.path = (dir / "code.h5").string();
  const TrainSummary alone = train(plain, {.print = false});
  Config mixed = config("code_in_mixture");  // validation on prose, training on code only
  mixed.data.train_paths = {(dir / "prose.h5").string(), (dir / "code.h5").string()};
  mixed.data.train_weights = {0.0, 2.0};
  const TrainSummary mixture = train(mixed, {.print = false});
  ASSERT_EQ(mixture.losses.size(), alone.losses.size());
  for (size_t i = 0; i < alone.losses.size(); ++i)
    EXPECT_EQ(mixture.losses[i], alone.losses[i]) << "step " << i + 1;
}

// The value of `key` in the last line of a run's metrics.jsonl that has it.
double last_logged(const fs::path& run_dir, const std::string& key) {
  std::ifstream in(run_dir / "metrics.jsonl");
  double value = std::nan("");
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("\"" + key + "\": ");
    if (at != std::string::npos) value = std::stod(line.substr(at + key.size() + 4));
  }
  return value;
}

// Each file of a mixture other than data.path gets its own validation loss, "val_loss/<name>":
// swapping which file is data.path (the training batches stay the same) swaps the two losses,
// to the bit.
TEST_F(MixtureTest, EveryFileHasItsValidationLoss) {
  Config one = config("val_prose");
  one.data.train_paths = {(dir / "prose.h5").string(), (dir / "code.h5").string()};
  one.data.train_weights = {1.0, 1.0};
  const TrainSummary a = train(one, {.print = false});
  Config other = one;
  other.data.path = (dir / "code.h5").string();
  other.run.dir = (dir / "val_code").string();
  const TrainSummary b = train(other, {.print = false});
  ASSERT_EQ(a.losses, b.losses);  // the same batches
  EXPECT_EQ(last_logged(dir / "val_prose", "val_loss/code"), b.final_val_loss);
  EXPECT_EQ(last_logged(dir / "val_code", "val_loss/prose"), a.final_val_loss);
  EXPECT_TRUE(std::isnan(last_logged(dir / "val_prose", "val_loss/prose")));  // data.path's own
  Config respelled = one;  // data.path's file by another name is still data.path's
  respelled.data.train_paths[0] = (dir / "." / "prose.h5").string();
  respelled.run.dir = (dir / "val_respelled").string();
  EXPECT_EQ(train(respelled, {.print = false}).losses, a.losses);
  EXPECT_TRUE(std::isnan(last_logged(dir / "val_respelled", "val_loss/prose")));

  // A file whose /val is shorter than the validation set trains, without a loss of its own.
  const TokenData code = read_token_file((dir / "code.h5").string());
  write_token_file((dir / "short.h5").string(), code.train,
                   {code.val.begin(), code.val.begin() + 9}, 256, "bytes");
  one.data.train_paths.push_back((dir / "short.h5").string());
  one.data.train_weights.push_back(1.0);
  one.run.dir = (dir / "val_short").string();
  EXPECT_EQ(train(one, {.print = false}).losses.size(), 6u);
  EXPECT_FALSE(std::isnan(last_logged(dir / "val_short", "val_loss/code")));
  EXPECT_TRUE(std::isnan(last_logged(dir / "val_short", "val_loss/short")));
}

TEST_F(MixtureTest, TwoFilesTrainAndAnotherTokenizerIsRefused) {
  Config mixed = config("both");
  mixed.data.train_paths = {(dir / "prose.h5").string(), (dir / "code.h5").string()};
  const TrainSummary both = train(mixed, {.print = false});  // weights by size
  EXPECT_EQ(both.losses.size(), 6u);
  Config plain = config("prose_alone");
  const TrainSummary prose = train(plain, {.print = false});
  EXPECT_NE(both.losses.back(), prose.losses.back());  // the code file's sequences took part

  mixed.run.dir = (dir / "refused").string();
  mixed.data.train_paths.push_back((dir / "other.h5").string());
  try {
    train(mixed, {.print = false});
    FAIL() << "a mixture with another tokenizer trained";
  } catch (const std::runtime_error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("other.h5 (data.train_paths): its tokenizer (uniform) is not "
                           "data.path's (bytes"),
              std::string::npos)
        << message;
  }
}

}  // namespace
}  // namespace sy
