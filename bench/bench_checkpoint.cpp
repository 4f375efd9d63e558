// Checkpoint size and save/load time of a config's model (no training: the model is built and
// initialised, AdamW's moments allocated, then saved and loaded a few times).
//   bench_checkpoint CONFIG [--set section.key=value ...] [--dir DIR] [--repeats N] [--cold 1]
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
#include <filesystem>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/session.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 0;
  try {
    if (argc < 2) throw std::runtime_error("usage: bench_checkpoint CONFIG [--set k=v ...] [--dir DIR] [--repeats N]");
    std::vector<std::string> overrides;
    std::string dir = (std::filesystem::temp_directory_path() / "sy_bench_checkpoint").string();
    int repeats = 3;
    bool cold = false;
    for (int i = 2; i < argc; ++i) {
      const std::string arg = argv[i];
      if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
      if (arg == "--set") overrides.push_back(argv[++i]);
      else if (arg == "--dir") dir = argv[++i];
      else if (arg == "--repeats") repeats = std::max(1, std::stoi(argv[++i]));
      else if (arg == "--cold") cold = std::string(argv[++i]) != "0";
      else throw std::runtime_error("unknown option " + arg);
    }
    sy::Config config = sy::load_config(argv[1], overrides);
    config.checkpoint.keep_last = 1;
    sy::ModelSession session = sy::make_model_session(config, MPI_COMM_WORLD);
    std::vector<sy::Param*> params = session.model->params();
    std::unique_ptr<sy::Optimizer> optimizer = sy::make_optimizer(config.train);
    optimizer->init_state(*session.backend, params);

    // Parameters of the whole model: expert tensors hold E/P of E experts on each rank.
    int64_t total = 0;
    for (const sy::Param* param : params)
      total += param->value.numel() * (param->is_expert ? session.groups.ep_size() : 1);

    std::vector<double> saves, loads;
    std::string path;
    for (int r = 0; r < repeats; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      double start = now_s();
      path = sy::save_checkpoint(dir, r + 1, config, *session.model, optimizer.get(),
                                 session.groups, *session.backend);
      saves.push_back(now_s() - start);
      if (cold && rank == 0) {
        ::sync();
        std::ofstream drop("/proc/sys/vm/drop_caches");
        drop << "3\n";
        drop.close();
        if (!drop) throw std::runtime_error("--cold: cannot write /proc/sys/vm/drop_caches (root?)");
      }
      MPI_Barrier(MPI_COMM_WORLD);
      start = now_s();
      sy::load_checkpoint(path, config, *session.model, optimizer.get(), session.groups,
                          *session.backend);
      loads.push_back(now_s() - start);
    }
    if (rank == 0) {
      const double bytes = static_cast<double>(std::filesystem::file_size(path));
      std::sort(saves.begin(), saves.end());
      std::sort(loads.begin(), loads.end());
      const double save = saves[saves.size() / 2], load = loads[loads.size() / 2];
      std::printf("%s: %lld parameters (%.1fM), %d ranks, expert_parallel %d\n",
                  config.name.c_str(), static_cast<long long>(total), total / 1e6,
                  session.groups.size(), session.groups.ep_size());
      std::printf("  checkpoint %.1f MB (%.2f bytes per parameter: weights + 2 AdamW moments, fp32)\n",
                  bytes / 1e6, bytes / total);
      std::printf("  save %.3f s (%.0f MB/s, incl. fsync), load %.3f s (%.0f MB/s, page cache %s); "
                  "median of %d\n",
                  save, bytes / 1e6 / save, load, bytes / 1e6 / load, cold ? "dropped" : "warm",
                  repeats);
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
