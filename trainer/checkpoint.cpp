#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <system_error>

#include "parallel/mpi_communicator.h"
#include "data/hdf5_io.h"
#include "data/token_file.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/version.h"

namespace sy {

namespace fs = std::filesystem;
using h5::Handle;
using h5::Hdf5Error;

namespace {

// Non-expert tensors are stored in chunks of whole rows of about this size; an expert tensor in
// one chunk per expert. Every chunk carries a Fletcher-32 checksum, so that a damaged file is
// reported instead of loaded.
constexpr int64_t kChunkBytes = CheckpointFileWriter::kChunkBytes;

std::function<void(const std::string&)>& test_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

// ---- what a checkpoint holds -------------------------------------------------------------------

struct Entry {
  std::string dataset;  // "/model/layers/0/attn/wq"
  Tensor tensor;        // this rank's tensor (for experts: its [E/P, ...] slice)
  bool is_expert = false;
  // Model state a checkpoint may lack (an expert bias, when bias balancing is turned on at
  // resume): it then keeps its initial value.
  bool optional = false;
};

// /model/<path> for every param and every expert bias, then /optimizer/exp_avg/<path>,
// /optimizer/exp_avg_sq/<path> for every param that has state, in the params' order.
std::vector<Entry> checkpoint_entries(Transformer& model, Optimizer* optimizer, Backend& backend) {
  std::vector<Param*> params = model.params();
  std::vector<Entry> entries;
  for (Param* param : params)
    entries.push_back({"/model/" + param->path, param->value, param->is_expert});
  for (auto& [path, bias] : model.expert_biases())
    entries.push_back({"/model/" + path, bias, false, true});
  if (!optimizer) return entries;
  optimizer->init_state(backend, params);
  std::map<std::string, Tensor> state;
  std::vector<std::string> kinds;  // "exp_avg", "exp_avg_sq", in the optimizer's order
  for (auto& [name, tensor] : optimizer->state_tensors()) {
    const size_t slash = name.find('/');
    if (slash == std::string::npos) throw std::runtime_error("optimizer state " + name + " has no kind");
    const std::string kind = name.substr(0, slash);
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
    state[name] = tensor;
  }
  for (const std::string& kind : kinds)
    for (Param* param : params) {
      auto found = state.find(kind + "/" + param->path);
      if (found == state.end()) continue;
      entries.push_back({"/optimizer/" + kind + "/" + param->path, found->second, param->is_expert});
    }
  return entries;
}

hid_t memory_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    default: throw std::runtime_error(std::string("checkpoint: cannot store a ") + dtype_name(dtype) +
                                      " tensor (master weights are f32 or f64)");
  }
}

int64_t row_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

// Rows per chunk (and per read or write) of a non-expert tensor.
int64_t block_rows(const std::vector<int64_t>& shape, size_t element_bytes) {
  if (shape.empty()) return 1;
  const int64_t row_bytes = std::max<int64_t>(1, row_elements(shape) * element_bytes);
  return std::clamp<int64_t>(kChunkBytes / row_bytes, 1, std::max<int64_t>(shape[0], 1));
}

std::string shape_text(const std::vector<int64_t>& shape) { return shape_str(Shape(shape)); }

// Rows [row, row + count) of `dataset`, as a file dataspace selection and a memory dataspace.
struct Slab {
  Handle file_space, memory_space;
};
Slab select_rows(hid_t dataset, const std::vector<int64_t>& shape, int64_t row, int64_t count) {
  Slab slab;
  slab.file_space = h5::own(H5Dget_space(dataset), H5Sclose, "cannot get dataspace");
  std::vector<hsize_t> start(shape.size(), 0), counts(shape.begin(), shape.end());
  if (!shape.empty()) {
    start[0] = row;
    counts[0] = count;
  }
  if (!shape.empty())
    h5::check(H5Sselect_hyperslab(slab.file_space.get(), H5S_SELECT_SET, start.data(), nullptr,
                                  counts.data(), nullptr),
              "cannot select rows");
  slab.memory_space = h5::own(H5Screate_simple(static_cast<int>(counts.size()), counts.data(), nullptr),
                              H5Sclose, "cannot create dataspace");
  return slab;
}

