#include "trainer/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "data/hdf5_io.h"
#include "data/token_file.h"
#include "trainer/atomic_file.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/cli.h"

namespace sy {

namespace fs = std::filesystem;
using h5::Handle;
using h5::Hdf5Error;

namespace {

// set_checkpoint_test_hook's hook: a simulated crash between the temporary file and its rename.
std::function<void(const std::string&)>& test_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

// The run's tokenizer, copied from its token file (data.path) into the checkpoint, so that eval
// and generate need only the checkpoint (docs/checkpoint.md, "Tokenizer"). Without a readable
// token file (a model saved from code, in tests) the checkpoint carries none, as before, and
// says so on stderr once per process (every later save would say the same).
// Read on the calling (main) thread at each save, so that an asynchronous save's writer thread
// touches no file but its own.
std::optional<TokenData> read_run_tokenizer(const Config& config) {
  try {
    return read_token_file_tokenizer(config.data.path);
  } catch (const std::exception& error) {
    static bool said = false;
    if (!said)
      std::fprintf(stderr, "note: checkpoints carry no tokenizer (eval and generate will need "
                   "data.path): %s\n", error.what());
    said = true;
    return std::nullopt;
  }
}

// The writer on world rank 0 (trainer/checkpoint_writer.h): the file layout, direct chunk writes
// with their checksums, early writeback and errno in its errors.
using Writer = CheckpointFileWriter;

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

// set_checkpoint_snapshot_test_hook's hook: runs first on the preparation's thread.
std::function<void()>& snapshot_test_hook() {
  static std::function<void()> hook;
  return hook;
}

// The host memory of asynchronous saves and its preparation (world rank 0 only; one per
// process), kept from one save to the next: a run's saves have the same sizes.
SnapshotMemory& snapshot_memory() {
  static SnapshotMemory memory;
  return memory;
}

// The background write of the last asynchronous save (world rank 0 only; one per process).
BackgroundWrite& background_write() {
  static BackgroundWrite write;
  return write;
}

// Steps 2-5 of docs/checkpoint.md's "Writing", once every dataset is in the temporary file:
// close and fsync it, rename it into place, point `latest` at it, then apply keep_last. `crashed`
// is left true when the test hook simulated a crash (the temporary file then stays).
void publish(Writer& out, const fs::path& temporary_path, const fs::path& final_path,
             const std::string& dir, const Config& config, const std::string& run_id,
             bool& crashed) {
  out.close();
  sync_path(temporary_path, false);
  if (test_hook()) {
    crashed = true;
    test_hook()(temporary_path.string());
    crashed = false;
  }
  rename_into_place(temporary_path, final_path);
  sync_path(fs::path(dir), true);
  write_text_atomically(fs::path(dir) / "latest", final_path.filename().string() + "\n");
  // Only now that the new checkpoint is complete: drop the oldest beyond keep_last, and the
  // temporary files that interrupted saves left behind.
  // With a run id, only this run's files count and go: another run's checkpoints in a
  // shared folder (or files from before run ids, or unreadable ones) are left alone.
  int64_t kept = 1;
  for (const auto& [file_step, path] : checkpoint_step_files(dir)) {
    if (path.filename() == final_path.filename()) continue;
    if (!run_id.empty()) {
      try {
        if (provenance_run_id(read_checkpoint_header(path.string()).provenance) != run_id) continue;
      } catch (const std::exception& error) {
        std::fprintf(stderr, "note: checkpoint.keep_last leaves %s alone: its run id cannot be "
                     "read: %s\n", path.c_str(), error.what());
        continue;
      }
    }
    if (++kept > config.checkpoint.keep_last) fs::remove(path);
  }
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
        checkpoint_step_of_file_name(name.substr(0, name.size() - 4)) >= 0)
      fs::remove(entry.path(), error);
  }
}

// One dataset of an asynchronous save, copied to host memory in the tensor's own dtype (f64 is
// rounded to f32 by the writer, as in a synchronous save).
struct SnapshotTensor {
  std::string dataset;
  std::vector<int64_t> shape;  // the file's shape: [E, ...] for experts
  bool is_expert = false;
  DType dtype = DType::f32;
  char* bytes = nullptr;       // in the save's SnapshotArena
};

bool hdf5_threadsafe() {
  hbool_t threadsafe = 0;
  return H5is_library_threadsafe(&threadsafe) >= 0 && threadsafe;
}

