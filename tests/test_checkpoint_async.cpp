// The checkpoint write path (docs/checkpoint.md, "Writing"): our Fletcher-32 equals HDF5's filter,
// checkpoint.async writes the same file as a synchronous save (every tensor's bytes and every
// attribute but provenance's `created`) with the same losses, and a full disk or a write error
// fails the save cleanly: errno's text in one line naming the file, the previous checkpoint and
// `latest` untouched, no temporary file left, in both modes; the snapshot memory prepared in the
// background serves the first save whether or not the preparation has finished by then. Runs at
// 1 and 2 ranks (at 2, with expert_parallel 2, the writer receives the other rank's experts into
// its snapshot).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "checkpoint_tamper.h"
#include "parallel/process_groups.h"
#include "tests/dist_harness.h"
#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/config.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using test::shared_temp_dir;
using test::world_rank;
using test::world_size;

class CheckpointWriteTest : public ::testing::Test {
 public:
  static inline fs::path dir;
  static void SetUpTestSuite() {
    dir = shared_temp_dir("sy_ckpt_async");
    if (world_rank() == 0) {
      fs::remove_all(dir);
      fs::create_directories(dir);
      test::write_repeated_text((dir / "tokens.h5").string(),
                                "a checkpoint written in the background is the same file. ", 40, 90);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  static void TearDownTestSuite() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(dir);
  }
  static Config base_config(const std::string& run) {
    Config c = test::tiny_moe(32, 32);
    c.seed = 5;
    c.moe.layers = MoeLayers::every_nth(2);
    c.train.micro_batch_size = 2;
    c.train.steps = 6;
    c.train.lr = 1e-2;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 0;
    c.eval.batches = 1;
    c.checkpoint.every = 2;
    c.checkpoint.keep_last = 5;
    c.parallel.expert_parallel = world_size();
    c.run.dir = (dir / run).string();
    c.run.log_every = 1;
    return c;
  }
};

TEST(Fletcher32, EqualsHdf5sFilter) {
  const fs::path file = fs::temp_directory_path() / ("sy_fletcher_" + std::to_string(::getpid()) + ".h5");
  std::mt19937 random(7);
  for (hsize_t n : {hsize_t{1}, hsize_t{179}, hsize_t{180}, hsize_t{181}, hsize_t{1000}, hsize_t{262144}}) {
    std::vector<float> values(n);
    for (float& v : values) v = std::uniform_real_distribution<float>(-1e6f, 1e6f)(random);
    if (n == 1000) std::memset(values.data(), 0xff, n * 4);  // all-ones words: the folds' edge
    const hid_t f = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, &n);
    H5Pset_fletcher32(dcpl);
    const hid_t dataset = H5Dcreate2(f, "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    hsize_t offset = 0, stored = 0;
    ASSERT_GE(H5Dget_chunk_storage_size(dataset, &offset, &stored), 0);
    ASSERT_EQ(stored, n * 4 + 4);
    std::vector<unsigned char> raw(stored);
    uint32_t filters = 0;
    ASSERT_GE(H5Dread_chunk(dataset, H5P_DEFAULT, &offset, &filters, raw.data()), 0);
    uint32_t theirs = 0;
    std::memcpy(&theirs, raw.data() + n * 4, 4);
    EXPECT_EQ(hdf5_fletcher32(values.data(), n * 4), theirs) << n << " floats";
    H5Dclose(dataset);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Fclose(f);
  }
  fs::remove(file);
}

// Every dataset's values and every root attribute of two checkpoints, provenance's `created` and
// `run_id` lines aside.
void expect_same_file(const std::string& a, const std::string& b) {
  std::vector<std::string> paths_a, paths_b;
  scan_checkpoint_tensors(a, nullptr, [&](const TensorInfo& info) { paths_a.push_back(info.path); });
  scan_checkpoint_tensors(b, nullptr, [&](const TensorInfo& info) { paths_b.push_back(info.path); });
  ASSERT_EQ(paths_a, paths_b);
  for (const std::string& path : paths_a)
    EXPECT_EQ(tamper::read_floats(a, path), tamper::read_floats(b, path)) << path;
  for (const char* name : {"format_version", "step", "optimizer_step"})
    EXPECT_EQ(tamper::read_int_attribute(a, name), tamper::read_int_attribute(b, name)) << name;
  auto flatten = [](const std::string& file, const char* name) {
    std::istringstream in(tamper::read_string_attribute(file, name));
    std::string line, kept;
    while (std::getline(in, line))
      if (line.rfind("created:", 0) != 0 && line.rfind("run_id:", 0) != 0) kept += line + "\n";
    return kept;
  };
  EXPECT_EQ(flatten(a, "provenance"), flatten(b, "provenance"));
  // The configs differ only where the runs were told to: run.dir and checkpoint.async.
  auto config_of = [](const std::string& file) {
    std::istringstream in(tamper::read_string_attribute(file, "config"));
    std::string line, kept;
    while (std::getline(in, line))
      if (line.find("dir:") == std::string::npos && line.find("async:") == std::string::npos)
        kept += line + "\n";
    return kept;
  };
  EXPECT_EQ(config_of(a), config_of(b));
}

TEST_F(CheckpointWriteTest, AsyncWritesTheSyncFile) {
  Config sync_config = base_config("sync");
  const TrainSummary sync_run = train(sync_config, {.print = false, .collect_parameters = true});
  Config async_config = base_config("async");
  async_config.checkpoint.async = true;
  const TrainSummary async_run = train(async_config, {.print = false, .collect_parameters = true});
  ASSERT_EQ(async_run.losses, sync_run.losses);
  if (world_rank() != 0) return;
  ASSERT_EQ(async_run.parameters, sync_run.parameters);
  for (int64_t step : {2, 4, 6})
    expect_same_file(
        (fs::path(checkpoint_dir(sync_config)) / checkpoint_file_name(step)).string(),
        (fs::path(checkpoint_dir(async_config)) / checkpoint_file_name(step)).string());
  std::ifstream latest(fs::path(checkpoint_dir(async_config)) / "latest");
  std::string named;
  std::getline(latest, named);
  EXPECT_EQ(named, checkpoint_file_name(6));
}

// The snapshot's host memory is prepared in the background from the start of an async run
// (trainer/checkpoint_snapshot.h). Whether the first save comes while the preparation still runs
// or after it finished, every save writes the synchronous save's file and takes the prepared
// memory (none maps its own). `options` and the preparation's test hook pick the case.
void expect_prepared_saves_write_the_sync_file(const std::string& name, const Config& base,
                                               const TrainOptions& options, bool save_waits) {
  Config sync_config = base;
  sync_config.run.dir = (CheckpointWriteTest::dir / (name + "_sync")).string();
  sync_config.checkpoint.every = 1;  // the first save right after the start
  sync_config.train.steps = 3;
  Config async_config = sync_config;
  async_config.run.dir = (CheckpointWriteTest::dir / (name + "_async")).string();
  async_config.checkpoint.async = true;
  const TrainSummary sync_run = train(sync_config, {.print = false});
  const TrainSummary async_run = train(async_config, options);
  ASSERT_EQ(async_run.losses, sync_run.losses);
  if (world_rank() != 0) return;
  const SnapshotStatus status = checkpoint_snapshot_status();
  EXPECT_TRUE(status.finished);
  EXPECT_EQ(status.save_waited, save_waits);
  EXPECT_EQ(status.saves_served, 3);
  EXPECT_EQ(status.saves_allocated, 0);
  EXPECT_GT(status.bytes, 0u);
  for (int64_t step : {1, 2, 3})
    expect_same_file(
        (fs::path(checkpoint_dir(sync_config)) / checkpoint_file_name(step)).string(),
        (fs::path(checkpoint_dir(async_config)) / checkpoint_file_name(step)).string());
}

TEST_F(CheckpointWriteTest, FirstAsyncSaveWaitsForAnUnfinishedPreparation) {
  // The preparation is held back until the first save waits for it (given up after two minutes,
  // so that a save that never waits fails the checks instead of hanging the test).
  set_checkpoint_snapshot_test_hook([] {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (!checkpoint_snapshot_status().save_waiting && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  struct Unhook {
    ~Unhook() { set_checkpoint_snapshot_test_hook(nullptr); }
  } unhook;
  expect_prepared_saves_write_the_sync_file("unfinished", base_config(""), {.print = false}, true);
}

TEST_F(CheckpointWriteTest, FirstAsyncSaveTakesAFinishedPreparation) {
  TrainOptions options{.print = false};
  options.after_backward = [](int64_t step, const std::vector<Param*>&, Backend&) {
    // Before step 1's save: join_checkpoint_write also joins the preparation.
    if (step == 1 && world_rank() == 0) {
      EXPECT_EQ(join_checkpoint_write(), "");
    }
  };
  expect_prepared_saves_write_the_sync_file("finished", base_config(""), options, false);
}

// A stop signal during an async run: the stop's save is complete (and `latest` names it) when
// train() returns, and --resume auto continues bit for bit.
TEST_F(CheckpointWriteTest, AsyncStopSignalSavesAndResumesExactly) {
  const TrainSummary straight = train(base_config("straight"), {.print = false});
  Config c = base_config("stopped");
  c.checkpoint.async = true;
  TrainOptions signalled{.print = false};
  signalled.after_backward = [](int64_t step, const std::vector<Param*>&, Backend&) {
    if (step == 3 && world_rank() == world_size() - 1) std::raise(SIGTERM);
  };
  const TrainSummary stopped = train(c, signalled);
  EXPECT_EQ(stopped.stop_signal, SIGTERM);
  ASSERT_EQ(stopped.steps, 3);
  const fs::path checkpoints = checkpoint_dir(c);
  if (world_rank() == 0) {
    std::ifstream latest(checkpoints / "latest");
    std::string named;
    std::getline(latest, named);
    EXPECT_EQ(named, checkpoint_file_name(3));
    EXPECT_NO_THROW(read_checkpoint_header((checkpoints / checkpoint_file_name(3)).string()));
  }
  const TrainSummary resumed = train(c, {.print = false, .resume = "auto"});
  ASSERT_EQ(resumed.first_step, 3);
  ASSERT_EQ(resumed.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed.losses[i], straight.losses[3 + i]) << "step " << 4 + i;
}

// A save that fails partway: one line with the system's reason naming the file, the previous
// checkpoint and `latest` intact, no temporary file, in both modes. `limit` makes the disk "full"
// for the second save; `reason` is the strerror text expected.
void expect_clean_failure(const Config& base, const std::function<void()>& limit,
                          const std::function<void()>& unlimit, const std::string& reason) {
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    Config c = base;
    c.checkpoint.async = async;
    c.train.steps = 4;
    c.checkpoint.every = 2;
    if (world_rank() == 0) fs::remove_all(checkpoint_dir(c));
    MPI_Barrier(MPI_COMM_WORLD);
    std::string message;
    TrainOptions options{.print = false};
    options.after_backward = [&](int64_t step, const std::vector<Param*>&, Backend&) {
      if (step == 3 && world_rank() == 0) limit();  // after the first save
    };
    try {
      train(c, options);
    } catch (const std::exception& error) {
      message = error.what();
    }
    if (world_rank() == 0) unlimit();
    EXPECT_NE(message.find(reason), std::string::npos) << message;
    EXPECT_NE(message.find(checkpoint_file_name(4)), std::string::npos) << message;
    if (world_rank() == 0) {
      const fs::path folder = checkpoint_dir(c);
      EXPECT_FALSE(fs::exists(folder / (checkpoint_file_name(4) + ".tmp")));
      EXPECT_FALSE(fs::exists(folder / checkpoint_file_name(4)));
      std::ifstream latest(folder / "latest");
      std::string named;
      std::getline(latest, named);
      EXPECT_EQ(named, checkpoint_file_name(2));
      EXPECT_NO_THROW(read_checkpoint_header((folder / checkpoint_file_name(2)).string()));
      EXPECT_GT(tamper::read_floats((folder / checkpoint_file_name(2)).string(), "/model/embedding").size(), 0u);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

// Fault injection without a mount: the disk "fills up" halfway through the second save (the
// writer's descriptor pointed at /dev/full).
TEST_F(CheckpointWriteTest, WriteErrorFailsCleanly) {
  Config c = base_config("injected");
  expect_clean_failure(
      c,
      [] {
        EXPECT_EQ(join_checkpoint_write(), "");  // the first save's background write is not hit
        set_checkpoint_write_fault(100 * 1024);
      },
      [] { set_checkpoint_write_fault(-1); },
      "No space left on device");
}

// A real full disk: a tmpfs with room for one checkpoint and a half (needs root; skipped visibly
// otherwise).
TEST_F(CheckpointWriteTest, DiskFullFailsCleanly) {
  Config c = base_config("full");
  // The size of one checkpoint of this model, from a first save elsewhere.
  Config probe = base_config("probe");
  probe.train.steps = 2;
  train(probe, {.print = false});
  const fs::path mount_point = dir / "tmpfs";
  int mounted = 0;
  if (world_rank() == 0) {
    const auto bytes = fs::file_size(fs::path(checkpoint_dir(probe)) / checkpoint_file_name(2));
    fs::create_directories(mount_point);
    const std::string options = "size=" + std::to_string((bytes * 3 / 2 + 4095) / 4096 * 4096);
    mounted = ::mount("tmpfs", mount_point.c_str(), "tmpfs", 0, options.c_str()) == 0;
  }
  MPI_Bcast(&mounted, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (!mounted) GTEST_SKIP() << "cannot mount a tmpfs here (needs root): full-disk case not run";
  struct Unmount {
    fs::path path;
    ~Unmount() {
      MPI_Barrier(MPI_COMM_WORLD);
      if (world_rank() == 0) ::umount(path.c_str());
    }
  } unmount{mount_point};
  c.checkpoint.dir = (mount_point / "checkpoints").string();
  c.checkpoint.keep_last = 1;
  expect_clean_failure(c, [] {}, [] {}, "No space left on device");
}

}  // namespace
}  // namespace sy
