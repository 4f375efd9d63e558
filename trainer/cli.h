// What the command line shares between its subcommands: the build report of
// `switchyard --version`, the one rule by which a checkpoint argument (of inspect, eval and
// generate) names a checkpoint file, and the config that eval and generate take from it.
#pragma once
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sy {

// "switchyard 0.1.0 (git 8454112)" followed by one line each for the build type and compiler,
// MPI, HDF5, CUDA, NCCL and cuDNN: built in or not, with the versions known at build time.
std::string version_report();

// A checkpoint named on the command line, resolved to one file.
struct CheckpointArgument {
  std::string path;                // the checkpoint file to open
  std::vector<std::string> notes;  // how a folder or pointer was resolved, for the user
};

// `argument` may be
//   - a checkpoint file: itself (whether it opens is the loader's to say, with its own errors);
//   - a checkpoints folder: its newest complete checkpoint, found as `--resume auto` finds it
//     (the file `latest` names if it loads, else the loadable step_*.h5 with the highest step);
//     a run folder stands for its checkpoints/ subfolder;
//   - the `latest` pointer file of a checkpoints folder: the file it names.
// Throws CheckpointError "<argument>: <why>" when a folder holds no loadable checkpoint or a
// pointer names nothing. Not collective: under mpirun, one rank resolves and tells the others.
CheckpointArgument resolve_checkpoint_argument(const std::string& argument);

// eval and generate without CONFIG: the config stored in a checkpoint (its root attribute
// `config`, the resolved YAML of the run that wrote it) with `overrides` applied and validated
// exactly as load_config does a file. ConfigError messages name "<checkpoint> (its config)".
Config load_stored_config(const std::string& yaml, const std::string& checkpoint,
                          const std::vector<std::string>& overrides);

// A stored layout that cannot run on `world_size` ranks (parallel.expert_parallel does not
// divide it, e.g. 2 in one process) becomes the single-process layout: expert_parallel 1 and
// communicator auto, except for a key that `overrides` sets. A checkpoint loads under any layout
// and, at a fixed micro-batch size, the numbers do not depend on it (docs/parallel.md). Returns
// the note that says what changed, "" when nothing did.
std::string fit_stored_layout(Config& config, int world_size,
                              const std::vector<std::string>& overrides);

}  // namespace sy
