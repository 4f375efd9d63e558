// HDF5 checkpoints on one rank (docs/checkpoint.md, SPEC.md section 6): exact resume (per-step
// losses and final parameters bitwise identical to an uninterrupted run), the file read back
// through the plain HDF5 C API, atomic saves that an interrupted write cannot break, --resume
// auto, and every bad-checkpoint case with its one-line message.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "checkpoint_tamper.h"
#include "parallel/process_groups.h"
#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 public:
  static inline fs::path dir;
  // The uninterrupted reference: 20 steps, checkpoints at 10 and 20.
  static inline TrainSummary straight;

  static void SetUpTestSuite() {
    dir = fs::temp_directory_path() / ("sy_ckpt_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "experts in a mixture each see a share of the tokens; the router "
                              "picks them. the quick brown fox jumps over the lazy dog, again and "
                              "again. ",
                              40, 90);
    Config c = base_config("straight");
    straight = train(c, {.print = false, .collect_parameters = true});
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static Config base_config(const std::string& run) {
    Config c = test::tiny_moe(16);
    c.seed = 11;
    c.moe.layers = MoeLayers::every_nth(2);  // layer 0 dense, layer 1 MoE: both kinds of FFN in the file
    c.train.micro_batch_size = 2;
    c.train.grad_accum_steps = 2;
    c.train.steps = 20;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 3;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 0;
    c.eval.batches = 2;
    c.checkpoint.every = 10;
    c.run.dir = (dir / run).string();
    c.run.log_every = 1;
    return c;
  }
  static std::string straight_checkpoint(int64_t step) {
    return (dir / "straight" / "checkpoints" / checkpoint_file_name(step)).string();
  }
};

// The resumed run's losses are the straight run's from step `from` on, bit for bit, and so are
// its final parameters.
void expect_continues_exactly(const TrainSummary& resumed, const TrainSummary& straight, int64_t from) {
  ASSERT_EQ(resumed.first_step, from);
  ASSERT_EQ(resumed.losses.size(), straight.losses.size() - from);
  for (size_t i = 0; i < resumed.losses.size(); ++i)
    EXPECT_EQ(resumed.losses[i], straight.losses[from + i]) << "step " << from + i + 1;
  ASSERT_EQ(resumed.parameters.size(), straight.parameters.size());
  for (size_t p = 0; p < straight.parameters.size(); ++p) {
    ASSERT_EQ(resumed.parameters[p].first, straight.parameters[p].first);
    EXPECT_TRUE(resumed.parameters[p].second == straight.parameters[p].second)
        << straight.parameters[p].first << " differs after resume";
  }
  EXPECT_EQ(resumed.final_val_loss, straight.final_val_loss);
}