// ---- writing -----------------------------------------------------------------------------------

std::string quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n' || c == '\r') continue;
    out += c;
  }
  return out + "\"";
}

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, std::clamp(length, 0, MPI_MAX_LIBRARY_VERSION_STRING - 1));
  const size_t end = version.find_first_of(std::string("\n\0", 2));
  if (end != std::string::npos) version.resize(end);
  while (!version.empty() && (version.back() == ' ' || version.back() == ',')) version.pop_back();
  return version;
}

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown";
#endif
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  gmtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &parts);
  return text;
}

std::string provenance(const Config& config, const ProcessGroups& groups,
                       const std::string& run_id) {
  std::string out;
  if (!run_id.empty()) out += "run_id: " + quote(run_id) + "\n";
  out += "switchyard: " + quote(SY_VERSION) + "\n";
  out += "git_commit: " + quote(SY_GIT_COMMIT) + "\n";
  out += "hdf5: " + quote(h5::library_version()) + "\n";
  out += "mpi: " + quote(mpi_library_version()) + "\n";
  out += "compiler: " + quote(compiler_version()) + "\n";
  out += "ranks: " + std::to_string(groups.size()) + "\n";
  out += "expert_parallel: " + std::to_string(groups.ep_size()) + "\n";
  out += "backend: " + quote(config.run.backend) + "\n";
  out += "created: " + quote(utc_now()) + "\n";
  return out;
}

// The run's tokenizer, copied from its token file (data.path) into the checkpoint, so that eval
// and generate need only the checkpoint (docs/checkpoint.md, "Tokenizer"). Without a readable
// token file (a model saved from code, in tests) the checkpoint carries none, as before.
// Read on the calling (main) thread at each save, so that an asynchronous save's writer thread
// touches no file but its own.
std::optional<TokenData> read_run_tokenizer(const Config& config) {
  try {
    return read_token_file_tokenizer(config.data.path);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// fsync of a file or folder by path, so that a rename is never reached before the data is on disk.
void sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0)
    throw std::runtime_error("cannot open " + path.string() + " to sync it: " + std::strerror(errno));
  const int status = ::fsync(fd);
  const int sync_errno = errno;
  ::close(fd);
  if (status != 0 && !directory)  // some file systems refuse fsync on folders; data files must sync
    throw std::runtime_error("cannot sync " + path.string() + " to disk: " + std::strerror(sync_errno));
}

void rename_into_place(const fs::path& from, const fs::path& to) {
  std::error_code error;
  fs::rename(from, to, error);
  if (error)
    throw std::runtime_error("cannot rename " + from.string() + " to " + to.string() + ": " +
                             error.message());
}

// Writes a small text file atomically: <path>.tmp, fsync, rename, fsync of the folder.
void write_text_atomically(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + temporary.string() + ": " + std::strerror(errno));
  const ssize_t wrote = ::write(fd, text.data(), text.size());
  const bool written = wrote == static_cast<ssize_t>(text.size());
  // A short write without an errno is the disk filling up at the last byte.
  const int write_errno = written ? 0 : (wrote < 0 ? errno : ENOSPC);
  const bool synced = written && ::fsync(fd) == 0;
  const int sync_errno = errno;
  ::close(fd);
  if (!synced) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw std::runtime_error("cannot write " + temporary.string() + ": " +
                             std::strerror(written ? sync_errno : write_errno));
  }
  rename_into_place(temporary, path);
  sync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), true);
}

// The step of a file named step_<digits>.h5, or -1.
int64_t step_of_file_name(const std::string& name) {
  static const std::regex pattern(R"(step_(\d{1,18})\.h5)");
  std::smatch match;
  if (!std::regex_match(name, match, pattern)) return -1;
  return std::stoll(match[1].str());
}

// (step, path) of every step_*.h5 in `dir`, highest step first.
std::vector<std::pair<int64_t, fs::path>> step_files(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const int64_t step = step_of_file_name(entry.path().filename().string());
    if (step >= 0 && entry.is_regular_file(error)) files.emplace_back(step, entry.path());
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return files;
}

