// The on-disk layout of a checkpoint (docs/checkpoint.md, "Layout"), and reading it back: the
// file names in a checkpoint folder, the root attributes, which dataset holds which tensor, and
// the checks a file must pass before anything is loaded from it. Not collective. How the bytes
// are written is trainer/checkpoint_writer.h's business; when, and by which rank, that of the
// collective save and load in trainer/checkpoint.h (which includes this header).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/hdf5_io.h"
#include "data/token_file.h"
#include "model/backend.h"
#include "model/transformer.h"
#include "optim/optimizer.h"
#include "trainer/config.h"

namespace sy {

// The layout this build writes; files from a newer format are refused.
inline constexpr int64_t kCheckpointFormatVersion = 1;

// A checkpoint that cannot be written, read or used. what() is one line naming the file:
// "<file>: <what is wrong>".
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "step_00000010.h5"
std::string checkpoint_file_name(int64_t step);
// The step of a file named step_<digits>.h5, or -1 for any other name.
int64_t checkpoint_step_of_file_name(const std::string& name);
// (step, path) of every step_*.h5 in `dir`, highest step first.
std::vector<std::pair<int64_t, std::filesystem::path>> checkpoint_step_files(
    const std::filesystem::path& dir);

// The root attributes of a checkpoint.
struct CheckpointHeader {
  std::string path;
  int64_t format_version = 0;
  int64_t step = 0;            // optimizer steps completed; training continues at step + 1
  int64_t optimizer_step = 0;  // the optimizer's own count (AdamW's bias correction)
  std::string config;          // the resolved YAML of the run that wrote it
  std::string provenance;      // "key: value" lines: versions, commit, compiler, rank layout
};

// Opens the file and reads its root attributes (not the tensors). Not collective.
// Throws CheckpointError for a missing, unreadable, truncated or corrupted file, a missing
// attribute, or a format_version newer than kCheckpointFormatVersion.
CheckpointHeader read_checkpoint_header(const std::string& path);

// The tokenizer of the run that wrote the checkpoint: the root attribute `tokenizer` and, for
// SentencePiece, /tokenizer_model (data/token_file.h's read_tokenizer; save_checkpoint copies
// them from data.path's token file). False for a checkpoint written before checkpoints carried
// it. Not collective. Throws CheckpointError "<file>: ..." for a file that cannot be read.
bool read_checkpoint_tokenizer(const std::string& path, TokenData& tokenizer);

// --resume auto: the newest complete checkpoint in `dir`: the file `latest` names if it opens
// and has a valid header and tensor listing, else the loadable step_*.h5 with the highest step.
// Returns "" when there is none. `skipped`, when given, receives one line per candidate passed
// over and why. Files in `exclude` (paths; compared by file name) are passed over silently:
// --resume auto's candidates that failed to load. Not collective (rank 0 decides and tells the
// others).
std::string find_latest_checkpoint(const std::string& dir,
                                   std::vector<std::string>* skipped = nullptr,
                                   const std::vector<std::string>& exclude = {});

// Every dataset of a checkpoint, in file order: path, shape and L2 norm (accumulated in double),
// each read in slices so that memory stays bounded. `listing` is called once with every
// dataset's path and shape before the first norm is computed (for aligned output).
struct TensorInfo {
  std::string path;
  std::vector<int64_t> shape;
  double norm = 0.0;
};
void scan_checkpoint_tensors(const std::string& path,
                             const std::function<void(const std::vector<TensorInfo>&)>& listing,
                             const std::function<void(const TensorInfo&)>& visit);

// ---- the pieces of save_checkpoint and load_checkpoint ---------------------------------------
// Errors below are h5::Hdf5Error or std::runtime_error without the file's path: the caller adds
// it (and agrees on it with the other ranks).

// One tensor of a checkpoint and where it lives in the file.
struct CheckpointEntry {
  std::string dataset;  // "/model/layers/0/attn/wq"
  Tensor tensor;        // this rank's tensor (for experts: its [E/P, ...] slice)
  bool is_expert = false;
  // Model state a checkpoint may lack (an expert bias, when bias balancing is turned on at
  // resume): it then keeps its initial value.
  bool optional = false;
};

// /model/<path> for every param and every expert bias, then /optimizer/exp_avg/<path>,
// /optimizer/exp_avg_sq/<path> for every param that has state, in the params' order.
// `optimizer` may be null (no /optimizer entries); otherwise its state is initialised first.
std::vector<CheckpointEntry> checkpoint_entries(Transformer& model, Optimizer* optimizer,
                                                Backend& backend);

// The root attributes (format_version, step, optimizer_step, config, provenance) and the
// tokenizer, when there is one: the first things in every checkpoint file. `path` names the
// file in the tokenizer's errors.
void write_checkpoint_header(hid_t file, int64_t step, int64_t optimizer_step, const Config& config,
                             const std::string& provenance, const std::optional<TokenData>& tokenizer,
                             const std::string& path);

// Opens a checkpoint read-only; errors say what is wrong with the file (missing, a folder, not
// HDF5, truncated).
h5::Handle open_checkpoint_file(const std::string& path);
// The root attributes of an open checkpoint, checked as read_checkpoint_header(path) says.
CheckpointHeader read_checkpoint_header(hid_t file, const std::string& path);
// Throws unless the open file has a /model group and at least one dataset: what
// find_latest_checkpoint asks of a candidate beyond its header.
void check_checkpoint_has_tensors(hid_t file);

// The dataset `name`, checked to hold floats of shape `expected`; messages name the tensor.
h5::Handle open_checkpoint_tensor(hid_t file, const std::string& name,
                                  const std::vector<int64_t>& expected);
// Reads `into` (host or device, f32 or f64) from rows [first_row, first_row + into.dim(0)) of
// `dataset` (of `file_shape`): an expert tensor one expert at a time, others in blocks of about
// one chunk, so that host memory stays bounded. `staging` is reused between calls.
void read_checkpoint_tensor(hid_t dataset, const std::string& name,
                            const std::vector<int64_t>& file_shape, int64_t first_row,
                            bool is_expert, const Tensor& into, Backend& backend,
                            std::vector<char>& staging);

}  // namespace sy