// The data phase of a collective load: read(item, staging) for every item, after every check
// passed on every rank; a read error (a checksum that does not match) fails the load everywhere.
template <class Items, class Read>
void read_on_every_rank(Communicator& world, const std::string& path, const Items& items,
                        Read read) {
  std::string problem;
  try {
    std::vector<char> staging;
    for (const auto& item : items) read(item, staging);
  } catch (const std::exception& error) {
    problem = path + ": " + error.what();
  }
  agree_or_throw(world, problem);
}

}  // namespace

std::string checkpoint_dir(const Config& config) {
  return config.checkpoint.dir.empty() ? (fs::path(config.run.dir) / "checkpoints").string()
                                       : config.checkpoint.dir;
}

void set_checkpoint_test_hook(std::function<void(const std::string&)> hook) {
  test_hook() = std::move(hook);
}

void set_checkpoint_snapshot_test_hook(std::function<void()> hook) {
  snapshot_test_hook() = std::move(hook);
}

void prepare_checkpoint_snapshot(const Config& config, Transformer& model, Optimizer* optimizer,
                                 ProcessGroups& groups, Backend& backend) {
  if (!config.checkpoint.async || groups.world->rank() != 0) return;
  // The same entries, in the same order, as save_checkpoint walks.
  const std::vector<size_t> dataset_bytes =
      snapshot_dataset_bytes(checkpoint_entries(model, optimizer, backend), groups.ep_size());
  snapshot_memory().prepare(dataset_bytes, backend, snapshot_test_hook());
}

SnapshotStatus checkpoint_snapshot_status() { return snapshot_memory().status(); }

void finish_checkpoint_write(ProcessGroups& groups) {
  const std::string problem = background_write().wait();  // "" on every rank but world rank 0
  groups.world->barrier_sleeping();  // the other ranks sleep while rank 0 waits
  agree_or_throw(*groups.world, problem);
}

std::string join_checkpoint_write() {
  const std::string error = background_write().wait();
  snapshot_memory().wait();  // its failure matters only to a save, which reports it
  return error;
}

