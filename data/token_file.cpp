#include "data/token_file.h"

#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "data/hdf5_io.h"

namespace sy {
namespace {

std::runtime_error file_error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what);
}

using h5::Handle;
using QuietHdf5Errors = h5::QuietErrors;

void check(herr_t status, const std::string& path, const std::string& what) {
  if (status < 0) throw file_error(path, what);
}

// ---- reading ----

int64_t read_vocab_size(hid_t file, const std::string& path) {
  const htri_t exists = H5Aexists(file, "vocab_size");
  if (exists < 0) throw file_error(path, "cannot query attribute vocab_size");
  if (exists == 0) throw file_error(path, "no attribute vocab_size");
  Handle attr(H5Aopen(file, "vocab_size", H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) throw file_error(path, "cannot open attribute vocab_size");
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (!type.valid() || !space.valid())
    throw file_error(path, "cannot inspect attribute vocab_size");
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw file_error(path, "attribute vocab_size is not an integer");
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw file_error(path, "attribute vocab_size is not a single value");
  int64_t vocab_size = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &vocab_size), path,
        "cannot read attribute vocab_size");
  if (vocab_size < 1 || vocab_size > kMaxVocabSize)
    throw file_error(path, "attribute vocab_size is " + std::to_string(vocab_size) +
                               ", outside [1, " + std::to_string(kMaxVocabSize) + "]");
  return vocab_size;
}

std::string read_tokenizer_name(hid_t file, const std::string& path) {
  const htri_t exists = H5Aexists(file, "tokenizer");
  if (exists < 0) throw file_error(path, "cannot query attribute tokenizer");
  if (exists == 0) throw file_error(path, "no attribute tokenizer");
  Handle attr(H5Aopen(file, "tokenizer", H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) throw file_error(path, "cannot open attribute tokenizer");
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw file_error(path, "cannot inspect attribute tokenizer");
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw file_error(path, "attribute tokenizer is not a string");
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw file_error(path, "attribute tokenizer is not a single string");

  const htri_t is_variable = H5Tis_variable_str(type.get());
  if (is_variable < 0) throw file_error(path, "cannot inspect attribute tokenizer");
  Handle memory_type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!memory_type.valid()) throw file_error(path, "cannot read attribute tokenizer");
  check(H5Tset_cset(memory_type.get(), H5Tget_cset(type.get())), path,
        "cannot read attribute tokenizer");
  if (is_variable > 0) {
    // Variable-length (what h5py writes for a Python str): HDF5 allocates, we free.
    check(H5Tset_size(memory_type.get(), H5T_VARIABLE), path, "cannot read attribute tokenizer");
    char* text = nullptr;
    check(H5Aread(attr.get(), memory_type.get(), &text), path, "cannot read attribute tokenizer");
    std::string name = text ? text : "";
    if (text) H5free_memory(text);
    return name;
  }
  const size_t size = H5Tget_size(type.get());
  if (size == 0) throw file_error(path, "cannot read attribute tokenizer");
  check(H5Tset_size(memory_type.get(), size), path, "cannot read attribute tokenizer");
  std::string name(size, '\0');
  check(H5Aread(attr.get(), memory_type.get(), name.data()), path,
        "cannot read attribute tokenizer");
  // Fixed-length strings come padded with NULs or spaces.
  const char pad = H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD ? ' ' : '\0';
  const size_t nul = name.find('\0');
  if (nul != std::string::npos) name.resize(nul);
  while (!name.empty() && name.back() == pad) name.pop_back();
  return name;
}

// Reads dataset `name` (e.g. "/train") in slices through an int64 buffer, so that any integer
// element type converts without silent wrap-around and memory stays near the int32 result.
std::vector<int32_t> read_tokens(hid_t file, const std::string& name, int64_t vocab_size,
                                 const std::string& path) {
  const htri_t exists = H5Lexists(file, name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw file_error(path, "cannot query dataset " + name);
  if (exists == 0) throw file_error(path, "no dataset " + name);
  Handle dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) throw file_error(path, name + " is not a dataset");
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle file_space(H5Dget_space(dataset.get()), H5Sclose);
  if (!type.valid() || !file_space.valid())
    throw file_error(path, "cannot inspect dataset " + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw file_error(path, "dataset " + name + " does not hold integers");
  if (H5Sget_simple_extent_ndims(file_space.get()) != 1)
    throw file_error(path, "dataset " + name + " is not 1-D");
  hsize_t length = 0;
  if (H5Sget_simple_extent_dims(file_space.get(), &length, nullptr) < 0)
    throw file_error(path, "cannot inspect dataset " + name);

  std::vector<int32_t> tokens(length);
  const hsize_t slice_length = hsize_t{1} << 20;
  std::vector<int64_t> slice(std::min(length, slice_length));
  for (hsize_t start = 0; start < length; start += slice_length) {
    hsize_t count = std::min(slice_length, length - start);
    check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr),
          path, "cannot select in dataset " + name);
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!memory_space.valid()) throw file_error(path, "cannot read dataset " + name);
    check(H5Dread(dataset.get(), H5T_NATIVE_INT64, memory_space.get(), file_space.get(),
                  H5P_DEFAULT, slice.data()),
          path, "cannot read dataset " + name);
    for (hsize_t k = 0; k < count; k++) {
      const int64_t token = slice[k];
      if (token < 0 || token >= vocab_size)
        throw file_error(path, "token " + std::to_string(token) + " at " + name + "[" +
                                   std::to_string(start + k) + "] is outside [0, " +
                                   std::to_string(vocab_size) + ")");
      tokens[start + k] = static_cast<int32_t>(token);
    }
  }
  return tokens;
}