// Trains `c` for 6 steps with a checkpoint every 3, then a fresh run from the step-3 checkpoint
// in a folder of its own, which must repeat the rest exactly. Returns that checkpoint's path, for
// the caller's look at its layout.
std::string expect_exact_resume_from_step_3(Config c) {
  c.train.steps = 6;
  c.checkpoint.every = 3;
  const TrainSummary whole = train(c, {.print = false, .collect_parameters = true});
  const std::string file = (fs::path(c.run.dir) / "checkpoints" / checkpoint_file_name(3)).string();
  c.run.dir += "_resumed";
  const TrainSummary resumed =
      train(c, {.print = false, .collect_parameters = true, .resume = file});
  expect_continues_exactly(resumed, whole, 3);
  return file;
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A metrics line without the fields that depend on wall-clock time.
std::string without_timing(std::string line) {
  const size_t begin = line.find("\"tokens_per_s\"");
  if (begin != std::string::npos) line.erase(begin, line.find(',', begin) + 2 - begin);
  const size_t clock = line.find(", \"time\": ");  // time and elapsed_s end every record
  if (clock != std::string::npos) line.erase(clock, line.rfind('}') - clock);
  return line;
}

TEST_F(CheckpointTest, ExactResumeOnOneRank) {
  ASSERT_EQ(straight.losses.size(), 20u);
  // A new train() call builds a new session, model and optimizer: a new process in all but name.
  // It writes into the straight run's folder: metrics.jsonl is cut back to step 10 and appended.
  const std::vector<std::string> before = read_lines(dir / "straight" / "metrics.jsonl");
  Config c = base_config("straight");
  c.checkpoint.dir = (dir / "resumed_checkpoints").string();
  const TrainSummary resumed =
      train(c, {.print = false, .collect_parameters = true, .resume = straight_checkpoint(10)});
  expect_continues_exactly(resumed, straight, 10);
  EXPECT_EQ(resumed.resumed_from, straight_checkpoint(10));

  const std::vector<std::string> after = read_lines(dir / "straight" / "metrics.jsonl");
  ASSERT_EQ(after.size(), before.size()) << "each step logged once";
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(without_timing(after[i]), without_timing(before[i]));
  // The resumed run's own checkpoint of step 20 holds the same tensors as the straight run's.
  const std::string mine = (dir / "resumed_checkpoints" / checkpoint_file_name(20)).string();
  for (const char* path : {"/model/embedding", "/model/layers/1/moe/experts/w2",
                           "/optimizer/exp_avg_sq/layers/1/moe/router"})
    EXPECT_EQ(tamper::read_floats(mine, path), tamper::read_floats(straight_checkpoint(20), path));
}

TEST_F(CheckpointTest, PlainReaderSeesTheLayout) {
  const std::string file = straight_checkpoint(20);
  EXPECT_EQ(tamper::read_int_attribute(file, "format_version"), 1);
  EXPECT_EQ(tamper::read_int_attribute(file, "step"), 20);
  EXPECT_EQ(tamper::read_int_attribute(file, "optimizer_step"), 20);
  EXPECT_EQ(tamper::read_string_attribute(file, "config"), config_to_yaml(base_config("straight")));
  const std::string provenance = tamper::read_string_attribute(file, "provenance");
  for (const char* key : {"switchyard:", "git_commit:", "hdf5:", "mpi:", "compiler:"})
    EXPECT_NE(provenance.find(key), std::string::npos) << provenance;

  // Every parameter, bit for bit, under /model/<path>; its moments under /optimizer.
  ASSERT_FALSE(straight.parameters.empty());
  for (const auto& [path, values] : straight.parameters) {
    std::vector<hsize_t> shape;
    const std::vector<float> stored = tamper::read_floats(file, "/model/" + path, &shape);
    ASSERT_EQ(stored.size(), values.size()) << path;
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(stored[i], static_cast<float>(values[i])) << path << "[" << i << "]";
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      std::vector<hsize_t> moment_shape;
      tamper::read_floats(file, std::string("/optimizer/") + kind + "/" + path, &moment_shape);
      EXPECT_EQ(moment_shape, shape) << kind << " " << path;
    }
  }
  std::vector<hsize_t> shape;
  tamper::read_floats(file, "/model/layers/1/moe/experts/w1", &shape);
  EXPECT_EQ(shape, (std::vector<hsize_t>{4, 16, 16}));  // [E, D, F_e]
  tamper::read_floats(file, "/model/layers/0/ffn/w2", &shape);
  EXPECT_EQ(shape, (std::vector<hsize_t>{32, 16}));  // [F, D]
  EXPECT_FALSE(tamper::has_link(file, "/model/lm_head"));  // tied
}

TEST_F(CheckpointTest, EveryKeepLastAndLatest) {
  Config c = base_config("keep");
  c.train.steps = 8;
  c.checkpoint.every = 2;
  c.checkpoint.keep_last = 2;
  const TrainSummary summary = train(c, {.print = false});
  const fs::path checkpoints = dir / "keep" / "checkpoints";
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_00000006.h5", "step_00000008.h5"}));
  EXPECT_EQ(read_lines(checkpoints / "latest"), std::vector<std::string>{"step_00000008.h5"});
  EXPECT_EQ(summary.last_checkpoint, (checkpoints / "step_00000008.h5").string());
  EXPECT_EQ(find_latest_checkpoint(checkpoints.string()), (checkpoints / "step_00000008.h5").string());
}