std::string save_checkpoint(const std::string& dir, int64_t step, const Config& config,
                            Transformer& model, Optimizer* optimizer, ProcessGroups& groups,
                            Backend& backend, const std::string& run_id) {
  // The previous asynchronous save's file must be complete (or its error known) before the next
  // one starts: one background write at a time, and a failure surfaces here on every rank.
  finish_checkpoint_write(groups);
  Communicator& world = *groups.world;
  Communicator& ep = *groups.expert_parallel;
  const bool writer = world.rank() == 0;
  // The first EP group (world ranks 0..P-1) holds every expert once; its other ranks send theirs.
  const bool sender = !writer && groups.rank() < groups.ep_size();
  const int P = groups.ep_size();
  const fs::path final_path = fs::path(dir) / checkpoint_file_name(step);
  const fs::path temporary_path = final_path.string() + ".tmp";
  // checkpoint.async: the writer copies every tensor to host memory (receiving the other ranks'
  // experts as a synchronous save does) and a background thread writes the file from the copy.
  const bool async = config.checkpoint.async;
  const int64_t optimizer_step = optimizer ? optimizer->step_count() : step;

  std::vector<CheckpointEntry> entries = checkpoint_entries(model, optimizer, backend);
  std::string problem;
  std::unique_ptr<Writer> out;
  std::shared_ptr<SnapshotArena> arena;  // async: the snapshot's memory, dataset i for entries[i]
  std::vector<SnapshotTensor> snapshot;
  bool snapshot_ok = async;
  h5::QuietErrors quiet;
  auto fail = [&](const std::exception& error) {
    if (problem.empty()) problem = temporary_path.string() + ": " + error.what();
    out.reset();
    snapshot_ok = false;
    snapshot.clear();
  };
  if (writer) {
    try {
      std::error_code error;
      fs::create_directories(dir, error);
      if (error) throw std::runtime_error("cannot create folder " + dir + ": " + error.message());
      if (async) arena = snapshot_memory().take(snapshot_dataset_bytes(entries, P));
      if (!async) {
        out = std::make_unique<Writer>(temporary_path);
        write_checkpoint_header(out->file(), step, optimizer_step, config,
                                checkpoint_provenance(config, groups.size(), groups.ep_size(), run_id),
                                read_run_tokenizer(config), temporary_path.string());
      }
    } catch (const std::exception& error) {
      fail(error);
    }
  }
  // Where the writer's rows go: the file, or (async) the snapshot's bytes.
  auto take_rows = [&](int64_t row, const Tensor& rows) {
    if (out) {
      out->write_tensor_rows(row, rows, backend);
    } else if (snapshot_ok) {
      const size_t row_bytes = rows.nbytes() / std::max<int64_t>(1, rows.dim(0));
      backend.copy_to_host(snapshot.back().bytes + row * row_bytes, rows);
    }
  };
  auto begin_dataset = [&](const std::string& dataset, const Shape& shape, bool is_expert,
                           const Tensor& like) {
    if (out) {
      out->create(dataset, shape, is_expert);
    } else if (snapshot_ok) {
      const DType dtype = host_dtype(like.dtype());  // what copy_to_host gives
      if (dtype != DType::f32 && dtype != DType::f64)
        throw std::runtime_error(std::string("checkpoint: cannot store a ") + dtype_name(dtype) +
                                 " tensor (master weights are f32 or f64)");
      // Datasets begin in the entries' order, so the snapshot's next is the arena's next.
      char* bytes = arena->dataset(snapshot.size());
      snapshot.push_back({dataset, shape, is_expert, dtype, bytes});
    }
  };
  auto end_dataset = [&] {
    if (out) out->finish_dataset();
  };
  auto writing = [&] { return static_cast<bool>(out) || snapshot_ok; };

  Tensor incoming;  // one expert slice from another rank (writer only)
  for (const CheckpointEntry& entry : entries) {
    const Tensor& local = entry.tensor;
    if (!entry.is_expert) {
      if (!writer || !writing()) continue;
      try {
        if (local.ndim() == 0) throw std::runtime_error("cannot store a 0-d tensor " + entry.dataset);
        begin_dataset(entry.dataset, local.shape(), false, local);
        take_rows(0, local);
        end_dataset();
      } catch (const std::exception& error) {
        fail(error);
      }
      continue;
    }
    // Experts: [E/P, ...] here, [E, ...] in the file, expert by expert.
    const int64_t per_rank = local.dim(0);
    if (sender) {
      for (int64_t j = 0; j < per_rank; ++j) ep.send_sleeping(local.rows(j, j + 1), 0);
      continue;
    }
    if (!writer) continue;
    Shape full = local.shape();
    full[0] = per_rank * P;
    try {
      if (writing()) begin_dataset(entry.dataset, full, true, local);
      for (int64_t j = 0; j < per_rank && writing(); ++j) take_rows(j, local.rows(j, j + 1));
    } catch (const std::exception& error) {
      fail(error);
    }
    if (P > 1) {
      Shape slice = local.shape();
      slice[0] = 1;
      if (!incoming.defined() || incoming.shape() != slice || incoming.dtype() != local.dtype())
        incoming = backend.alloc(slice, local.dtype());
      // Keep receiving after a failure, so that the senders are never left waiting.
      for (int q = 1; q < P; ++q)
        for (int64_t j = 0; j < per_rank; ++j) {
          ep.recv(incoming, q);
          try {
            if (writing()) take_rows(q * per_rank + j, incoming);
          } catch (const std::exception& error) {
            fail(error);
          }
        }
    }
    try {
      end_dataset();
    } catch (const std::exception& error) {
      fail(error);
    }
  }

  if (writer && async && snapshot_ok) {
    // The file from the snapshot, on a thread of its own; its error surfaces at the next save or
    // at finish_checkpoint_write. No MPI and no backend calls there: only host memory and HDF5.
    // It holds `arena`, so the memory it reads stays mapped until it is done.
    auto tensors = std::make_shared<std::vector<SnapshotTensor>>(std::move(snapshot));
    auto write = [tensors, arena, temporary_path, final_path, dir, config, run_id, step,
                  optimizer_step,
                  provenance_text =
                      checkpoint_provenance(config, groups.size(), groups.ep_size(), run_id),
                  tokenizer = read_run_tokenizer(config)]() -> std::string {
      h5::QuietErrors quiet_here;  // HDF5's error printing is set per thread
      bool crashed = false;
      bool published = false;
      try {
        Writer file(temporary_path);
        write_checkpoint_header(file.file(), step, optimizer_step, config, provenance_text,
                                tokenizer, temporary_path.string());
        for (SnapshotTensor& tensor : *tensors) {
          file.create(tensor.dataset, tensor.shape, tensor.is_expert);
          file.write_rows(0, tensor.shape[0], tensor.bytes, tensor.dtype);
          file.finish_dataset();
        }
        published = true;  // from here on, errors name the final file, as a synchronous save's do
        publish(file, temporary_path, final_path, dir, config, run_id, crashed);
        return "";
      } catch (const std::exception& error) {
        if (!crashed) {
          std::error_code ignored;
          fs::remove(temporary_path, ignored);
        }
        return (published ? final_path : temporary_path).string() + ": " + error.what();
      }
    };
    if (hdf5_threadsafe()) {
      background_write().start(std::move(write));
    } else {  // HDF5 built without thread safety: write now, on this thread
      problem = write();
    }
  } else if (writer && out) {
    bool crashed = false;  // the test hook simulates a crash: the temporary file stays
    try {
      publish(*out, temporary_path, final_path, dir, config, run_id, crashed);
      out.reset();
    } catch (const std::exception& error) {
      if (problem.empty()) problem = final_path.string() + ": " + error.what();
      out.reset();
      if (!crashed) {
        std::error_code ignored;
        fs::remove(temporary_path, ignored);
      }
    }
  } else if (writer) {
    std::error_code ignored;
    fs::remove(temporary_path, ignored);  // a failed save leaves nothing half-written behind
  }
  world.barrier_sleeping();  // the other ranks sleep while the writer works
  agree_or_throw(world, problem);
  return final_path.string();
}