// The writer on world rank 0 (trainer/checkpoint_writer.h): the file layout, direct chunk writes
// with their checksums, early writeback and errno in its errors.
using Writer = CheckpointFileWriter;

// Waits for every rank of `group` without spinning: the ranks that finished their part of a save
// sleep between polls, so that on a machine with few cores the writer keeps the CPU (and the
// kernel's writeback) to itself. Falls back to a plain barrier on other communicators.
void wait_quietly(Communicator& group) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&group);
  if (!mpi) {
    group.barrier();
    return;
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(mpi->comm(), &request);
  int done = 0;
  MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  while (!done) {
    ::usleep(1000);
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  }
}

// group.send(x, peer), but sleeping between polls while the writer is busy with the ranks before
// this one (a blocking send would spin). Matches MpiCommunicator::recv: same datatype, tag 0.
void send_quietly(Communicator& group, const Tensor& x, int peer, Backend& backend,
                  std::vector<char>& staging) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&group);
  if (!mpi || (x.dtype() != DType::f32 && x.dtype() != DType::f64)) {
    group.send(x, peer);
    return;
  }
  void* data = x.data();
  if (x.device() != Device::cpu) {
    staging.resize(x.nbytes());
    backend.copy_to_host(staging.data(), x);
    data = staging.data();
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Isend(data, static_cast<int>(x.numel()), x.dtype() == DType::f32 ? MPI_FLOAT : MPI_DOUBLE,
            peer, 0, mpi->comm(), &request);
  int done = 0;
  MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  while (!done) {
    ::usleep(200);
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  }
}

// ---- reading -----------------------------------------------------------------------------------

// Opens a checkpoint read-only; errors say what is wrong with the file (no path: callers add it).
Handle open_file(const std::string& path) {
  std::error_code error;
  if (!fs::exists(path, error)) throw Hdf5Error("no such file");
  if (fs::is_directory(path, error)) throw Hdf5Error("is a folder, not a checkpoint file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) throw Hdf5Error("not an HDF5 file (corrupted, or not a checkpoint)");
  if (is_hdf5 < 0) h5::check(-1, "cannot open");
  return h5::own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                 "cannot open as HDF5 (truncated or corrupted)");
}

CheckpointHeader read_header(hid_t file, const std::string& path) {
  CheckpointHeader header;
  header.path = path;
  if (!h5::has_attribute(file, "format_version"))
    throw Hdf5Error("no attribute format_version (not a Switchyard checkpoint?)");
  header.format_version = h5::read_int_attribute(file, "format_version");
  if (header.format_version > kCheckpointFormatVersion)
    throw Hdf5Error("format_version " + std::to_string(header.format_version) +
                    " is newer than this build reads (" + std::to_string(kCheckpointFormatVersion) +
                    "); load it with a newer switchyard");
  if (header.format_version < 1)
    throw Hdf5Error("format_version " + std::to_string(header.format_version) + " is not valid");
  header.step = h5::read_int_attribute(file, "step");
  header.optimizer_step = h5::read_int_attribute(file, "optimizer_step");
  if (header.step < 0 || header.optimizer_step < 0)
    throw Hdf5Error("negative step " + std::to_string(header.step) + " or optimizer_step " +
                    std::to_string(header.optimizer_step));
  header.config = h5::read_string_attribute(file, "config");
  header.provenance =
      h5::has_attribute(file, "provenance") ? h5::read_string_attribute(file, "provenance") : "";
  return header;
}

// Opens `path`, checks and returns a dataset of `expected` shape; messages name the tensor.
Handle open_dataset(hid_t file, const std::string& path, const std::vector<int64_t>& expected) {
  if (!h5::link_exists(file, path)) throw Hdf5Error("missing tensor " + path);
  Handle dataset = h5::own(H5Dopen2(file, path.c_str(), H5P_DEFAULT), H5Dclose,
                           "cannot open tensor " + path);
  Handle type = h5::own(H5Dget_type(dataset.get()), H5Tclose, "cannot inspect tensor " + path);
  if (H5Tget_class(type.get()) != H5T_FLOAT) throw Hdf5Error(path + " does not hold floats");
  const std::vector<int64_t> shape = h5::dataset_shape(dataset.get());
  if (shape != expected)
    throw Hdf5Error(path + " has shape " + shape_text(shape) + ", the config needs " +
                    shape_text(expected));
  return dataset;
}

