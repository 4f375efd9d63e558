// Checkpoint size and save/load time of a config's model: the model is built and initialised,
// AdamW's moments allocated, then saved and loaded a few times.
//   bench_checkpoint CONFIG [--set section.key=value ...] [--dir DIR] [--repeats N] [--cold 1]
//                    [--modes sync,async] [--load 0] [--steps N]
// Each mode saves N times: the step's stall (save_checkpoint's return) and the time until the
// file is complete (finish_checkpoint_write), medians (of two, the faster), and the first save's
// stall apart, next to `dd if=/dev/zero bs=16M conv=fsync` of the same size into the same
// folder, in the same run. One checkpoint is on disk at a time.
// The async mode starts as `train` does: the snapshot's memory is prepared in the background
// (prepare_checkpoint_snapshot) while --steps real training steps run (synthetic tokens, forward
// and backward, gradients synchronised, AdamW), then it saves; the lines after the table say how
// long the preparation took, whether the first save waited for it, and the step time while it
// ran against after it.
// Under mpirun -np W with parallel.expert_parallel P it measures the distributed save (world
// rank 0 writes, receiving the other EP ranks' experts one at a time) and the layout-aware load.
// Loads right after a save read from the page cache; with --cold 1 the page cache is dropped
// before each load (needs root: writes /proc/sys/vm/drop_caches).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "model/rng.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "parallel/grad_sync.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/session.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];  // of two, the faster
}

// Real training steps as train() runs them, on uniform random tokens (the bench needs no
// corpus): every micro-batch forward and backward, the gradients synchronised over the ranks,
// clipped, AdamW's update. Collective over the session's ranks.
class SyntheticTraining {
 public:
  SyntheticTraining(const sy::Config& config, sy::ModelSession& session, sy::Optimizer& optimizer)
      : config_(config), session_(session), optimizer_(optimizer),
        params_(session.model->params()), tokens_(random_tokens(config)),
        sampler_(tokens_, config.model.seq_len, config.seed) {}

  // Runs one step (the next one) and waits for the device; returns when it is done.
  void step() {
    const sy::TrainConfig& tc = config_.train;
    const int W = session_.groups.size(), rank = session_.groups.rank();
    const int64_t B = tc.micro_batch_size;
    std::vector<int32_t> inputs(B * config_.model.seq_len), targets(inputs.size());
    if (step_ == 0) session_.model->zero_grads();  // later: the optimizer leaves them to overwrite
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      sampler_.group(step_, micro * W + rank, B, inputs.data(), targets.data());
      session_.model->forward_backward(inputs, targets, B, true,
                                       1.0 / static_cast<double>(W * tc.grad_accum_steps));
    }
    sy::synchronize_gradients(*session_.backend, params_, session_.groups);
    const double norm = sy::distributed_grad_norm(*session_.backend, params_, session_.groups);
    optimizer_.step(*session_.backend, params_, sy::lr_at(sy::lr_schedule(tc), step_),
                    sy::clip_factor(norm, tc.grad_clip));
    session_.backend->synchronize();
    ++step_;
  }

 private:
  static std::vector<int32_t> random_tokens(const sy::Config& config) {
    sy::CounterRng rng(config.seed);
    std::vector<int32_t> tokens(size_t{1} << 22);
    for (int32_t& t : tokens)
      t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(config.model.vocab_size)));
    return tokens;
  }

  const sy::Config& config_;
  sy::ModelSession& session_;
  sy::Optimizer& optimizer_;
  std::vector<sy::Param*> params_;
  std::vector<int32_t> tokens_;  // the sampler keeps a pointer to them
  sy::StepSampler sampler_;
  int64_t step_ = 0;
};