LoadResult load_checkpoint(const std::string& path, const Config& config, Transformer& model,
                           Optimizer* optimizer, ProcessGroups& groups, Backend& backend) {
  Communicator& world = *groups.world;
  h5::QuietErrors quiet;
  LoadResult result;
  Handle file;
  struct Item {
    CheckpointEntry entry;
    Handle dataset;
    std::vector<int64_t> file_shape;
    int64_t first_row = 0;  // experts: this rank's first global expert
  };
  std::vector<Item> items;
  bool restore_optimizer = false;
  std::string problem;
  // Phase 1: every check, on every rank, before anything is written into the model.
  try {
    file = open_checkpoint_file(path);
    result.header = read_checkpoint_header(file.get(), path);
    result.diff = compare_configs(result.header.config, config);
    if (!result.diff.errors.empty())
      throw Hdf5Error("the config differs from the checkpoint's in keys that shape the model: " +
                      join(result.diff.errors, ", "));
    const std::string saved_optimizer =
        checkpoint_config_value(result.header.config, "train.optimizer");
    restore_optimizer = optimizer && saved_optimizer == to_string(config.train.optimizer);
    if (optimizer && !restore_optimizer)
      result.diff.notes.push_back("optimizer state starts fresh: the checkpoint was written with " +
                                  (saved_optimizer.empty() ? std::string("an unknown optimizer")
                                                           : saved_optimizer));
    const int P = groups.ep_size();
    for (CheckpointEntry& entry :
         checkpoint_entries(model, restore_optimizer ? optimizer : nullptr, backend)) {
      if (entry.optional && !h5::link_exists(file.get(), entry.dataset)) {
        result.diff.notes.push_back(entry.dataset + " is not in the checkpoint: starts at zero");
        continue;
      }
      Item item;
      item.file_shape = entry.tensor.shape();
      if (entry.is_expert) {
        item.file_shape[0] = entry.tensor.dim(0) * P;
        item.first_row = groups.ep_rank() * entry.tensor.dim(0);
      }
      item.dataset = open_checkpoint_tensor(file.get(), entry.dataset, item.file_shape);
      item.entry = std::move(entry);
      items.push_back(std::move(item));
    }
    if (model.expert_biases().empty())
      for (int64_t l = 0; l < config.model.n_layers; ++l) {
        const std::string bias = "/model/layers/" + std::to_string(l) + "/moe/expert_bias";
        if (h5::link_exists(file.get(), bias))
          result.diff.notes.push_back(bias + " is not used: moe.bias_update_rate is 0");
      }
  } catch (const std::exception& error) {
    problem = path + ": " + error.what();
  }
  agree_or_throw(world, problem);

  // Phase 2: the data.
  read_on_every_rank(world, path, items, [&](const Item& item, std::vector<char>& staging) {
    read_checkpoint_tensor(item.dataset.get(), item.entry.dataset, item.file_shape, item.first_row,
                           item.entry.is_expert, item.entry.tensor, backend, staging);
  });
  if (restore_optimizer) optimizer->set_step_count(result.header.optimizer_step);
  model.refresh_compute_weights();
  return result;
}