// checkpoint.at_end false: the saves every `every` steps only, none at train.steps.
// Warmup-stable-decay (train.decay_steps): a run planned for 8 steps, resumed from step 4 (still
// in its stable phase) with train.steps raised to 12, is the 12-step run bit for bit; and every
// step logs lr_at of the schedule.
TEST_F(CheckpointTest, WsdRunExtendedOnResumeIsTheLongerRun) {
  Config longer = base_config("wsd_long");
  longer.train.steps = 12;
  longer.train.decay_steps = 3;  // warmup 0..2, the peak 3..8, the decay 9..11
  longer.train.lr_decay = LrDecay::one_minus_sqrt;
  longer.checkpoint.every = 4;
  const TrainSummary whole = train(longer, {.print = false, .collect_parameters = true});
  Config planned = longer;  // the decay would have started at step 5
  planned.train.steps = 8;
  planned.run.dir = (dir / "wsd_planned").string();
  train(planned, {.print = false});
  Config extended = longer;
  extended.run.dir = (dir / "wsd_extended").string();
  const std::string from = (dir / "wsd_planned" / "checkpoints" / checkpoint_file_name(4)).string();
  const TrainSummary resumed =
      train(extended, {.print = false, .collect_parameters = true, .resume = from});
  expect_continues_exactly(resumed, whole, 4);

  const std::vector<std::string> lines = read_lines(dir / "wsd_long" / "metrics.jsonl");
  int64_t logged = 0;
  for (const std::string& line : lines) {
    const size_t step_at = line.find("\"step\": "), lr_at_key = line.find("\"lr\": ");
    if (step_at == std::string::npos || lr_at_key == std::string::npos) continue;
    const int64_t step = std::stoll(line.substr(step_at + 8));  // 1-based
    const double lr = std::stod(line.substr(lr_at_key + 6));
    EXPECT_DOUBLE_EQ(lr, lr_at(lr_schedule(longer.train), step - 1)) << line;
    ++logged;
  }
  EXPECT_EQ(logged, 12);
}

TEST_F(CheckpointTest, AtEndFalseSkipsTheLastSave) {
  Config c = base_config("no_end");
  c.train.steps = 5;
  c.checkpoint.every = 2;
  c.checkpoint.at_end = false;
  const TrainSummary summary = train(c, {.print = false});
  const fs::path checkpoints = dir / "no_end" / "checkpoints";
  EXPECT_EQ(read_lines(checkpoints / "latest"), std::vector<std::string>{"step_00000004.h5"});
  EXPECT_EQ(summary.last_checkpoint, (checkpoints / "step_00000004.h5").string());
  EXPECT_FALSE(fs::exists(checkpoints / "step_00000005.h5"));
}

TEST_F(CheckpointTest, SgdCheckpointsHaveNoMomentsAndResumeExactly) {
  Config c = base_config("sgd");
  c.train.optimizer = OptimizerKind::sgd;
  const std::string file = expect_exact_resume_from_step_3(c);
  EXPECT_FALSE(tamper::has_link(file, "/optimizer"));
}

// A model with shared experts: their tensors go to /model/layers/{l}/moe/shared/ and the resumed
// run repeats the uninterrupted one bit for bit.
TEST_F(CheckpointTest, SharedExpertsResumeExactly) {
  Config c = base_config("shared");
  c.moe.shared_expert_hidden = 12;
  const std::string file = expect_exact_resume_from_step_3(c);
  EXPECT_TRUE(tamper::has_link(file, "/model/layers/1/moe/shared/w2"));
}

// Epoch sampling (data.sampling: epoch): the resumed run's sequences come from the step number
// alone, so it repeats the uninterrupted run bit for bit.
TEST_F(CheckpointTest, EpochSamplingResumesExactly) {
  Config c = base_config("epochs");
  c.data.sampling = Sampling::epoch;
  expect_exact_resume_from_step_3(c);
}

// The same over a mixture: each sequence's file and its place in that file's epochs come from
// the sequence number alone (data/mixture_interleave.h).
TEST_F(CheckpointTest, EpochSamplingOverAMixtureResumesExactly) {
  const std::string code = (dir / "code.h5").string();
  test::write_repeated_text(code, "for (int e = 0; e < experts; ++e) load[e] += rows[e]; ", 12, 90);
  Config c = base_config("mixture_epochs");
  c.data.train_paths = {c.data.path, code};
  c.data.train_weights = {1.0, 1.0};
  c.data.sampling = Sampling::epoch;
  expect_exact_resume_from_step_3(c);
}

