// The validation set is a property of the data (docs/config.md, eval): a run's logged val_loss
// equals `eval` of its checkpoint at another micro_batch_size and rank count, bitwise (and within
// 1e-6 at another parallel.expert_parallel). Runs under mpirun -np 2; each layout runs on the first W ranks, as in test_dist_train.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/sampler.h"
#include "data/token_file.h"
#include "tests/dist_harness.h"
#include "trainer/checkpoint.h"
#include "trainer/evaluate.h"
#include "trainer/metrics.h"
#include "trainer/session.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using test::DistTrain;
using test::world_rank;
using test::world_size;

// The loss `eval` would print for `checkpoint` under `config`, on the first W ranks (rank 0's
// value; others return NaN).
double eval_on(int W, const Config& config, const std::string& checkpoint) {
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < W ? 0 : MPI_UNDEFINED, world_rank(), &sub);
  double loss = std::nan("");
  if (sub != MPI_COMM_NULL) {
    {
      ModelSession session = make_model_session(config, sub);
      load_checkpoint(checkpoint, config, *session.model, nullptr, session.groups,
                      *session.backend);
      const TokenData data = read_token_file(config.data.path);
      const Validation validation = evaluate(*session.model, ValidationSet{data.val, {}, false, {}},
                                             eval_sequences(config), *session.groups.world);
      EXPECT_EQ(validation.sequences, eval_sequences(config));
      if (world_rank() == 0) loss = validation.loss;
    }
    MPI_Comm_free(&sub);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return loss;
}

// The value of "key" on the last line of metrics.jsonl that has it, as written.
std::string last_logged(const fs::path& metrics, const std::string& key) {
  std::ifstream in(metrics);
  std::string line, value;
  const std::string quoted = "\"" + key + "\":";
  while (std::getline(in, line)) {
    const size_t at = line.find(quoted);
    if (at == std::string::npos) continue;
    const size_t begin = line.find_first_not_of(' ', at + quoted.size());
    value = line.substr(begin, line.find_first_of(",}", begin) - begin);
  }
  return value;
}

TEST_F(DistTrain, LoggedValLossEqualsEvalAtAnyBatchShapeAndLayout) {
  if (world_size() < 2) GTEST_SKIP() << "needs mpirun -np 2";
  Config c = base_config();
  c.moe.capacity_factor = 1.0;  // with drops: the routing groups must be the same ones too
  c.parallel.expert_parallel = 1;
  c.train.micro_batch_size = 2;
  c.train.steps = 6;
  c.eval.every = 0;
  c.eval.batches = -1;
  c.eval.tokens = 21 * 16 + 5;  // 21 sequences of 16: rounded down, and uneven over 2 ranks
  c.run.dir = (dir / "validation_run").string();
  const TrainSummary summary = train_on(2, c);

  std::string logged_text;
  if (world_rank() == 0) {
    logged_text = last_logged(fs::path(c.run.dir) / "metrics.jsonl", "val_loss");
    ASSERT_FALSE(logged_text.empty());
    EXPECT_EQ(std::strtod(logged_text.c_str(), nullptr), summary.final_val_loss);
    const std::string bits = last_logged(fs::path(c.run.dir) / "metrics.jsonl", "val_bits_per_byte");
    EXPECT_NEAR(std::strtod(bits.c_str(), nullptr), summary.final_val_loss / std::log(2.0), 1e-12);
    EXPECT_EQ(last_logged(fs::path(c.run.dir) / "metrics.jsonl", "val_tokens"), "336");
  }
  const std::string checkpoint = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(6)).string();

  // Another micro-batch size and another rank count: bitwise, so also to the last printed digit.
  struct Shape { int W; int64_t P, micro_batch, grad_accum; };
  for (const Shape shape : {Shape{1, 1, 5, 1}, Shape{2, 1, 3, 1}, Shape{1, 1, 1, 4}}) {
    Config other = c;
    other.parallel.expert_parallel = shape.P;
    other.train.micro_batch_size = shape.micro_batch;
    other.train.grad_accum_steps = shape.grad_accum;
    const double evaluated = eval_on(shape.W, other, checkpoint);
    if (world_rank() == 0) {
      EXPECT_EQ(evaluated, summary.final_val_loss)
          << "W=" << shape.W << " P=" << shape.P << " micro_batch=" << shape.micro_batch;
      // The same text as eval prints and metrics.jsonl holds (one JSON writer for both).
      EXPECT_EQ(JsonLine().add("val_loss", evaluated).str(),
                "{\"val_loss\": " + logged_text + "}");
    }
  }
  // Another expert-parallel size: an expert's GEMM then runs on the rows of 2 sequences at once,
  // and BLAS may add a row's products in another order for another row count (docs/config.md).
  Config split = c;
  split.parallel.expert_parallel = 2;
  split.train.micro_batch_size = 1;
  const double evaluated = eval_on(2, split, checkpoint);
  if (world_rank() == 0) {
    EXPECT_NEAR(evaluated, summary.final_val_loss, 1e-6 * summary.final_val_loss);
  }
}

