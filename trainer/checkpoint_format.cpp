#include "trainer/checkpoint_format.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <system_error>

#include "trainer/checkpoint_writer.h"

namespace sy {

namespace fs = std::filesystem;
using h5::Handle;
using h5::Hdf5Error;

namespace {

// Non-expert tensors are read in blocks of the writer's chunk size (whole rows).
constexpr int64_t kChunkBytes = CheckpointFileWriter::kChunkBytes;

hid_t memory_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    case DType::f32_split:
      return H5T_NATIVE_FLOAT;  // read and written on the host as f32
    default: throw std::runtime_error(std::string("checkpoint: cannot store a ") + dtype_name(dtype) +
                                      " tensor (master weights are f32 or f64)");
  }
}

int64_t row_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

// Rows per block (of about kChunkBytes) of a non-expert tensor.
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
// Rows [row, row + count) of tensor `path`, their chunks checked first.
Slab select_rows(hid_t dataset, const std::string& path, const std::vector<int64_t>& shape,
                 int64_t row, int64_t count) {
  try {
    h5::check_chunk_sizes(dataset, row, count);
  } catch (const h5::Hdf5Error& error) {
    throw h5::Hdf5Error("cannot read " + path + ": " + error.what());
  }
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

// Reads rows [row, row + into.dim(0)) of `dataset` into a tensor (host or device).
void read_rows(hid_t dataset, const std::string& path, const std::vector<int64_t>& shape,
               int64_t row, const Tensor& into, Backend& backend, std::vector<char>& staging) {
  staging.resize(into.nbytes());
  Slab slab = select_rows(dataset, path, shape, row, into.ndim() ? into.dim(0) : 1);
  h5::check(H5Dread(dataset, memory_type(into.dtype()), slab.memory_space.get(), slab.file_space.get(),
                    H5P_DEFAULT, staging.data()),
            "cannot read " + path);
  backend.copy_from_host(into, staging.data());
}

}  // namespace

// ---- file names --------------------------------------------------------------------------------

std::string checkpoint_file_name(int64_t step) {
  char name[40];
  std::snprintf(name, sizeof name, "step_%08lld.h5", static_cast<long long>(step));
  return name;
}

int64_t checkpoint_step_of_file_name(const std::string& name) {
  static const std::regex pattern(R"(step_(\d{1,18})\.h5)");
  std::smatch match;
  if (!std::regex_match(name, match, pattern)) return -1;
  return std::stoll(match[1].str());
}

std::vector<std::pair<int64_t, fs::path>> checkpoint_step_files(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const int64_t step = checkpoint_step_of_file_name(entry.path().filename().string());
    if (step >= 0 && entry.is_regular_file(error)) files.emplace_back(step, entry.path());
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return files;
}

// ---- what a checkpoint holds -------------------------------------------------------------------