// Reads rows [row, row + into.dim(0)) of `dataset` into a tensor (host or device).
void read_rows(hid_t dataset, const std::string& path, const std::vector<int64_t>& shape,
               int64_t row, const Tensor& into, Backend& backend, std::vector<char>& staging) {
  staging.resize(into.nbytes());
  Slab slab = select_rows(dataset, shape, row, into.ndim() ? into.dim(0) : 1);
  h5::check(H5Dread(dataset, memory_type(into.dtype()), slab.memory_space.get(), slab.file_space.get(),
                    H5P_DEFAULT, staging.data()),
            "cannot read " + path);
  backend.copy_from_host(into, staging.data());
}

// ---- configs -----------------------------------------------------------------------------------

std::string render(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "null";
  if (node.IsScalar()) return node.Scalar();
  std::string out = node.IsSequence() ? "[" : "{";
  bool first = true;
  for (auto it = node.begin(); it != node.end(); ++it) {
    out += first ? "" : ", ";
    first = false;
    if (node.IsSequence())
      out += render(*it);
    else
      out += render(it->first) + ": " + render(it->second);
  }
  return out + (node.IsSequence() ? "]" : "}");
}

// Every key of a resolved config as "section.key" -> value text, in file order.
std::vector<std::pair<std::string, std::string>> flatten_config(const std::string& yaml) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& error) {
    throw std::runtime_error(std::string("its config attribute is not valid YAML: ") + error.what());
  }
  if (!root.IsMap()) throw std::runtime_error("its config attribute is not a YAML mapping");
  std::vector<std::pair<std::string, std::string>> keys;
  for (auto section = root.begin(); section != root.end(); ++section) {
    const std::string name = section->first.Scalar();
    if (section->second.IsMap())
      for (auto key = section->second.begin(); key != section->second.end(); ++key)
        keys.emplace_back(name + "." + key->first.Scalar(), render(key->second));
    else
      keys.emplace_back(name, render(section->second));
  }
  return keys;
}

bool shapes_model(const std::string& key) {
  if (key == "model.attention_kernel") return false;  // how, not what: any kernel resumes
  if (key == "moe.expert_kernel") return false;      // likewise for the expert FFN kernel
  if (key.rfind("model.", 0) == 0) return true;
  if (key.rfind("moe.", 0) != 0) return false;
  if (key == "moe.aux_loss_coef" || key == "moe.z_loss_coef") return false;
  const std::string rate = "_rate";
  return !(key.size() >= rate.size() && key.compare(key.size() - rate.size(), rate.size(), rate) == 0);
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string config_value(const std::vector<std::pair<std::string, std::string>>& keys,
                         const std::string& key) {
  for (const auto& [name, value] : keys)
    if (name == key) return value;
  return "";
}

}  // namespace

// ---- public API --------------------------------------------------------------------------------

std::string checkpoint_dir(const Config& config) {
  return config.checkpoint.dir.empty() ? (fs::path(config.run.dir) / "checkpoints").string()
                                       : config.checkpoint.dir;
}

std::string checkpoint_file_name(int64_t step) {
  char name[40];
  std::snprintf(name, sizeof name, "step_%08lld.h5", static_cast<long long>(step));
  return name;
}

void set_checkpoint_test_hook(std::function<void(const std::string&)> hook) {
  test_hook() = std::move(hook);
}

ConfigDiff compare_configs(const std::string& checkpoint_yaml, const Config& config) {
  const auto theirs = flatten_config(checkpoint_yaml);
  const auto ours = flatten_config(config_to_yaml(config));
  std::vector<std::string> keys;
  for (const auto& [key, value] : ours) keys.push_back(key);
  for (const auto& [key, value] : theirs)
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  ConfigDiff diff;
  for (const std::string& key : keys) {
    auto find = [&](const std::vector<std::pair<std::string, std::string>>& list) -> const std::string* {
      for (const auto& [name, value] : list)
        if (name == key) return &value;
      return nullptr;
    };
    const std::string* before = find(theirs);
    const std::string* now = find(ours);
    if (before && now && *before == *now) continue;
    const std::string line = key + " (checkpoint " + (before ? *before : "absent") + ", config " +
                             (now ? *now : "absent") + ")";
    if (shapes_model(key))
      diff.errors.push_back(line);
    else if (key == "train.micro_batch_size")
      diff.warnings.push_back(line);
    else
      diff.notes.push_back(line);
  }
  return diff;
}