// A save interrupted after the temporary file was written and before the rename (the test hook
// throws there, as a crash would stop there) leaves the previous checkpoint in place; `auto`
// picks it, also past a newer garbage step file and a `latest` that names a broken file.
// Grouped-query attention: wk and wv of the key/value heads are saved and resumed like any other;
// another rotary theta and norm epsilon, and QK-norm's gains, too.
TEST_F(CheckpointTest, GroupedQueryAttentionResumesExactly) {
  Config c = base_config("gqa");
  c.model.n_kv_heads = 1;
  c.model.rope_theta = 5e5;
  c.model.norm_eps = 1e-6;
  c.model.qk_norm = QkNorm::full;
  expect_exact_resume_from_step_3(c);
}

// Qwen3's attention: per-head QK-norm on heads wider than D / H.
TEST_F(CheckpointTest, PerHeadQkNormWideHeadsResumeExactly) {
  Config c = base_config("per-head");
  c.model.qk_norm = QkNorm::per_head;
  c.model.head_dim = 2 * c.model.d_model / c.model.n_heads;
  expect_exact_resume_from_step_3(c);
}

TEST_F(CheckpointTest, InterruptedSaveLeavesThePreviousCheckpoint) {
  Config c = base_config("crash");
  c.checkpoint.every = 5;
  const fs::path checkpoints = dir / "crash" / "checkpoints";
  set_checkpoint_test_hook([](const std::string& temporary) {
    if (temporary.find("step_00000015") == std::string::npos) return;
    fs::resize_file(temporary, fs::file_size(temporary) / 2);  // and half-written, for good measure
    throw std::runtime_error("simulated crash before the rename");
  });
  EXPECT_THROW(train(c, {.print = false}), CollectiveError);
  set_checkpoint_test_hook(nullptr);
  EXPECT_TRUE(fs::exists(checkpoints / "step_00000015.h5.tmp"));
  EXPECT_FALSE(fs::exists(checkpoints / "step_00000015.h5"));
  EXPECT_EQ(read_lines(checkpoints / "latest"), std::vector<std::string>{"step_00000010.h5"});
  { std::ofstream(checkpoints / "step_00000030.h5") << "not a checkpoint"; }
  const std::string expected = (checkpoints / "step_00000010.h5").string();
  EXPECT_EQ(find_latest_checkpoint(checkpoints.string()), expected);

  // `latest` names the broken file, or is missing: the newest loadable step file wins.
  { std::ofstream(checkpoints / "latest") << "step_00000030.h5\n"; }
  std::vector<std::string> skipped;
  EXPECT_EQ(find_latest_checkpoint(checkpoints.string(), &skipped), expected);
  ASSERT_FALSE(skipped.empty());
  EXPECT_NE(skipped[0].find("step_00000030.h5: not an HDF5 file"), std::string::npos) << skipped[0];
  fs::remove(checkpoints / "latest");
  EXPECT_EQ(find_latest_checkpoint(checkpoints.string()), expected);

  // Resume auto from there continues the uninterrupted run exactly.
  const TrainSummary resumed = train(c, {.print = false, .collect_parameters = true, .resume = "auto"});
  EXPECT_EQ(resumed.resumed_from, expected);
  expect_continues_exactly(resumed, straight, 10);
  // The completed save cleaned up: the leftover temporary file is gone, `latest` is back.
  EXPECT_FALSE(fs::exists(checkpoints / "step_00000015.h5.tmp"));
  EXPECT_EQ(read_lines(checkpoints / "latest"), std::vector<std::string>{"step_00000020.h5"});
}

TEST_F(CheckpointTest, AutoWithoutCheckpointsStartsFresh) {
  Config c = base_config("fresh");
  c.train.steps = 2;
  c.checkpoint.every = 0;
  const TrainSummary summary = train(c, {.print = false, .resume = "auto"});
  EXPECT_EQ(summary.first_step, 0);
  EXPECT_TRUE(summary.resumed_from.empty());
  ASSERT_FALSE(summary.resume_messages.empty());
  EXPECT_NE(summary.resume_messages.back().find("no checkpoint in"), std::string::npos);
  EXPECT_NE(summary.resume_messages.back().find("starting fresh"), std::string::npos);
  EXPECT_EQ(summary.losses.size(), 2u);
  EXPECT_EQ(summary.losses[0], straight.losses[0]);  // a fresh run is the straight run's start
}