TEST(ValidationSet, TooLittleDataSaysWhatWouldFit) {
  EXPECT_EQ(validation_fit_problem(10, 4096, 4118),
            "eval.tokens 40960 needs 10 sequences of 4096 tokens; the validation split has 4118 "
            "tokens: at most 1 sequence; set eval.tokens <= 4096");
  EXPECT_EQ(validation_fit_problem(1, 4096, 4097), "");   // one sequence and its last target
  EXPECT_NE(validation_fit_problem(1, 4096, 4096), "");
  EXPECT_EQ(validation_fit_problem(0, 4096, 0), "");
  EXPECT_NE(validation_fit_problem(1, 16, 10).find("at most 0 sequences; set eval.tokens: 0"),
            std::string::npos);
}

TEST(ValidationSet, TokensRoundDownAndTheDeprecatedBatchesKeepTheirSequences) {
  Config c;
  c.model.seq_len = 128;
  c.train.micro_batch_size = 8;
  c.eval.tokens = 1000;
  EXPECT_EQ(eval_sequences(c), 7);  // 896 tokens
  c.eval.tokens = EvalConfig{}.tokens;
  c.eval.batches = 20;  // the old key: 20 batches of 8 sequences
  EXPECT_EQ(eval_sequences(c), 160);
  c.eval.batches = 0;
  EXPECT_EQ(eval_sequences(c), 0);
  EXPECT_TRUE(validate_config(c).empty());
  c.eval.batches = 2;
  c.eval.tokens = 4096;  // both: which one was meant?
  const std::vector<std::string> problems = validate_config(c);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("eval.batches: is the deprecated form of eval.tokens; give only "
                             "eval.tokens (2 batches of 8 x 128 are eval.tokens 2048)"),
            std::string::npos)
      << problems[0];
  // The resolved config names the alias only where it was given.
  Config plain;
  EXPECT_EQ(config_to_yaml(plain).find("batches:"), std::string::npos);
  EXPECT_NE(config_to_yaml(plain).find("tokens: 40960"), std::string::npos);
  plain.eval.batches = 3;
  EXPECT_NE(config_to_yaml(plain).find("batches: 3"), std::string::npos);
}

TEST(LayoutNotes, SayWhenALayoutChangeChangesTheNumbers) {
  Config moe;
  moe.moe.num_experts = 8;
  moe.train.micro_batch_size = 8;
  moe.train.grad_accum_steps = 4;
  std::vector<std::string> notes = layout_notes(moe);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("same micro_batch_size and the same global batch"), std::string::npos);
  EXPECT_NE(notes[0].find("grad_accum_steps 2"), std::string::npos) << notes[0];
  moe.moe.aux_loss_scope = AuxLossScope::global;
  EXPECT_EQ(layout_notes(moe).size(), 2u);
  Config dense;
  dense.moe.num_experts = 0;
  EXPECT_TRUE(layout_notes(dense).empty());
}

TEST(ValidationSet, LossInUnits) {
  const LossInUnits bytes = loss_in_units(std::log(2.0) * 1.5, "bytes");
  EXPECT_EQ(bytes.name, "bits_per_byte");
  EXPECT_DOUBLE_EQ(bytes.value, 1.5);
  const LossInUnits other = loss_in_units(std::log(20.0), "gpt2");
  EXPECT_EQ(other.name, "perplexity");
  EXPECT_DOUBLE_EQ(other.value, 20.0);
}

}  // namespace
}  // namespace sy
