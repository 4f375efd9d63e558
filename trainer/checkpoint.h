// HDF5 checkpoints (SPEC.md section 6, docs/checkpoint.md): one file step_<8-digit step>.h5 per
// checkpoint, fp32 datasets under /model/<param path> and /optimizer/{exp_avg,exp_avg_sq}/<path>,
// experts stacked by global index, and the root attributes format_version, step, optimizer_step,
// config and provenance. World rank 0 writes (to <name>.tmp, flushed, fsynced, renamed into
// place; then the `latest` pointer the same way), streaming the other ranks' experts to itself
// one expert at a time; on load every rank reads the non-expert tensors and only its own experts,
// so a checkpoint loads under any rank layout the config allows.
//
// This header is the collective save and load; it includes the parts they tie together, so that
// callers need only it: the layout and reading (trainer/checkpoint_format.h), the config rules of
// a resume (trainer/checkpoint_compat.h), the provenance (trainer/provenance.h) and the snapshot
// memory of asynchronous saves (trainer/checkpoint_snapshot.h). The file writer is
// trainer/checkpoint_writer.h, the atomic renames trainer/atomic_file.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/transformer.h"
#include "optim/optimizer.h"
#include "parallel/process_groups.h"
#include "trainer/checkpoint_compat.h"
#include "trainer/checkpoint_format.h"
#include "trainer/checkpoint_snapshot.h"
#include "trainer/config.h"
#include "trainer/provenance.h"

namespace sy {

// checkpoint.dir, or <run.dir>/checkpoints when it is "".
std::string checkpoint_dir(const Config& config);

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
// Not collective, never throws: waits for the background write (and for the snapshot memory's
// preparation) and returns the write's error ("" when none). For paths that leave by an
// exception, so that no write is cut off and no thread outlives the run.
std::string join_checkpoint_write();

// checkpoint.async: prepares the snapshot's host memory on a thread of its own (world rank 0
// only; a no-op elsewhere and without checkpoint.async), so that the first save stalls the step
// no longer than the later ones (trainer/checkpoint_snapshot.h): sized from the datasets a save
// of `model` and `optimizer` holds (initialising the optimizer's state, as a save would), mapped
// and written once and, on CUDA, page-locked. The memory is held from then on, for
// every later save. save_checkpoint waits for the preparation (its failure becomes that save's
// error) and join_checkpoint_write joins it; `backend` must outlive that. Not collective. Call
// it once the model and optimizer exist (and any resume is loaded), before the first step.
void prepare_checkpoint_snapshot(const Config& config, Transformer& model, Optimizer* optimizer,
                                 ProcessGroups& groups, Backend& backend);
// What the last preparation did and what the saves since took from it (bench_checkpoint
// reports it; tests check it).
SnapshotStatus checkpoint_snapshot_status();

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

// `train --resume`: the point a run continues from.
struct ResumePoint {
  std::string path;    // the checkpoint loaded; "" when "auto" found none (the run starts fresh)
  int64_t step = 0;    // its step: training continues at step + 1 (0 when fresh)
  std::string run_id;  // its provenance's run id ("" when fresh, or written before run ids)
  // What resuming has to say, for rank 0 to print (a line starting "warning" on stderr):
  // checkpoints passed over, "resumed from <path> at step <step>", the config's changes.
  std::vector<std::string> messages;
};

// Collective over groups.world: resumes from `resume`, a checkpoint's path, or "auto": the newest
// complete checkpoint in `dir` as world rank 0 finds it (find_latest_checkpoint), falling back
// past one that looked complete but does not load (a damaged tensor) to the next older one; "auto"
// with no checkpoint at all starts fresh. Loads as load_checkpoint does (the parameters, the
// optimizer's moments and step count when `optimizer` is given). A failed load may have read
// some tensors, but the next one overwrites every tensor and moment. Raises CollectiveError on
// every rank when a named checkpoint does not load, or when no candidate of "auto" does (the
// newest one's error).
ResumePoint resume_from(const std::string& resume, const std::string& dir, const Config& config,
                        Transformer& model, Optimizer* optimizer, ProcessGroups& groups,
                        Backend& backend);

// `config` with model.seq_len as the checkpoint's run had it (`saved_config`: the checkpoint's
// `config` attribute; unchanged where it does not say), for comparing the keys that shape the
// model while the model runs at another length: no parameter depends on model.seq_len (rotary
// positions are computed, not learned). checkpoint.init_from, eval and generate load so.
Config with_saved_seq_len(Config config, const std::string& saved_config);

// `checkpoint.init_from`: a fresh run's starting point taken from another checkpoint.
struct InitPoint {
  std::string path;  // the checkpoint file loaded
  int64_t step = 0;  // its step in the run that wrote it (this run still starts at step 0)
  // For rank 0 to print: how a folder was resolved, what was taken, a sequence length changed.
  std::vector<std::string> messages;
};

// Collective over groups.world: loads the parameters of the checkpoint `argument` names (a file,
// a checkpoints or run folder, a `latest` file; resolved on rank 0, cli.h) into `model`, under any
// rank layout, and nothing else: the optimizer's moments, the step, the learning-rate schedule
// and the data position are the new run's own. The keys that shape the model must be the
// checkpoint's, as for a resume, except model.seq_len: no parameter depends on it (rotary has no
// length). Errors are CollectiveError on every rank, starting "checkpoint.init_from: <path>: ".
InitPoint init_from_checkpoint(const std::string& argument, const Config& config,
                               Transformer& model, ProcessGroups& groups, Backend& backend);

// Tests only: called on the writing rank after the temporary file is complete (flushed and
// fsynced) and before it is renamed into place, with the temporary file's path. Throwing from it
// simulates a crash at that point (the temporary file is left behind, as a crash would leave it).
void set_checkpoint_test_hook(std::function<void(const std::string& temporary_path)> hook);
// Tests only: called first on the thread of the snapshot memory's preparation
// (prepare_checkpoint_snapshot), to hold the preparation back until a save waits for it.
void set_checkpoint_snapshot_test_hook(std::function<void()> hook);

}  // namespace sy
