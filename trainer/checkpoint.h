// HDF5 checkpoints (SPEC.md section 6, docs/checkpoint.md): one file step_<8-digit step>.h5 per
// checkpoint, fp32 datasets under /model/<param path> and /optimizer/{exp_avg,exp_avg_sq}/<path>,
// experts stacked by global index, and the root attributes format_version, step, optimizer_step,
// config and provenance. World rank 0 writes (to <name>.tmp, flushed, fsynced, renamed into
// place; then the `latest` pointer the same way), streaming the other ranks' experts to itself
// one expert at a time; on load every rank reads the non-expert tensors and only its own experts,
// so a checkpoint loads under any rank layout the config allows.
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/transformer.h"
#include "optim/optimizer.h"
#include "data/token_file.h"
#include "parallel/process_groups.h"
#include "trainer/config.h"

namespace sy {

// The layout this build writes; files from a newer format are refused.
inline constexpr int64_t kCheckpointFormatVersion = 1;

// A checkpoint that cannot be written, read or used. what() is one line naming the file:
// "<file>: <what is wrong>".
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// checkpoint.dir, or <run.dir>/checkpoints when it is "".
std::string checkpoint_dir(const Config& config);
// "step_00000010.h5"
std::string checkpoint_file_name(int64_t step);

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

// What changed between the checkpoint's config and this run's (SPEC.md section 6). Each entry
// names the key with both values: "model.d_model (checkpoint 16, config 32)".
struct ConfigDiff {
  std::vector<std::string> errors;    // keys that shape the model: model.*, moe.* (except coefs, *_rate)
  std::vector<std::string> warnings;  // train.micro_batch_size (the routing groups change)
  std::vector<std::string> notes;     // everything else that may change on resume
};
// Throws std::runtime_error when checkpoint_yaml is not a config mapping.
ConfigDiff compare_configs(const std::string& checkpoint_yaml, const Config& config);

// Collective over groups.world: writes <dir>/step_<step>.h5 from world rank 0 (the other ranks of
// the first EP group send it their experts, one expert at a time), updates <dir>/latest, and
// keeps only the newest config.checkpoint.keep_last step files (older ones are removed only after
// the new one is complete). `optimizer` may be null (then no /optimizer group). `run_id`, when
// given, goes into the provenance ("run_id: ...") and keep_last then counts and removes only
// files with that run id. Returns the path on every rank. On failure every rank throws
// CollectiveError naming the file; what was there before (the previous checkpoints and `latest`)
// is untouched.
std::string save_checkpoint(const std::string& dir, int64_t step, const Config& config,
                            Transformer& model, Optimizer* optimizer, ProcessGroups& groups,
                            Backend& backend, const std::string& run_id = "");

// checkpoint.async: true makes save_checkpoint's critical path only a copy of every tensor to
// host memory on world rank 0 (the other ranks' experts received as in a synchronous save); a
// background thread then writes the file from that copy, with the same bytes a synchronous save
// writes (provenance's `created` aside), and publishes it (rename, `latest`, keep_last) as above.
// The returned path exists once the write is done. Each save first waits for the previous
// background write.
//
// Collective over groups.world: waits for the background write of the last asynchronous save,
// if any; when it failed, every rank throws CollectiveError naming the file (the previous
// checkpoints and `latest` untouched). save_checkpoint calls it first; train() before it returns.
void finish_checkpoint_write(ProcessGroups& groups);
// Not collective, never throws: waits for the background write and returns its error ("" when
// none). For paths that leave by an exception, so that no write is cut off.
std::string join_checkpoint_write();

// The run id in a checkpoint's provenance ("" when it has none).
std::string provenance_run_id(const std::string& provenance);

struct LoadResult {
  CheckpointHeader header;
  ConfigDiff diff;  // errors empty; warnings and notes for rank 0 to report
};

// Collective over groups.world: validates the file against `config` and the model (header,
// model-shaping keys, every tensor present with the expected shape), then reads the parameters
// (non-expert tensors whole, experts [ep_rank*E/P, (ep_rank+1)*E/P) by hyperslab) and, when
// `optimizer` is given, its moments and step count. Any problem on any rank raises
// CollectiveError on every rank with one line naming the file (and the tensor or key); nothing
// is loaded unless every check passed on every rank. Ends with model.refresh_compute_weights().
LoadResult load_checkpoint(const std::string& path, const Config& config, Transformer& model,
                           Optimizer* optimizer, ProcessGroups& groups, Backend& backend);

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

// Tests only: called on the writing rank after the temporary file is complete (flushed and
// fsynced) and before it is renamed into place, with the temporary file's path. Throwing from it
// simulates a crash at that point (the temporary file is left behind, as a crash would leave it).
void set_checkpoint_test_hook(std::function<void(const std::string& temporary_path)> hook);

}  // namespace sy