// The async mode's start: how long the snapshot's preparation ran in the background, whether
// the first save found it done, and the step time while it ran against after it (the first
// step, which also warms the device up, is left out of both).
void report_preparation(const sy::SnapshotStatus& status, double prepare_start,
                        double first_save_start, const std::vector<double>& step_ends,
                        const std::vector<double>& step_seconds) {
  const double prepared_at = prepare_start + status.prepare_seconds;
  std::vector<double> during, after;
  for (size_t i = 1; i < step_ends.size(); ++i)
    (step_ends[i] <= prepared_at ? during : after).push_back(step_seconds[i]);
  char first_save[96];
  if (status.save_waited)
    std::snprintf(first_save, sizeof first_save, "waited %.3f s for it", status.waited_seconds);
  else
    std::snprintf(first_save, sizeof first_save, "found it ready (%.3f s to spare)",
                  first_save_start - prepared_at);
  std::printf("  async start: snapshot memory %.2f GB (%s) prepared in the background in %.3f s; "
              "%zu training steps (%.3f s) before the first save, which %s; saves that mapped "
              "their own memory: %lld\n",
              status.bytes / 1e9, status.pinned ? "page-locked" : "pageable",
              status.prepare_seconds, step_ends.size(), first_save_start - prepare_start,
              first_save, static_cast<long long>(status.saves_allocated));
  std::printf("  async start: step %.1f ms (median of %zu) while preparing, %.1f ms (median of "
              "%zu) after; first step %.1f ms\n",
              1e3 * median(during), during.size(), 1e3 * median(after), after.size(),
              step_seconds.empty() ? 0.0 : 1e3 * step_seconds.front());
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 0;
  try {
    if (argc < 2) throw std::runtime_error("usage: bench_checkpoint CONFIG [--set k=v ...] [--dir DIR] [--repeats N] [--modes sync,async] [--load 0] [--cold 1] [--steps N]");
    std::vector<std::string> overrides;
    std::string dir = (std::filesystem::temp_directory_path() / "sy_bench_checkpoint").string();
    int repeats = 3;
    int steps_before_async = 20;  // training steps from the preparation's start to the first save
    bool cold = false;
    bool load = true;
    std::string modes_text = "sync,async";
    for (int i = 2; i < argc; ++i) {
      const std::string arg = argv[i];
      if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
      if (arg == "--set") overrides.push_back(argv[++i]);
      else if (arg == "--dir") dir = argv[++i];
      else if (arg == "--repeats") repeats = std::max(1, std::stoi(argv[++i]));
      else if (arg == "--cold") cold = std::string(argv[++i]) != "0";
      else if (arg == "--modes") modes_text = argv[++i];
      else if (arg == "--load") load = std::string(argv[++i]) != "0";
      else if (arg == "--steps") steps_before_async = std::max(0, std::stoi(argv[++i]));
      else throw std::runtime_error("unknown option " + arg);
    }
    sy::Config config = sy::load_config(argv[1], overrides);
    config.checkpoint.keep_last = 1;
    sy::ModelSession session = sy::make_model_session(config, MPI_COMM_WORLD);
    // Leaving by an exception: the snapshot's preparation and a background write end before the
    // backend they use does.
    struct JoinBackground {
      ~JoinBackground() { sy::join_checkpoint_write(); }
    } join_background;
    std::vector<sy::Param*> params = session.model->params();
    std::unique_ptr<sy::Optimizer> optimizer = sy::make_optimizer(sy::optimizer_settings(config.train));
    optimizer->init_state(*session.backend, params);

    // Parameters of the whole model: expert tensors hold E/P of E experts on each rank.
    int64_t total = 0;
    for (const sy::Param* param : params)
      total += param->value.numel() * (param->is_expert ? session.groups.ep_size() : 1);

    // Each mode saves `repeats` times. sync: the step is stalled for the whole save. async: the
    // step is stalled for the snapshot (save_checkpoint's return); the write ends at
    // finish_checkpoint_write, which the next save would otherwise wait for.
    struct Mode {
      std::string name;
      bool async;
      std::vector<double> stalls, totals;
    };
    std::vector<Mode> modes;  // in the order given
    std::stringstream names(modes_text);
    for (std::string name; std::getline(names, name, ',');) {
      if (name != "sync" && name != "async") throw std::runtime_error("--modes: sync and/or async, not " + name);
      modes.push_back({name, name == "async", {}, {}});
    }
    if (modes.empty()) throw std::runtime_error("--modes: sync and/or async");
    SyntheticTraining training(config, session, *optimizer);
    // The async mode's start: the preparation and the steps that run while it does.
    double prepare_start = 0, first_save_start = 0;
    std::vector<double> step_ends, step_seconds;  // absolute end time and duration of each step
    std::vector<double> loads;
    std::string path;
    double bytes = 0;
    int64_t step = 0;
    // One checkpoint on disk at a time (the 1.81B model's is 21.7 GB): each is removed after use.
    auto remove_checkpoints = [&] {
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank == 0) {
        if (bytes == 0) bytes = static_cast<double>(std::filesystem::file_size(path));
        std::filesystem::remove_all(dir);
      }
      MPI_Barrier(MPI_COMM_WORLD);
    };
    for (Mode& mode : modes) {
      config.checkpoint.async = mode.async;
      if (mode.async) {
        MPI_Barrier(MPI_COMM_WORLD);
        prepare_start = now_s();
        sy::prepare_checkpoint_snapshot(config, *session.model, optimizer.get(), session.groups,
                                        *session.backend);
        for (int s = 0; s < steps_before_async; ++s) {
          const double step_start = now_s();
          training.step();
          step_ends.push_back(now_s());
          step_seconds.push_back(step_ends.back() - step_start);
        }
      }
      for (int r = 0; r < repeats; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double start = now_s();
        if (mode.async && r == 0) first_save_start = start;
        path = sy::save_checkpoint(dir, ++step, config, *session.model, optimizer.get(),
                                   session.groups, *session.backend);
        mode.stalls.push_back(now_s() - start);
        sy::finish_checkpoint_write(session.groups);
        mode.totals.push_back(now_s() - start);
        if (mode.async || !load) {
          remove_checkpoints();
          continue;
        }
        if (cold && rank == 0) {
          ::sync();
          std::ofstream drop("/proc/sys/vm/drop_caches");
          drop << "3\n";
          drop.close();
          if (!drop) throw std::runtime_error("--cold: cannot write /proc/sys/vm/drop_caches (root?)");
        }
        MPI_Barrier(MPI_COMM_WORLD);
        const double load_start = now_s();
        sy::load_checkpoint(path, config, *session.model, optimizer.get(), session.groups,
                            *session.backend);
        loads.push_back(now_s() - load_start);
        remove_checkpoints();
      }
    }
    if (rank == 0) {
      std::filesystem::create_directories(dir);
      // The disk's sequential write speed in the same run, same folder, same size: dd with fsync.
      const long long blocks = static_cast<long long>(bytes / (16 << 20)) + 1;
      const std::string dd_file = (std::filesystem::path(dir) / "dd.bin").string();
      const std::string dd = "dd if=/dev/zero of='" + dd_file + "' bs=16M count=" +
                             std::to_string(blocks) + " conv=fsync status=none";
      std::vector<double> dd_times;
      for (int r = 0; r < std::min(repeats, 3); ++r) {
        const double start = now_s();
        if (std::system(dd.c_str()) != 0) throw std::runtime_error("failed: " + dd);
        dd_times.push_back(now_s() - start);
        std::filesystem::remove(dd_file);
      }
      const double dd_mb_s = blocks * 16.0 * 1048576 / 1e6 / median(dd_times);
      std::printf("%s: %lld parameters (%.1fM), %d ranks, expert_parallel %d, dir %s\n",
                  config.name.c_str(), static_cast<long long>(total), total / 1e6,
                  session.groups.size(), session.groups.ep_size(), dir.c_str());
      std::printf("  checkpoint %.1f MB (%.2f bytes per parameter: weights + 2 AdamW moments, fp32)\n",
                  bytes / 1e6, bytes / total);
      if (!loads.empty()) std::printf("  load %.3f s (%.0f MB/s, page cache %s)\n", median(loads),
                  bytes / 1e6 / median(loads), cold ? "dropped" : "warm");
      std::printf("  %-6s %10s %10s %10s %9s %14s   (medians of %d; dd: %lld x 16 MiB, conv=fsync)\n",
                  "mode", "stall s", "write s", "MB/s", "% of dd", "first stall s", repeats, blocks);
      for (const Mode& mode : modes) {
        const double write_s = median(mode.totals);
        std::printf("  %-6s %10.3f %10.3f %10.0f %8.0f%% %14.3f\n", mode.name.c_str(),
                    median(mode.stalls), write_s, bytes / 1e6 / write_s,
                    100.0 * bytes / 1e6 / write_s / dd_mb_s, mode.stalls.front());
      }
      std::printf("  %-6s %10s %10.3f %10.0f %8.0f%%\n", "dd", "", median(dd_times), dd_mb_s, 100.0);
      if (prepare_start > 0) report_preparation(sy::checkpoint_snapshot_status(), prepare_start,
                                                first_save_start, step_ends, step_seconds);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) std::filesystem::remove_all(dir);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_checkpoint: rank %d: %s\n", rank, error.what());
    status = 1;
  }
  MPI_Finalize();
  return status;
}