TEST_F(CheckpointTest, ResumeAtTheLastStepHasNothingToTrain) {
  Config c = base_config("done");
  const TrainSummary summary = train(c, {.print = false, .resume = straight_checkpoint(20)});
  EXPECT_EQ(summary.first_step, 20);
  EXPECT_TRUE(summary.losses.empty());
}

// ---- bad checkpoints: one line naming the file and what is wrong, and no training ----------

// Copies the straight run's step-10 checkpoint, damages it, resumes from it, returns the error.
template <class Damage>
std::string resume_error(const std::string& name, Damage&& damage, Config config) {
  const fs::path file = CheckpointTest::dir / (name + ".h5");
  fs::copy_file(CheckpointTest::straight_checkpoint(10), file, fs::copy_options::overwrite_existing);
  damage(file.string());
  config.run.dir = (CheckpointTest::dir / ("bad_" + name)).string();
  try {
    train(config, {.print = false, .resume = file.string()});
  } catch (const CollectiveError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
    EXPECT_EQ(message.rfind(file.string() + ": ", 0), 0u) << "names the file: " << message;
    return message;
  }
  ADD_FAILURE() << name << ": resumed without an error";
  return "";
}

void expect_contains(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
}

TEST_F(CheckpointTest, BadCheckpoints) {
  const Config c = base_config("bad");
  expect_contains(resume_error("truncated", [](const std::string& f) { fs::resize_file(f, fs::file_size(f) / 2); }, c),
                  "cannot open as HDF5 (truncated or corrupted): truncated file");
  expect_contains(resume_error("garbage", [](const std::string& f) {
                    std::ofstream(f, std::ios::trunc) << std::string(4096, 'x');
                  }, c),
                  "not an HDF5 file");
  expect_contains(resume_error("flipped", [](const std::string& f) {
                    tamper::corrupt_tensor(f, "/model/layers/0/attn/wq");
                  }, c),
                  "cannot read /model/layers/0/attn/wq: data error detected by Fletcher32 checksum");
  expect_contains(resume_error("missing_tensor", [](const std::string& f) {
                    tamper::delete_tensor(f, "/model/layers/1/moe/experts/w2");
                  }, c),
                  "missing tensor /model/layers/1/moe/experts/w2");
  expect_contains(resume_error("missing_moment", [](const std::string& f) {
                    tamper::delete_tensor(f, "/optimizer/exp_avg/layers/0/ffn/w1");
                  }, c),
                  "missing tensor /optimizer/exp_avg/layers/0/ffn/w1");
  expect_contains(resume_error("shape", [](const std::string& f) {
                    tamper::reshape_tensor(f, "/model/layers/0/attn/wq", {16, 8});
                  }, c),
                  "/model/layers/0/attn/wq has shape [16, 8], the config needs [16, 16]");
  expect_contains(resume_error("future", [](const std::string& f) {
                    tamper::set_int_attribute(f, "format_version", 2);
                  }, c),
                  "format_version 2 is newer than this build reads (1)");
  Config wider = c;
  wider.model.d_model = 32;
  wider.moe.routing.top_k = 1;
  wider.moe.aux_loss_coef = 0.1;  // may change: not in the error
  const std::string message = resume_error("model_keys", [](const std::string&) {}, wider);
  expect_contains(message, "keys that shape the model: model.d_model (checkpoint 16, config 32), "
                           "moe.top_k (checkpoint 2, config 1)");
  EXPECT_EQ(message.find("aux_loss_coef"), std::string::npos) << message;
  // A missing file, and a folder.
  Config fresh = c;
  fresh.run.dir = (dir / "bad_missing").string();
  try {
    train(fresh, {.print = false, .resume = (dir / "nothing.h5").string()});
    ADD_FAILURE() << "no error for a missing file";
  } catch (const CollectiveError& error) {
    EXPECT_EQ(std::string(error.what()), (dir / "nothing.h5").string() + ": no such file");
  }
}