// /tokenizer_model (uint8) and its attributes name and vocab_size, when the file has one.
void read_tokenizer_model(hid_t file, TokenData& data, const std::string& path) {
  const std::string name = "/tokenizer_model";
  const htri_t exists = H5Lexists(file, name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw file_error(path, "cannot query dataset " + name);
  if (exists == 0) return;
  Handle dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) throw file_error(path, name + " is not a dataset");
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw file_error(path, "cannot inspect dataset " + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 ||
      H5Sget_simple_extent_ndims(space.get()) != 1)
    throw file_error(path, "dataset " + name + " is not 1-D bytes");
  hsize_t length = 0;
  if (H5Sget_simple_extent_dims(space.get(), &length, nullptr) < 0)
    throw file_error(path, "cannot inspect dataset " + name);
  data.tokenizer_model.assign(length, '\0');
  if (length > 0)
    check(H5Dread(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                  data.tokenizer_model.data()),
          path, "cannot read dataset " + name);
  try {
    data.tokenizer_model_name = h5::read_string_attribute(dataset.get(), "name");
    const int64_t model_vocab = h5::read_int_attribute(dataset.get(), "vocab_size");
    if (model_vocab != data.vocab_size)
      throw file_error(path, name + " has vocab_size " + std::to_string(model_vocab) +
                                 " but the file's vocab_size is " +
                                 std::to_string(data.vocab_size));
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, name + ": " + error.what());
  }
}

// ---- writing ----

void check_tokens(const std::vector<int32_t>& tokens, const char* split, int64_t vocab_size,
                  const std::string& path) {
  for (size_t k = 0; k < tokens.size(); k++) {
    if (tokens[k] < 0 || tokens[k] >= vocab_size)
      throw file_error(path, "cannot write token " + std::to_string(tokens[k]) + " at " + split +
                                 "[" + std::to_string(k) + "]: outside [0, " +
                                 std::to_string(vocab_size) + ")");
  }
}

void write_tokens(hid_t file, const char* name, const std::vector<int32_t>& tokens,
                  hid_t file_type, const std::string& path) {
  const hsize_t length = tokens.size();
  Handle space(H5Screate_simple(1, &length, nullptr), H5Sclose);
  if (!space.valid()) throw file_error(path, std::string("cannot create dataspace for ") + name);
  Handle dataset(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Dclose);
  if (!dataset.valid()) throw file_error(path, std::string("cannot create dataset ") + name);
  // An empty dataset needs no write (and HDF5 rejects a null buffer).
  if (length > 0)
    check(H5Dwrite(dataset.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data()),
          path, std::string("cannot write dataset ") + name);
  if (!dataset.close()) throw file_error(path, std::string("cannot write dataset ") + name);
}

void write_tokenizer_model(hid_t file, const std::string& model, const std::string& model_name,
                           int64_t vocab_size, const std::string& path) {
  const hsize_t length = model.size();
  Handle space(H5Screate_simple(1, &length, nullptr), H5Sclose);
  if (!space.valid()) throw file_error(path, "cannot create dataspace for /tokenizer_model");
  Handle dataset(H5Dcreate2(file, "/tokenizer_model", H5T_STD_U8LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT, H5P_DEFAULT),
                 H5Dclose);
  if (!dataset.valid()) throw file_error(path, "cannot create dataset /tokenizer_model");
  check(H5Dwrite(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, model.data()),
        path, "cannot write dataset /tokenizer_model");
  try {
    h5::write_string_attribute(dataset.get(), "name", model_name);
    h5::write_int_attribute(dataset.get(), "vocab_size", vocab_size);
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, std::string("/tokenizer_model: ") + error.what());
  }
  if (!dataset.close()) throw file_error(path, "cannot write dataset /tokenizer_model");
}