std::string provenance_run_id(const std::string& provenance) {
  const std::string key = "run_id: ";
  size_t start = provenance.rfind("\n" + key);
  start = provenance.rfind(key, 0) == 0 ? 0 : (start == std::string::npos ? start : start + 1);
  if (start == std::string::npos) return "";
  std::string value = provenance.substr(start + key.size());
  value = value.substr(0, value.find('\n'));
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
    value = value.substr(1, value.size() - 2);
  return value;
}

CheckpointHeader read_checkpoint_header(const std::string& path) {
  h5::QuietErrors quiet;
  try {
    Handle file = open_file(path);
    return read_header(file.get(), path);
  } catch (const std::exception& error) {
    throw CheckpointError(path + ": " + error.what());
  }
}

bool read_checkpoint_tokenizer(const std::string& path, TokenData& tokenizer) {
  h5::QuietErrors quiet;
  try {
    Handle file = open_file(path);
    return read_tokenizer(file.get(), tokenizer, path);
  } catch (const Hdf5Error& error) {
    throw CheckpointError(path + ": " + error.what());
  } catch (const std::runtime_error& error) {  // read_tokenizer's, already naming the file
    throw CheckpointError(error.what());
  }
}

namespace {

// The background write of the last asynchronous save (world rank 0 only; one per process).
BackgroundWrite& background_write() {
  static BackgroundWrite write;
  return write;
}

// The root attributes and the tokenizer: the first things in every checkpoint file.
void write_header(hid_t file, int64_t step, int64_t optimizer_step, const Config& config,
                  const std::string& provenance_text, const std::optional<TokenData>& tokenizer,
                  const std::string& temporary_path) {
  h5::write_int_attribute(file, "format_version", kCheckpointFormatVersion);
  h5::write_int_attribute(file, "step", step);
  h5::write_int_attribute(file, "optimizer_step", optimizer_step);
  h5::write_string_attribute(file, "config", config_to_yaml(config));
  h5::write_string_attribute(file, "provenance", provenance_text);
  if (tokenizer) write_tokenizer(file, *tokenizer, temporary_path);
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
  for (const auto& [file_step, path] : step_files(dir)) {
    if (path.filename() == final_path.filename()) continue;
    if (!run_id.empty()) {
      try {
        if (provenance_run_id(read_checkpoint_header(path.string()).provenance) != run_id) continue;
      } catch (const std::exception&) {
        continue;
      }
    }
    if (++kept > config.checkpoint.keep_last) fs::remove(path);
  }
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
        step_of_file_name(name.substr(0, name.size() - 4)) >= 0)
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
  char* bytes = nullptr;       // in snapshot_buffers()
};

// The host memory of asynchronous saves, one buffer per dataset, kept from one save to the next:
// a run's saves have the same sizes, and fresh memory costs page faults on the step's critical
// path (measured: 2.6 s instead of 0.2 s for the 1.2 GB snapshot of bench/bench_checkpoint's
// 99.4M model on the 2-core VM). Only touched while no background write runs.
std::vector<std::vector<char>>& snapshot_buffers() {
  static std::vector<std::vector<char>> buffers;
  return buffers;
}

bool hdf5_threadsafe() {
  hbool_t threadsafe = 0;
  return H5is_library_threadsafe(&threadsafe) >= 0 && threadsafe;
}

}  // namespace

void finish_checkpoint_write(ProcessGroups& groups) {
  const std::string problem = background_write().wait();  // "" on every rank but world rank 0
  wait_quietly(*groups.world);  // the other ranks sleep instead of spinning while rank 0 waits
  agree_or_throw(*groups.world, problem);
}