namespace {

// The checkpoint `resume` names, or for "auto" the newest complete one in `dir` as rank 0 finds
// it, passing over `failed` ("" when there is none). Collective over `world`.
std::string resolve_resume(const std::string& resume, const std::string& dir, Communicator& world,
                           std::vector<std::string>& messages,
                           const std::vector<std::string>& failed) {
  if (resume != "auto") return resume;
  std::string found, problem;
  std::vector<std::string> skipped;
  if (world.rank() == 0) {
    try {
      found = find_latest_checkpoint(dir, &skipped, failed);
    } catch (const std::exception& error) {
      problem = dir + ": " + error.what();
    }
  }
  agree_or_throw(world, problem);
  found = world.all_gather_host(found)[0];
  if (!failed.empty()) return found;  // what was skipped is said already
  for (const std::string& line : skipped)  // rank 0's findings (only rank 0 reports them)
    if (line.find("latest: missing") == std::string::npos || found.empty())
      messages.push_back("resume auto: skipped " + line);
  if (found.empty())
    messages.push_back("resume auto: no checkpoint in " + dir + "; starting fresh");
  return found;
}

}  // namespace

ResumePoint resume_from(const std::string& resume, const std::string& dir, const Config& config,
                        Transformer& model, Optimizer* optimizer, ProcessGroups& groups,
                        Backend& backend) {
  ResumePoint point;
  std::vector<std::string> failed;
  std::string first_error;
  LoadResult loaded;
  for (;;) {
    point.path = resolve_resume(resume, dir, *groups.world, point.messages, failed);
    if (point.path.empty()) {
      if (!failed.empty()) throw CollectiveError(first_error);
      return point;  // "auto" found nothing: a fresh start
    }
    try {
      loaded = load_checkpoint(point.path, config, model, optimizer, groups, backend);
      break;
    } catch (const CollectiveError& error) {
      if (resume != "auto") throw;
      if (first_error.empty()) first_error = error.what();
      failed.push_back(point.path);
      point.messages.push_back(std::string("warning: resume auto: skipped ") + error.what() +
                               "; trying an older checkpoint");
    }
  }
  point.step = loaded.header.step;
  point.run_id = provenance_run_id(loaded.header.provenance);
  point.messages.push_back("resumed from " + point.path + " at step " + std::to_string(point.step));
  for (const std::string& line : loaded.diff.notes)
    point.messages.push_back("note: changed since the checkpoint: " + line);
  for (const std::string& line : loaded.diff.warnings)
    point.messages.push_back(
        "warning: changed since the checkpoint: " + line +
        "; the routing groups differ, so the run does not continue the checkpoint's trajectory "
        "exactly");
  return point;
}