void write_attributes(hid_t file, int64_t vocab_size, const std::string& tokenizer,
                      const std::string& path) {
  Handle scalar(H5Screate(H5S_SCALAR), H5Sclose);
  if (!scalar.valid()) throw file_error(path, "cannot create attribute dataspace");
  {
    Handle attr(H5Acreate2(file, "vocab_size", H5T_STD_I64LE, scalar.get(), H5P_DEFAULT,
                           H5P_DEFAULT),
                H5Aclose);
    if (!attr.valid()) throw file_error(path, "cannot create attribute vocab_size");
    check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &vocab_size), path,
          "cannot write attribute vocab_size");
  }
  {
    // Variable-length UTF-8, the form h5py reads back as a Python str.
    Handle string_type(H5Tcopy(H5T_C_S1), H5Tclose);
    if (!string_type.valid()) throw file_error(path, "cannot create attribute tokenizer");
    check(H5Tset_size(string_type.get(), H5T_VARIABLE), path, "cannot create attribute tokenizer");
    check(H5Tset_cset(string_type.get(), H5T_CSET_UTF8), path, "cannot create attribute tokenizer");
    Handle attr(H5Acreate2(file, "tokenizer", string_type.get(), scalar.get(), H5P_DEFAULT,
                           H5P_DEFAULT),
                H5Aclose);
    if (!attr.valid()) throw file_error(path, "cannot create attribute tokenizer");
    const char* text = tokenizer.c_str();
    check(H5Awrite(attr.get(), string_type.get(), &text), path, "cannot write attribute tokenizer");
  }
}

}  // namespace

TokenData read_token_file(const std::string& path) {
  QuietHdf5Errors quiet;
  std::error_code error;
  if (!std::filesystem::exists(path, error)) throw file_error(path, "no such file");
  if (std::filesystem::is_directory(path, error)) throw file_error(path, "is a folder, not a file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) throw file_error(path, "cannot open");
  if (is_hdf5 == 0) throw file_error(path, "not an HDF5 file");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw file_error(path, "cannot open as HDF5");

  TokenData data;
  data.vocab_size = read_vocab_size(file.get(), path);
  data.tokenizer = read_tokenizer_name(file.get(), path);
  data.train = read_tokens(file.get(), "/train", data.vocab_size, path);
  data.val = read_tokens(file.get(), "/val", data.vocab_size, path);
  read_tokenizer_model(file.get(), data, path);
  return data;
}

void write_token_file(const std::string& path, const std::vector<int32_t>& train,
                      const std::vector<int32_t>& val, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& tokenizer_model,
                      const std::string& tokenizer_model_name) {
  QuietHdf5Errors quiet;
  if (vocab_size < 1 || vocab_size > kMaxVocabSize)
    throw file_error(path, "cannot write vocab_size " + std::to_string(vocab_size) +
                               ": outside [1, " + std::to_string(kMaxVocabSize) + "]");
  check_tokens(train, "train", vocab_size, path);
  check_tokens(val, "val", vocab_size, path);
  // Smallest type holding vocab_size-1 keeps a byte-level corpus at one byte per token.
  const hid_t file_type = vocab_size <= 256     ? H5T_STD_U8LE
                          : vocab_size <= 65536 ? H5T_STD_U16LE
                                                : H5T_STD_I32LE;

  const std::string temporary_path = path + ".tmp";
  std::error_code error;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::create_directories(parent, error) && error)
    throw file_error(path, "cannot create folder " + parent.string() + ": " + error.message());
  try {
    Handle file(H5Fcreate(temporary_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                H5Fclose);
    if (!file.valid()) throw file_error(temporary_path, "cannot create file");
    write_tokens(file.get(), "/train", train, file_type, temporary_path);
    write_tokens(file.get(), "/val", val, file_type, temporary_path);
    write_attributes(file.get(), vocab_size, tokenizer, temporary_path);
    if (!tokenizer_model.empty())
      write_tokenizer_model(file.get(), tokenizer_model, tokenizer_model_name, vocab_size,
                            temporary_path);
    if (!file.close()) throw file_error(temporary_path, "cannot finish writing file");
    std::filesystem::rename(temporary_path, path, error);
    if (error) throw file_error(path, "cannot rename " + temporary_path + " into place: " +
                                          error.message());
  } catch (...) {
    std::filesystem::remove(temporary_path, error);  // best effort; the original error matters
    throw;
  }
}

}  // namespace sy
