// What the command line shares between its subcommands: the build report of
// `switchyard --version`, and the one rule by which a checkpoint argument (of inspect, eval and
// generate) names a checkpoint file.
#pragma once
#include <string>
#include <vector>

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

}  // namespace sy