TEST_F(CheckpointTest, TrainingKeysAreReportedNotRefused) {
  Config c = base_config("notes");
  c.train.lr = 5e-3;
  c.train.micro_batch_size = 4;
  c.parallel.expert_parallel = 1;
  c.train.steps = 12;
  const TrainSummary summary = train(c, {.print = false, .resume = straight_checkpoint(10)});
  EXPECT_EQ(summary.first_step, 10);
  EXPECT_EQ(summary.losses.size(), 2u);
  std::string all;
  for (const std::string& line : summary.resume_messages) all += line + "\n";
  expect_contains(all, "note: changed since the checkpoint: train.lr (checkpoint 0.01, config 0.005)");
  expect_contains(all, "note: changed since the checkpoint: train.steps (checkpoint 20, config 12)");
  expect_contains(all, "warning: changed since the checkpoint: train.micro_batch_size (checkpoint 2, config 4)");
}

// ---- checkpoint.init_from: a new run from another run's weights -----------------------------

// A run initialised from the straight run's last checkpoint starts at its own step 0 with those
// weights: at a learning rate too small to move them it ends where the straight run ended, and
// its first loss is that model's on the first batch, below the fresh model's.
TEST_F(CheckpointTest, InitFromTakesTheWeightsAndStartsAtStepZero) {
  Config c = base_config("init");
  c.checkpoint.init_from = (dir / "straight").string();  // a run folder: its newest checkpoint
  c.train.steps = 3;
  c.train.optimizer = OptimizerKind::sgd;
  c.train.lr = 1e-30;
  c.train.min_lr = 0;
  const TrainSummary init = train(c, {.print = false, .collect_parameters = true});
  EXPECT_EQ(init.first_step, 0);
  EXPECT_EQ(init.losses.size(), 3u);
  EXPECT_EQ(init.initialised_from, straight_checkpoint(20));
  EXPECT_LT(init.losses[0], straight.losses[0] - 0.5) << "the trained weights model batch 1 better";
  ASSERT_EQ(init.parameters.size(), straight.parameters.size());
  for (size_t p = 0; p < straight.parameters.size(); ++p) {
    ASSERT_EQ(init.parameters[p].first, straight.parameters[p].first);
    const std::vector<double>& ours = init.parameters[p].second;
    const std::vector<double>& theirs = straight.parameters[p].second;
    ASSERT_EQ(ours.size(), theirs.size());
    for (size_t i = 0; i < ours.size(); ++i)
      ASSERT_NEAR(ours[i], theirs[i], 1e-20) << straight.parameters[p].first << "[" << i << "]";
  }
}

// The weights come first, then the run is a run like any other: its resume ignores init_from
// and continues exactly; the sequence length may differ from the checkpoint's run.
TEST_F(CheckpointTest, InitFromRunResumesItsOwnCheckpointsExactly) {
  Config c = base_config("init_resume");
  c.checkpoint.init_from = straight_checkpoint(10);
  c.model.seq_len = 8;
  expect_exact_resume_from_step_3(c);
}

