// Test helpers for checkpoints, on the raw HDF5 C API (as h5py or any other plain reader would
// see the file): read a dataset or an attribute, and damage a checkpoint in the ways the loader
// must catch. Shared by test_checkpoint*.cpp and the checkpoint_tamper tool (cli_checkpoint.sh).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy::tamper {

inline void ok(herr_t status, const std::string& what) {
  if (status < 0) throw std::runtime_error("hdf5: " + what);
}
inline hid_t ok_id(hid_t id, const std::string& what) {
  if (id < 0) throw std::runtime_error("hdf5: " + what);
  return id;
}

// The whole dataset as floats, and its shape.
inline std::vector<float> read_floats(const std::string& file, const std::string& path,
                                      std::vector<hsize_t>* shape = nullptr) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  const hid_t d = ok_id(H5Dopen2(f, path.c_str(), H5P_DEFAULT), "open " + path);
  const hid_t space = H5Dget_space(d);
  const int ndims = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(ndims);
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  hsize_t n = 1;
  for (hsize_t dim : dims) n *= dim;
  std::vector<float> values(n);
  ok(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), "read " + path);
  if (shape) *shape = dims;
  H5Sclose(space);
  H5Dclose(d);
  H5Fclose(f);
  return values;
}

inline bool has_link(const std::string& file, const std::string& path) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  const htri_t exists = H5Lexists(f, path.c_str(), H5P_DEFAULT);
  H5Fclose(f);
  return exists > 0;
}

inline int64_t read_int_attribute(const std::string& file, const char* name) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  const hid_t a = ok_id(H5Aopen(f, name, H5P_DEFAULT), std::string("attribute ") + name);
  int64_t value = 0;
  ok(H5Aread(a, H5T_NATIVE_INT64, &value), name);
  H5Aclose(a);
  H5Fclose(f);
  return value;
}

inline std::string read_string_attribute(const std::string& file, const char* name) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  const hid_t a = ok_id(H5Aopen(f, name, H5P_DEFAULT), std::string("attribute ") + name);
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  char* text = nullptr;
  ok(H5Aread(a, type, &text), name);
  std::string value = text ? text : "";
  H5free_memory(text);
  H5Tclose(type);
  H5Aclose(a);
  H5Fclose(f);
  return value;
}

inline void delete_tensor(const std::string& file, const std::string& path) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "open " + file);
  ok(H5Ldelete(f, path.c_str(), H5P_DEFAULT), "delete " + path);
  H5Fclose(f);
}

// Replaces a dataset by a zero-filled fp32 one of another shape.
inline void reshape_tensor(const std::string& file, const std::string& path,
                           const std::vector<hsize_t>& shape) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "open " + file);
  ok(H5Ldelete(f, path.c_str(), H5P_DEFAULT), "delete " + path);
  const hid_t space = H5Screate_simple(static_cast<int>(shape.size()), shape.data(), nullptr);
  const hid_t d = ok_id(H5Dcreate2(f, path.c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                   H5P_DEFAULT, H5P_DEFAULT),
                        "create " + path);
  H5Dclose(d);
  H5Sclose(space);
  H5Fclose(f);
}

inline void set_int_attribute(const std::string& file, const char* name, int64_t value) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "open " + file);
  const hid_t a = ok_id(H5Aopen(f, name, H5P_DEFAULT), std::string("attribute ") + name);
  ok(H5Awrite(a, H5T_NATIVE_INT64, &value), name);
  H5Aclose(a);
  H5Fclose(f);
}

// Flips bytes in the middle of the first stored chunk of a dataset, directly in the file: what
// a bad disk block does. The checkpoint's checksums must catch it.
inline void corrupt_tensor(const std::string& file, const std::string& path) {
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  const hid_t d = ok_id(H5Dopen2(f, path.c_str(), H5P_DEFAULT), "open " + path);
  hsize_t offset[8] = {};
  unsigned filter_mask = 0;
  haddr_t address = 0;
  hsize_t size = 0;
  const hid_t space = H5Dget_space(d);
  ok(H5Dget_chunk_info(d, space, 0, offset, &filter_mask, &address, &size), "chunk of " + path);
  H5Sclose(space);
  H5Dclose(d);
  H5Fclose(f);
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  stream.seekg(static_cast<std::streamoff>(address + size / 2));
  char bytes[4];
  stream.read(bytes, 4);
  for (char& byte : bytes) byte = static_cast<char>(~byte);
  stream.seekp(static_cast<std::streamoff>(address + size / 2));
  stream.write(bytes, 4);
  if (!stream) throw std::runtime_error("cannot corrupt " + file);
}

// Flips a byte inside the object header of PATH ("/" for the root group), directly in the file:
// the header's checksum must catch it. HDF5 1.10 cannot close what such a failed read leaves
// behind, so this is also the damage after which its exit handler would print.
inline void corrupt_header(const std::string& file, const std::string& path) {
#if H5_VERSION_GE(1, 12, 0)
  H5O_info1_t info;
#else
  H5O_info_t info;
#endif
  const hid_t f = ok_id(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open " + file);
  ok(H5Oget_info_by_name2(f, path.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT), "info " + path);
  H5Fclose(f);
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(info.addr + 12);  // past the signature and version
  char byte = 0;
  stream.seekg(at);
  stream.read(&byte, 1);
  byte = static_cast<char>(~byte);
  stream.seekp(at);
  stream.write(&byte, 1);
  if (!stream) throw std::runtime_error("cannot corrupt " + file);
}

}  // namespace sy::tamper
