#include "trainer/cli.h"

#include <H5public.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

#include "parallel/launch.h"
#include "trainer/checkpoint.h"
#include "trainer/version.h"

// Set by trainer/CMakeLists.txt from what the configuration found; the fallbacks keep a build
// outside CMake compiling.
#ifndef SY_BUILD_TYPE
#define SY_BUILD_TYPE "unknown"
#endif
#ifndef SY_BUILD_CUDA
#define SY_BUILD_CUDA "unknown"
#endif
#ifndef SY_BUILD_NCCL
#define SY_BUILD_NCCL "unknown"
#endif
#ifndef SY_BUILD_CUDNN
#define SY_BUILD_CUDNN "unknown"
#endif

namespace sy {

namespace fs = std::filesystem;

namespace {

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "GCC " __VERSION__;
#else
  return "unknown compiler";
#endif
}

// The key of a --set KEY=VALUE, without surrounding spaces.
std::string override_key(const std::string& text) {
  std::string key = text.substr(0, text.find('='));
  const size_t first = key.find_first_not_of(" \t"), last = key.find_last_not_of(" \t");
  return first == std::string::npos ? "" : key.substr(first, last - first + 1);
}

bool overridden(const std::vector<std::string>& overrides, const std::string& key) {
  return std::any_of(overrides.begin(), overrides.end(),
                     [&](const std::string& text) { return override_key(text) == key; });
}

// The first line of a text file, without trailing whitespace.
std::string first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  return line;
}

}  // namespace

std::string version_report() {
  std::string out = "switchyard " SY_VERSION " (git " SY_GIT_COMMIT ")\n";
  out += "  build:  " SY_BUILD_TYPE ", " + compiler() + ", C++20\n";
  out += "  MPI:    " + mpi_library_name() + "\n";
  out += "  HDF5:   " + std::to_string(H5_VERS_MAJOR) + "." + std::to_string(H5_VERS_MINOR) + "." +
         std::to_string(H5_VERS_RELEASE) + "\n";
  out += "  CUDA:   " SY_BUILD_CUDA "\n";
  out += "  NCCL:   " SY_BUILD_NCCL "\n";
  out += "  cuDNN:  " SY_BUILD_CUDNN "\n";
  return out;
}

CheckpointArgument resolve_checkpoint_argument(const std::string& argument) {
  std::error_code error;
  const fs::path given = argument;
  if (fs::is_directory(given, error)) {
    // A run folder stands for its checkpoints/ (the default checkpoint.dir), if it has no
    // checkpoints of its own.
    fs::path dir = given;
    std::vector<std::string> skipped;
    std::string found = find_latest_checkpoint(dir.string(), &skipped);
    if (found.empty() && fs::is_directory(given / "checkpoints", error)) {
      dir = given / "checkpoints";
      skipped.clear();
      found = find_latest_checkpoint(dir.string(), &skipped);
    }
    if (found.empty()) {
      std::string why = argument + ": no loadable checkpoint in this folder";
      for (const std::string& line : skipped)
        if (line.find("latest: missing") == std::string::npos) why += "; skipped " + line;
      throw CheckpointError(why);
    }
    CheckpointArgument resolved{found, {}};
    for (const std::string& line : skipped)
      if (line.find("latest: missing") == std::string::npos)
        resolved.notes.push_back("skipped " + line);
    resolved.notes.push_back("checkpoint " + found + ", the newest in " + dir.string());
    return resolved;
  }
  // The pointer file holds the name of a file beside it (docs/checkpoint.md).
  if (given.filename() == "latest" && fs::is_regular_file(given, error)) {
    const std::string named = first_line(given);
    if (named.empty())
      throw CheckpointError(argument + ": empty (it should name a checkpoint file beside it)");
    const fs::path target = given.parent_path() / named;
    if (!fs::exists(target, error))
      throw CheckpointError(argument + ": names " + named + ", which does not exist");
    return {target.string(), {"checkpoint " + target.string() + ", named by " + argument}};
  }
  return {argument, {}};
}

Config load_stored_config(const std::string& yaml, const std::string& checkpoint,
                          const std::vector<std::string>& overrides) {
  Config config = load_config_text(yaml, checkpoint + " (its config)", overrides);
  config.source_file = checkpoint;
  return config;
}

std::string fit_stored_layout(Config& config, int world_size,
                              const std::vector<std::string>& overrides) {
  const ParallelConfig single;
  if (world_size % config.parallel.expert_parallel == 0) return "";
  std::vector<std::string> changed;
  if (!overridden(overrides, "parallel.expert_parallel") &&
      config.parallel.expert_parallel != single.expert_parallel) {
    changed.push_back("parallel.expert_parallel " + std::to_string(config.parallel.expert_parallel) +
                      " -> " + std::to_string(single.expert_parallel));
    config.parallel.expert_parallel = single.expert_parallel;
  }
  if (!overridden(overrides, "parallel.communicator") &&
      config.parallel.communicator != single.communicator) {
    changed.push_back(std::string("parallel.communicator ") +
                      to_string(config.parallel.communicator) + " -> " +
                      to_string(single.communicator));
    config.parallel.communicator = single.communicator;
  }
  if (changed.empty()) return "";
  std::string note = "the checkpoint's layout does not fit " + std::to_string(world_size) +
                     (world_size == 1 ? " process" : " processes") + ": ";
  for (size_t i = 0; i < changed.size(); ++i) note += (i ? ", " : "") + changed[i];
  return note + " (a checkpoint loads under any layout; --set parallel.* to choose another)";
}

}  // namespace sy