// checkpoint.upcycle: a dense run's FFN becomes every expert of the MoE model's layers, the rest
// of its parameters as they were; the routers start as the config initialises them.
TEST_F(CheckpointTest, UpcycleCopiesTheDenseFfnIntoEveryExpert) {
  Config dense = base_config("upcycle_dense");
  dense.moe.num_experts = 0;
  dense.model.ffn_hidden = 16;
  dense.train.steps = 4;
  dense.checkpoint.every = 0;
  const TrainSummary dense_run = train(dense, {.print = false, .collect_parameters = true});
  Config moe = base_config("upcycle_moe");
  moe.moe.layers = MoeLayers{};  // every layer MoE
  moe.model.ffn_hidden = 512;    // unused: no dense layer
  moe.moe.expert_hidden = 16;
  moe.checkpoint.init_from = dense_run.last_checkpoint;
  moe.checkpoint.upcycle = true;
  moe.train.steps = 1;
  moe.train.optimizer = OptimizerKind::sgd;
  moe.train.lr = 1e-30;
  moe.train.min_lr = 0;
  const TrainSummary upcycled = train(moe, {.print = false, .collect_parameters = true});
  EXPECT_EQ(upcycled.initialised_from, dense_run.last_checkpoint);
  // Identical experts with renormalised top-k gates compute the dense FFN: the upcycled model
  // starts as the dense one's function (to rounding: sum of the gates times one FFN output).
  EXPECT_NEAR(upcycled.final_val_loss, dense_run.final_val_loss, 1e-6 * dense_run.final_val_loss);
  EXPECT_NE(upcycled.final_val_loss, 0.0);
  auto values_of = [](const TrainSummary& run, const std::string& path) {
    for (const auto& [name, values] : run.parameters)
      if (name == path) return values;
    ADD_FAILURE() << "no parameter " << path;
    return std::vector<double>{};
  };
  for (const std::string layer : {"layers/0/", "layers/1/"}) {
    for (const char* w : {"w1", "w3", "w2"}) {
      const std::vector<double> ffn = values_of(dense_run, layer + "ffn/" + w);
      const std::vector<double> experts = values_of(upcycled, layer + "moe/experts/" + w);
      ASSERT_EQ(experts.size(), 4 * ffn.size()) << layer << w;
      for (size_t i = 0; i < experts.size(); ++i)
        ASSERT_NEAR(experts[i], ffn[i % ffn.size()], 1e-20) << layer << w << "[" << i << "]";
    }
    const std::vector<double> wq = values_of(dense_run, layer + "attn/wq");
    const std::vector<double> wq_upcycled = values_of(upcycled, layer + "attn/wq");
    for (size_t i = 0; i < wq.size(); ++i) ASSERT_NEAR(wq_upcycled[i], wq[i], 1e-20);
  }
  // Not from an MoE checkpoint, and not into experts of another width.
  moe.checkpoint.init_from = straight_checkpoint(20);
  try {
    train(moe, {.print = false});
    ADD_FAILURE() << "upcycled an MoE checkpoint";
  } catch (const CollectiveError& error) {
    expect_contains(error.what(),
                    "checkpoint.upcycle needs a dense checkpoint; this one has "
                    "moe.num_experts 4");
  }
  moe.checkpoint.init_from = dense_run.last_checkpoint;
  moe.moe.expert_hidden = 8;
  try {
    train(moe, {.print = false});
    ADD_FAILURE() << "upcycled into experts of another width";
  } catch (const CollectiveError& error) {
    expect_contains(error.what(), "model.ffn_hidden (checkpoint 16, config 8)");
  }
}

TEST_F(CheckpointTest, InitFromRefusesAnotherModelNamingTheKey) {
  Config c = base_config("init_bad");
  c.train.steps = 1;
  c.model.ffn_hidden = 64;
  c.checkpoint.init_from = straight_checkpoint(20);
  try {
    train(c, {.print = false});
    ADD_FAILURE() << "a model of another shape took the weights";
  } catch (const CollectiveError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("checkpoint.init_from: " + straight_checkpoint(20) + ": ", 0), 0u)
        << message;
    expect_contains(message, "model.ffn_hidden (checkpoint 32, config 64)");
  }
  c.model.ffn_hidden = 32;
  c.checkpoint.init_from = (dir / "no_such_run").string();
  try {
    train(c, {.print = false});
    ADD_FAILURE() << "a missing checkpoint was taken";
  } catch (const CollectiveError& error) {
    EXPECT_EQ(std::string(error.what()).rfind("checkpoint.init_from: ", 0), 0u) << error.what();
    expect_contains(error.what(), "no_such_run");
  }
}

TEST(CompareConfigs, WhichKeysMayChange) {
  Config c;
  c.moe.num_experts = 8;
  std::string saved = config_to_yaml(c);
  // A checkpoint written with other coefficients, a balancing rate and another expert count.
  Config other = c;
  other.moe.num_experts = 4;
  other.moe.z_loss_coef = 0.5;
  other.eval.batches = 3;
  other.moe.bias_update_rate = 0.001;
  other.moe.routing.overflow = Overflow::reroute;  // the balancing choices other than the rates shape the model
  saved = config_to_yaml(other) + "extra:\n  unknown: 1\n";
  const ConfigDiff diff = compare_configs(saved, c);
  EXPECT_EQ(diff.errors, (std::vector<std::string>{"moe.num_experts (checkpoint 4, config 8)",
                                                   "moe.overflow (checkpoint reroute, config drop)"}));
  EXPECT_TRUE(diff.warnings.empty());
  EXPECT_EQ(diff.notes, (std::vector<std::string>{"moe.z_loss_coef (checkpoint 0.5, config 0.001)",
                                                  "moe.bias_update_rate (checkpoint 0.001, config 0.0)",
                                                  "eval.batches (checkpoint 3, config absent)",
                                                  "extra.unknown (checkpoint 1, config absent)"}));
  EXPECT_THROW(compare_configs("- not a mapping", c), std::runtime_error);
}