namespace {

// checkpoint.upcycle: `config` as the dense model its checkpoint must be: the moe section at its
// defaults (no experts) and the dense FFN as wide as the experts.
Config dense_counterpart(const Config& config) {
  Config dense = config;
  dense.moe = MoeConfig{};
  dense.moe.num_experts = 0;
  dense.model.ffn_hidden = config.moe.expert_hidden;
  return dense;
}

// checkpoint.upcycle: the dense checkpoint `path` into the MoE `model`. Every parameter comes
// from its own dataset, each expert slice of layers/l/moe/experts/w from layers/l/ffn/w (every
// expert starts as the layer's dense FFN: sparse upcycling, Komatsuzaki et al. 2022); the
// routers (and expert biases) stay as initialised, so the experts part as the router learns.
// Collective, with load_checkpoint's two phases: every check on every rank, then the data.
CheckpointHeader load_upcycled(const std::string& path, const Config& config, Transformer& model,
                               ProcessGroups& groups, Backend& backend) {
  Communicator& world = *groups.world;
  h5::QuietErrors quiet;
  struct Item {
    std::string dataset;
    Tensor into;  // a parameter, or one expert's slice of one
    Handle handle;
  };
  std::vector<Item> items;
  Handle file;
  CheckpointHeader header;
  std::string problem;
  try {
    file = open_checkpoint_file(path);
    header = read_checkpoint_header(file.get(), path);
    const std::string experts = checkpoint_config_value(header.config, "moe.num_experts");
    if (!experts.empty() && experts != "0")
      throw std::runtime_error(
          "checkpoint.upcycle needs a dense checkpoint; this one has "
          "moe.num_experts " +
          experts);
    const ConfigDiff diff = compare_configs(header.config, dense_counterpart(config));
    if (!diff.errors.empty())
      throw std::runtime_error(
          "the config differs from the checkpoint's in keys that shape the model (upcycled: "
          "its dense FFN as wide as moe.expert_hidden): " +
          join(diff.errors, ", "));
    const std::string experts_dir = "moe/experts/";
    for (Param* param : model.params()) {
      const std::string& path_of = param->path;
      const size_t at = path_of.find(experts_dir);
      if (!param->is_expert) {
        if (path_of.find("/moe/router") == std::string::npos)
          items.push_back({"/model/" + path_of, param->value, {}});
        continue;
      }
      const std::string source =
          "/model/" + path_of.substr(0, at) + "ffn/" + path_of.substr(at + experts_dir.size());
      const Shape slice(param->value.shape().begin() + 1, param->value.shape().end());
      for (int64_t j = 0; j < param->value.dim(0); ++j)
        items.push_back({source, param->value.rows(j, j + 1).reshape(slice), {}});
    }
    for (Item& item : items)
      item.handle = open_checkpoint_tensor(file.get(), item.dataset, item.into.shape());
  } catch (const std::exception& error) {
    problem = path + ": " + error.what();
  }
  agree_or_throw(world, problem);
  read_on_every_rank(world, path, items, [&](const Item& item, std::vector<char>& staging) {
    read_checkpoint_tensor(item.handle.get(), item.dataset, item.into.shape(), 0, false, item.into,
                           backend, staging);
  });
  model.refresh_compute_weights();
  return header;
}

}  // namespace

Config with_saved_seq_len(Config config, const std::string& saved_config) {
  const std::string saved_seq_len = checkpoint_config_value(saved_config, "model.seq_len");
  if (!saved_seq_len.empty()) config.model.seq_len = std::stoll(saved_seq_len);
  return config;
}

InitPoint init_from_checkpoint(const std::string& argument, const Config& config,
                               Transformer& model, ProcessGroups& groups, Backend& backend) {
  Communicator& world = *groups.world;
  const std::string key = "checkpoint.init_from: ";
  InitPoint point;
  std::string problem;
  if (world.rank() == 0) {
    try {
      CheckpointArgument resolved = resolve_checkpoint_argument(argument);
      point.path = resolved.path;
      for (const std::string& note : resolved.notes) point.messages.push_back("note: " + note);
    } catch (const std::exception& error) {
      problem = key + error.what();
    }
  }
  agree_or_throw(world, problem);
  point.path = world.all_gather_host(point.path)[0];

  Config as_saved = config;
  try {
    as_saved = with_saved_seq_len(config, read_checkpoint_header(point.path).config);
  } catch (const std::exception& error) {
    problem = key + point.path + ": " + error.what();
  }
  agree_or_throw(world, problem);
  try {
    point.step =
        config.checkpoint.upcycle
            ? load_upcycled(point.path, as_saved, model, groups, backend).step
            : load_checkpoint(point.path, as_saved, model, nullptr, groups, backend).header.step;
  } catch (const CollectiveError& error) {
    throw CollectiveError(key + error.what());
  }
  point.messages.push_back(
      (config.checkpoint.upcycle ? "upcycled from " : "initialised from ") + point.path +
      " (step " + std::to_string(point.step) + " of its run): its parameters only" +
      (config.checkpoint.upcycle
           ? ", every expert of an MoE layer as that layer's dense FFN, the routers as initialised"
           : "") +
      "; the optimizer state, the step, the learning-rate schedule and the data start fresh");
  if (as_saved.model.seq_len != config.model.seq_len)
    point.messages.push_back("note: model.seq_len " + std::to_string(config.model.seq_len) +
                             ", the checkpoint's run " + std::to_string(as_saved.model.seq_len));
  return point;
}

}  // namespace sy