std::vector<CheckpointEntry> checkpoint_entries(Transformer& model, Optimizer* optimizer,
                                                Backend& backend) {
  std::vector<Param*> params = model.params();
  std::vector<CheckpointEntry> entries;
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

// ---- the root attributes -----------------------------------------------------------------------

void write_checkpoint_header(hid_t file, int64_t step, int64_t optimizer_step, const Config& config,
                             const std::string& provenance, const std::optional<TokenData>& tokenizer,
                             const std::string& path) {
  h5::write_int_attribute(file, "format_version", kCheckpointFormatVersion);
  h5::write_int_attribute(file, "step", step);
  h5::write_int_attribute(file, "optimizer_step", optimizer_step);
  h5::write_string_attribute(file, "config", config_to_yaml(config));
  h5::write_string_attribute(file, "provenance", provenance);
  if (tokenizer) write_tokenizer(file, *tokenizer, path);
}

CheckpointHeader read_checkpoint_header(hid_t file, const std::string& path) {
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

// ---- reading -----------------------------------------------------------------------------------

Handle open_checkpoint_file(const std::string& path) {
  std::error_code error;
  if (!fs::exists(path, error)) throw Hdf5Error("no such file");
  if (fs::is_directory(path, error)) throw Hdf5Error("is a folder, not a checkpoint file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) throw Hdf5Error("not an HDF5 file (corrupted, or not a checkpoint)");
  if (is_hdf5 < 0) h5::check(-1, "cannot open");
  return h5::own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose,
                 "cannot open as HDF5 (truncated or corrupted)");
}

void check_checkpoint_has_tensors(hid_t file) {
  if (!h5::link_exists(file, "/model")) throw Hdf5Error("no /model group");
  size_t datasets = 0;
  h5::visit_datasets(file, "/", [&](const std::string&, hid_t) { ++datasets; });
  if (datasets == 0) throw Hdf5Error("no tensors");
}

Handle open_checkpoint_tensor(hid_t file, const std::string& name,
                              const std::vector<int64_t>& expected) {
  if (!h5::link_exists(file, name)) throw Hdf5Error("missing tensor " + name);
  Handle dataset = h5::own(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose,
                           "cannot open tensor " + name);
  Handle type = h5::own(H5Dget_type(dataset.get()), H5Tclose, "cannot inspect tensor " + name);
  if (H5Tget_class(type.get()) != H5T_FLOAT) throw Hdf5Error(name + " does not hold floats");
  h5::check_number_type(type.get(), name);
  const std::vector<int64_t> shape = h5::dataset_shape(dataset.get());
  if (shape != expected)
    throw Hdf5Error(name + " has shape " + shape_text(shape) + ", the config needs " +
                    shape_text(expected));
  return dataset;
}

void read_checkpoint_tensor(hid_t dataset, const std::string& name,
                            const std::vector<int64_t>& file_shape, int64_t first_row,
                            bool is_expert, const Tensor& into, Backend& backend,
                            std::vector<char>& staging) {
  if (is_expert) {
    for (int64_t j = 0; j < into.dim(0); ++j)
      read_rows(dataset, name, file_shape, first_row + j, into.rows(j, j + 1), backend, staging);
    return;
  }
  const int64_t rows = into.dim(0), block = block_rows(file_shape, sizeof(float));
  for (int64_t row = 0; row < rows; row += block)
    read_rows(dataset, name, file_shape, first_row + row, into.rows(row, std::min(rows, row + block)),
              backend, staging);
}

CheckpointHeader read_checkpoint_header(const std::string& path) {
  h5::QuietErrors quiet;
  try {
    Handle file = open_checkpoint_file(path);
    return read_checkpoint_header(file.get(), path);
  } catch (const std::exception& error) {
    throw CheckpointError(path + ": " + error.what());
  }
}

bool read_checkpoint_tokenizer(const std::string& path, TokenData& tokenizer) {
  h5::QuietErrors quiet;
  try {
    Handle file = open_checkpoint_file(path);
    return read_tokenizer(file.get(), tokenizer, path);
  } catch (const Hdf5Error& error) {
    throw CheckpointError(path + ": " + error.what());
  } catch (const std::runtime_error& error) {  // read_tokenizer's, already naming the file
    throw CheckpointError(error.what());
  }
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
      Handle file = open_checkpoint_file(path.string());
      read_checkpoint_header(file.get(), path.string());
      check_checkpoint_has_tensors(file.get());
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
  for (const auto& [step, path] : checkpoint_step_files(dir)) {
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
    Handle file = open_checkpoint_file(path);
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
        h5::check_number_type(type.get(), info.path);
        double sum = 0;
        const int64_t rows = info.shape.empty() ? 1 : info.shape[0];
        const int64_t block = block_rows(info.shape, sizeof(double));
        for (int64_t row = 0; row < rows; row += block) {
          const int64_t count = std::min(rows, row + block) - row;
          values.resize(count * row_elements(info.shape));
          Slab slab = select_rows(dataset.get(), info.path, info.shape, row, count);
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