// A model-shaping key that neither model uses is a note: the moe keys of two dense models, the
// dense FFN's width of two models with every layer MoE (an import of a Mixtral keeps the default).
TEST(CompareConfigs, KeysNeitherModelUsesAreNotes) {
  Config dense;
  dense.moe.num_experts = 0;
  Config other_dense = dense;
  other_dense.moe.routing.top_k = 1;
  other_dense.moe.expert_hidden = 64;
  ConfigDiff diff = compare_configs(config_to_yaml(other_dense), dense);
  EXPECT_TRUE(diff.errors.empty());
  EXPECT_EQ(diff.notes.size(), 2u);
  Config moe;
  moe.moe.num_experts = 8;
  Config other_moe = moe;
  other_moe.model.ffn_hidden = 2048;
  diff = compare_configs(config_to_yaml(other_moe), moe);
  EXPECT_TRUE(diff.errors.empty());
  EXPECT_EQ(diff.notes,
            (std::vector<std::string>{
                "model.ffn_hidden (checkpoint 2048, config 512), not used by this model"}));
  // Some layers dense: the width shapes them.
  moe.moe.layers = MoeLayers::every_nth(2);
  other_moe.moe.layers = moe.moe.layers;
  EXPECT_EQ(compare_configs(config_to_yaml(other_moe), moe).errors,
            (std::vector<std::string>{"model.ffn_hidden (checkpoint 2048, config 512)"}));
  // A dense model against an MoE one: num_experts shapes both.
  EXPECT_FALSE(compare_configs(config_to_yaml(dense), moe).errors.empty());
}

// model.qk_norm was true or false before per_head existed: a checkpoint that says so compares as
// full or none, so that it resumes; the other spelling of a different value is still an error.
TEST(CompareConfigs, OlderSpellingsOfAChoiceAreTheSameValue) {
  Config none, full;
  full.model.qk_norm = QkNorm::full;
  auto written_as = [](const Config& c, const std::string& from, const std::string& to) {
    std::string yaml = config_to_yaml(c);
    yaml.replace(yaml.find(from), from.size(), to);
    return yaml;
  };
  EXPECT_EQ(compare_configs(written_as(none, "qk_norm: \"none\"", "qk_norm: false"), none).errors,
            std::vector<std::string>{});
  EXPECT_EQ(compare_configs(written_as(full, "qk_norm: \"full\"", "qk_norm: true"), full).errors,
            std::vector<std::string>{});
  EXPECT_EQ(compare_configs(written_as(none, "qk_norm: \"none\"", "qk_norm: true"), none).errors,
            std::vector<std::string>{"model.qk_norm (checkpoint full, config none)"});
  EXPECT_EQ(canonical_config_value("model.qk_norm", "true"), "full");
  EXPECT_EQ(canonical_config_value("model.qk_norm", "sideways"), "sideways");
  EXPECT_EQ(canonical_config_value("model.d_model", "true"), "true");
}

// A checkpoint written before a key existed lacks it: at its default the key is no difference,
// set to anything else it is (here a model-shaping one, so an error).
TEST(CompareConfigs, AKeyNewerThanTheCheckpointAtItsDefaultIsNoDifference) {
  Config c;
  c.moe.num_experts = 8;
  std::string saved = config_to_yaml(c);
  const std::string line = "  shared_expert_hidden: 0\n";
  const size_t at = saved.find(line);
  ASSERT_NE(at, std::string::npos) << saved;
  saved.erase(at, line.size());
  ConfigDiff diff = compare_configs(saved, c);
  EXPECT_TRUE(diff.errors.empty() && diff.warnings.empty() && diff.notes.empty());
  c.moe.shared_expert_hidden = 16;
  diff = compare_configs(saved, c);
  EXPECT_EQ(diff.errors,
            (std::vector<std::string>{"moe.shared_expert_hidden (checkpoint absent, config 16)"}));
}

}  // namespace
}  // namespace sy
