// Small RAII helpers over the HDF5 C API for the checkpoint code (trainer/checkpoint.cpp,
// trainer/inspect.cpp): owned identifiers, silenced automatic error printing, the innermost
// HDF5 error message, attributes, and a walk over every dataset of a file.
// Every failure throws Hdf5Error with a short description (no file name: the caller adds it).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy::h5 {

struct Hdf5Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Keeps HDF5's exit handler from printing. A failed read of a damaged file's metadata leaves
// pieces inside HDF5 1.10 that it cannot close; at exit it then prints "HDF5: infinite loop
// closing library" and a line of its interfaces, unless error printing is off on the exiting
// thread. Our one line has reported the failure by then. Registers, once, an exit handler that
// turns printing off; atexit handlers run in reverse, and HDF5 registers its own on first use.
void quiet_library_exit();

// Silences HDF5's automatic error-stack printing while alive (the previous handler is restored),
// so that a user sees only our one-line message; HDF5's exit handler stays quiet too.
class QuietErrors {
 public:
  QuietErrors() {
    quiet_library_exit();
    H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietErrors() { H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_); }
  QuietErrors(const QuietErrors&) = delete;
  QuietErrors& operator=(const QuietErrors&) = delete;

 private:
  H5E_auto2_t saved_func_ = nullptr;
  void* saved_data_ = nullptr;
};

// Owns one HDF5 identifier and closes it on scope exit, so that a throw leaks nothing.
class Handle {
 public:
  using CloseFn = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, CloseFn close_fn) : id_(id), close_fn_(close_fn) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(other.id_), close_fn_(other.close_fn_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.id_;
      close_fn_ = other.close_fn_;
      other.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_fn_) close_fn_(id_);
    id_ = -1;
  }
  // Closes now and reports failure (closing a file is where buffered data reaches the disk).
  bool close() {
    const herr_t status = id_ >= 0 && close_fn_ ? close_fn_(id_) : 0;
    id_ = -1;
    return status >= 0;
  }

 private:
  hid_t id_ = -1;
  CloseFn close_fn_ = nullptr;
};

// The innermost message on HDF5's current error stack ("" when empty), e.g. "data error detected
// by Fletcher32 checksum"; read it right after the failing call.
std::string last_error();

// Throws Hdf5Error(what [+ ": " + last_error()]) when status < 0.
void check(herr_t status, const std::string& what);
// Throws Hdf5Error(what ...) unless id >= 0; returns an owning handle.
Handle own(hid_t id, Handle::CloseFn close_fn, const std::string& what);

// A file-access property list for writing the HDF5 1.8 file format: every object header and index
// carries a checksum that HDF5 verifies on read, so damaged metadata is an error instead of a
// silently different file; readable by any HDF5 >= 1.8 (h5py included).
Handle checksummed_metadata_access();

std::string library_version();  // "1.10.8"

// ---- attributes (scalar int64 and variable-length UTF-8 strings, as h5py writes them) ----------
void write_int_attribute(hid_t object, const char* name, int64_t value);
void write_string_attribute(hid_t object, const char* name, const std::string& value);
bool has_attribute(hid_t object, const char* name);
int64_t read_int_attribute(hid_t object, const char* name);
std::string read_string_attribute(hid_t object, const char* name);

// HDF5 1.10's attribute decoder (H5O_attr_decode) trusts the lengths in an attribute message and
// reads past it when they are damaged (a crash in H5Aexists, found by fuzzing). This reads
// `object`'s header beside HDF5 (version 1 headers; version 2 ones are checksummed) and throws
// Hdf5Error naming the first attribute message whose name, datatype, dataspace or value would
// not fit in it. has_attribute calls it first, so every attribute read here is covered.
void check_attribute_messages(hid_t object);

// HDF5 1.10's parser of a global heap collection (H5HG__cache_heap_deserialize, H5HGcache.c, on
// the first read of any variable-length string) loops for ever when a collection holds a
// free-space object of size 0: it never advances. Before such a read, this finds the collections
// that the attribute messages of `object`'s header point at and walks their object lists itself;
// it throws Hdf5Error for one that would stall HDF5 or runs past its own end. Reads a few KB;
// see docs/data.md.
// With `attribute`, it also refuses that attribute when its variable-length value claims more
// bytes than the file holds: HDF5 allocates and zeroes the claimed size before it reads the heap.
void check_global_heaps(hid_t object, const char* attribute = nullptr);

// HDF5 1.10 converts a stored integer or float bit by bit from the fields its datatype message
// declares (precision and offset; a float's sign, exponent and mantissa) and never checks them
// against the type's size: an 8-byte integer that claimed 16384 bits of precision made the
// conversion of one value read 2 KB past it (H5T__bit_find, found by fuzz_token_file). Throws
// Hdf5Error, "<what>: ..." naming the field, unless `type` is an integer or float of 1 to 8 bytes
// whose fields all lie inside it. Every number read here with conversion is checked first.
void check_number_type(hid_t type, const std::string& what);

// ---- datasets ----------------------------------------------------------------------------------
std::vector<int64_t> dataset_shape(hid_t dataset);

// HDF5 1.10's Fletcher-32 filter takes its 4-byte checksum off a chunk's stored size without
// checking that size: a damaged chunk index that gives a chunk fewer than 4 bytes made H5Dread
// checksum gigabytes past its buffer (found by fuzz_checkpoint). Before rows [row, row + rows) of
// dimension 0 are read, this looks up every chunk they touch (by coordinate, in the chunk index)
// and throws Hdf5Error naming the first whose stored size is below the checksum. A dataset that is
// not chunked, or has no Fletcher-32 filter, passes at once. A check inside the filter would
// cover every read at once, but HDF5 refuses to replace a predefined filter (H5Zregister with
// H5Z_FILTER_FLETCHER32: "unable to modify predefined filters"), so each read site calls this.
void check_chunk_sizes(hid_t dataset, int64_t row, int64_t rows);
bool link_exists(hid_t file, const std::string& path);  // every component of an absolute path

// Every dataset below `group` ("/" for the file), depth first, in creation order where the
// groups track it (checkpoints do), else in name order. Paths are absolute ("/model/embedding").
void visit_datasets(hid_t file, const std::string& group,
                    const std::function<void(const std::string& path, hid_t dataset)>& visit);

}  // namespace sy::h5