std::string join_checkpoint_write() { return background_write().wait(); }

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

  std::vector<Entry> entries = checkpoint_entries(model, optimizer, backend);
  std::string problem;
  std::unique_ptr<Writer> out;
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
      if (!async) {
        out = std::make_unique<Writer>(temporary_path);
        write_header(out->file(), step, optimizer_step, config, provenance(config, groups, run_id),
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
      if (like.dtype() != DType::f32 && like.dtype() != DType::f64)
        throw std::runtime_error(std::string("checkpoint: cannot store a ") + dtype_name(like.dtype()) +
                                 " tensor (master weights are f32 or f64)");
      int64_t elements = 1;
      for (int64_t d : shape) elements *= d;
      std::vector<std::vector<char>>& buffers = snapshot_buffers();
      if (buffers.size() <= snapshot.size()) buffers.resize(snapshot.size() + 1);
      std::vector<char>& buffer = buffers[snapshot.size()];
      buffer.resize(elements * (like.dtype() == DType::f64 ? 8 : 4));
      snapshot.push_back({dataset, shape, is_expert, like.dtype(), buffer.data()});
    }
  };
  auto end_dataset = [&] {
    if (out) out->finish_dataset();
  };
  auto writing = [&] { return static_cast<bool>(out) || snapshot_ok; };

  Tensor incoming;           // one expert slice from another rank (writer only)
  std::vector<char> staging;  // one expert slice on its way to the writer (device tensors)
  for (const Entry& entry : entries) {
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
      for (int64_t j = 0; j < per_rank; ++j) send_quietly(ep, local.rows(j, j + 1), 0, backend, staging);
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
    auto tensors = std::make_shared<std::vector<SnapshotTensor>>(std::move(snapshot));
    auto write = [tensors, temporary_path, final_path, dir, config, run_id, step, optimizer_step,
                  provenance_text = provenance(config, groups, run_id),
                  tokenizer = read_run_tokenizer(config)]() -> std::string {
      h5::QuietErrors quiet_here;  // HDF5's error printing is set per thread
      bool crashed = false;
      bool published = false;
      try {
        Writer file(temporary_path);
        write_header(file.file(), step, optimizer_step, config, provenance_text, tokenizer,
                     temporary_path.string());
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
  wait_quietly(world);
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
    Entry entry;
    Handle dataset;
    std::vector<int64_t> file_shape;
    int64_t first_row = 0;  // experts: this rank's first global expert
  };
  std::vector<Item> items;
  bool restore_optimizer = false;
  std::string problem;
  // Phase 1: every check, on every rank, before anything is written into the model.
  try {
    file = open_file(path);
    result.header = read_header(file.get(), path);
    std::vector<std::pair<std::string, std::string>> saved = flatten_config(result.header.config);
    result.diff = compare_configs(result.header.config, config);
    if (!result.diff.errors.empty())
      throw Hdf5Error("the config differs from the checkpoint's in keys that shape the model: " +
                      join(result.diff.errors, ", "));
    const std::string saved_optimizer = config_value(saved, "train.optimizer");
    restore_optimizer = optimizer && saved_optimizer == config.train.optimizer;
    if (optimizer && !restore_optimizer)
      result.diff.notes.push_back("optimizer state starts fresh: the checkpoint was written with " +
                                  (saved_optimizer.empty() ? std::string("an unknown optimizer")
                                                           : saved_optimizer));
    const int P = groups.ep_size();
    for (Entry& entry : checkpoint_entries(model, restore_optimizer ? optimizer : nullptr, backend)) {
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
      item.dataset = open_dataset(file.get(), entry.dataset, item.file_shape);
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

  // Phase 2: the data; a read error (a checksum that does not match) fails the load everywhere.
  try {
    std::vector<char> staging;
    for (const Item& item : items) {
      const Tensor& tensor = item.entry.tensor;
      const std::string& name = item.entry.dataset;
      if (item.entry.is_expert) {
        for (int64_t j = 0; j < tensor.dim(0); ++j)
          read_rows(item.dataset.get(), name, item.file_shape, item.first_row + j,
                    tensor.rows(j, j + 1), backend, staging);
        continue;
      }
      const int64_t rows = tensor.dim(0), block = block_rows(item.file_shape, sizeof(float));
      for (int64_t row = 0; row < rows; row += block)
        read_rows(item.dataset.get(), name, item.file_shape, row,
                  tensor.rows(row, std::min(rows, row + block)), backend, staging);
    }
  } catch (const std::exception& error) {
    problem = path + ": " + error.what();
  }
  agree_or_throw(world, problem);
  if (restore_optimizer) optimizer->set_step_count(result.header.optimizer_step);
  model.refresh_compute_weights();
  return result;
}

std::string find_latest_checkpoint(const std::string& dir, std::vector<std::string>* skipped,
                                   const std::vector<std::string>& exclude) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) return "";
  auto excluded = [&](const fs::path& path) {
    return std::any_of(exclude.begin(), exclude.end(), [&](const std::string& other) {
      return fs::path(other).filename() == path.filename();
    });
  };
  auto loadable = [&](const fs::path& path) {
    if (excluded(path)) return false;
    h5::QuietErrors quiet;
    try {
      Handle file = open_file(path.string());
      read_header(file.get(), path.string());
      if (!h5::link_exists(file.get(), "/model")) throw Hdf5Error("no /model group");
      size_t datasets = 0;
      h5::visit_datasets(file.get(), "/", [&](const std::string&, hid_t) { ++datasets; });
      if (datasets == 0) throw Hdf5Error("no tensors");
      return true;
    } catch (const std::exception& problem) {
      if (skipped) skipped->push_back(path.string() + ": " + problem.what());
      return false;
    }
  };
  const fs::path latest = fs::path(dir) / "latest";
  std::string named;
  if (fs::exists(latest, error)) {
    std::ifstream in(latest);
    std::getline(in, named);
    while (!named.empty() && std::isspace(static_cast<unsigned char>(named.back()))) named.pop_back();
    if (named.empty()) {
      if (skipped) skipped->push_back(latest.string() + ": empty");
    } else {
      const fs::path candidate = fs::path(dir) / named;
      if (loadable(candidate)) return candidate.string();
    }
  } else if (skipped) {
    skipped->push_back(latest.string() + ": missing");
  }
  for (const auto& [step, path] : step_files(dir)) {
    if (!named.empty() && path.filename() == named) continue;  // already tried
    if (loadable(path)) return path.string();
  }
  return "";
}

void scan_checkpoint_tensors(const std::string& path,
                             const std::function<void(const std::vector<TensorInfo>&)>& listing,
                             const std::function<void(const TensorInfo&)>& visit) {
  h5::QuietErrors quiet;
  try {
    Handle file = open_file(path);
    std::vector<TensorInfo> tensors;
    h5::visit_datasets(file.get(), "/", [&](const std::string& name, hid_t dataset) {
      tensors.push_back({name, h5::dataset_shape(dataset), 0.0});
    });
    if (listing) listing(tensors);
    std::vector<double> values;
    for (TensorInfo& info : tensors) {
      Handle dataset = h5::own(H5Dopen2(file.get(), info.path.c_str(), H5P_DEFAULT), H5Dclose,
                               "cannot open " + info.path);
      Handle type = h5::own(H5Dget_type(dataset.get()), H5Tclose, "cannot inspect " + info.path);
      if (H5Tget_class(type.get()) != H5T_FLOAT && H5Tget_class(type.get()) != H5T_INTEGER) {
        info.norm = std::nan("");
      } else {
        double sum = 0;
        const int64_t rows = info.shape.empty() ? 1 : info.shape[0];
        const int64_t block = block_rows(info.shape, sizeof(double));
        for (int64_t row = 0; row < rows; row += block) {
          const int64_t count = std::min(rows, row + block) - row;
          values.resize(count * row_elements(info.shape));
          Slab slab = select_rows(dataset.get(), info.shape, row, count);
          h5::check(H5Dread(dataset.get(), H5T_NATIVE_DOUBLE, slab.memory_space.get(),
                            slab.file_space.get(), H5P_DEFAULT, values.data()),
                    "cannot read " + info.path);
          for (double v : values) sum += v * v;
        }
        info.norm = std::sqrt(sum);
      }
      if (visit) visit(info);
    }
  } catch (const std::exception& error) {
    throw CheckpointError(path + ": " + error.what());
  }
}

}  // namespace sy
