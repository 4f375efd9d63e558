#include "data/token_file.h"

#include <hdf5.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
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

// Dataset `name` opened, or one line saying why not: HDF5's reason when the object cannot be
// opened (its header damaged: token files carry checksummed metadata), else that it is not a
// dataset.
Handle open_dataset(hid_t file, const std::string& name, const std::string& path) {
  Handle object(H5Oopen(file, name.c_str(), H5P_DEFAULT), H5Oclose);
  if (!object.valid()) throw file_error(path, "cannot open " + name + ": " + h5::last_error());
  if (H5Iget_type(object.get()) != H5I_DATASET) throw file_error(path, name + " is not a dataset");
  return object;
}

int64_t read_vocab_size(hid_t file, const std::string& path) {
  int64_t vocab_size = 0;
  try {
    vocab_size = h5::read_int_attribute(file, "vocab_size");
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
  if (vocab_size < 1 || vocab_size > kMaxVocabSize)
    throw file_error(path, "attribute vocab_size is " + std::to_string(vocab_size) +
                               ", outside [1, " + std::to_string(kMaxVocabSize) + "]");
  return vocab_size;
}

std::string read_tokenizer_name(hid_t file, const std::string& path) {
  try {
    return h5::read_string_attribute(file, "tokenizer");
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
}

// h5::check_number_type on dataset `name`'s type, the file's name in front of its error.
void check_number_type(hid_t type, const std::string& name, const std::string& path) {
  try {
    h5::check_number_type(type, "dataset " + name);
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
}

// h5::check_chunk_sizes over elements [first, first + count) of dataset `name`, the same way.
void check_chunk_sizes(hid_t dataset, hsize_t first, hsize_t count, const std::string& name,
                       const std::string& path) {
  try {
    h5::check_chunk_sizes(dataset, static_cast<int64_t>(first), static_cast<int64_t>(count));
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, "dataset " + name + ": " + error.what());
  }
}

// Opens dataset `name` and checks that it is a 1-D integer dataset; its length to *length.
Handle open_token_dataset(hid_t file, const std::string& name, const std::string& path,
                          hsize_t* length) {
  const htri_t exists = H5Lexists(file, name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw file_error(path, "cannot query dataset " + name);
  if (exists == 0) throw file_error(path, "no dataset " + name);
  Handle dataset = open_dataset(file, name, path);
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle file_space(H5Dget_space(dataset.get()), H5Sclose);
  if (!type.valid() || !file_space.valid())
    throw file_error(path, "cannot inspect dataset " + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw file_error(path, "dataset " + name + " does not hold integers");
  // A damaged type can claim GB per element (HDF5 would allocate that times the slice to
  // convert), or bits outside its bytes (HDF5 would read past each value).
  check_number_type(type.get(), name, path);
  if (H5Sget_simple_extent_ndims(file_space.get()) != 1)
    throw file_error(path, "dataset " + name + " is not 1-D");
  if (H5Sget_simple_extent_dims(file_space.get(), length, nullptr) < 0)
    throw file_error(path, "cannot inspect dataset " + name);
  return dataset;
}

std::runtime_error token_range_error(const std::string& path, const std::string& name,
                                     int64_t token, int64_t position, int64_t vocab_size) {
  return file_error(path, "token " + std::to_string(token) + " at " + name + "[" +
                              std::to_string(position) + "] is outside [0, " +
                              std::to_string(vocab_size) + ")");
}

// A damaged dataspace can claim billions of elements over a few stored bytes (found by
// fuzz_token_file): contiguous and compact storage hold every element, so check it before
// allocating. A compact dataset that stores fewer bytes than it claims also makes HDF5 1.10 copy
// from a null buffer (H5D__compact_readvv; found by fuzz_token_file).
void check_stored_length(hid_t dataset, hsize_t length, const std::string& name, const char* unit,
                         const std::string& path) {
  Handle type(H5Dget_type(dataset), H5Tclose);
  Handle create_list(H5Dget_create_plist(dataset), H5Pclose);
  if (!type.valid() || !create_list.valid())
    throw file_error(path, "cannot inspect dataset " + name);
  const H5D_layout_t layout = H5Pget_layout(create_list.get());
  if ((layout != H5D_CONTIGUOUS && layout != H5D_COMPACT) ||
      H5Pget_external_count(create_list.get()) != 0)
    return;
  const hsize_t stored = H5Dget_storage_size(dataset);
  if (length > 0 && stored / H5Tget_size(type.get()) != length)
    throw file_error(path, "dataset " + name + " claims " + std::to_string(length) + " " + unit +
                               " but stores " + std::to_string(stored) + " bytes");
}

// Reads dataset `name` (e.g. "/train") in slices through an int64 buffer, so that any integer
// element type converts without silent wrap-around and memory stays near the int32 result.
std::vector<int32_t> read_tokens(hid_t file, const std::string& name, int64_t vocab_size,
                                 const std::string& path) {
  hsize_t length = 0;
  Handle dataset = open_token_dataset(file, name, path, &length);
  Handle file_space(H5Dget_space(dataset.get()), H5Sclose);
  if (!file_space.valid()) throw file_error(path, "cannot inspect dataset " + name);
  check_stored_length(dataset.get(), length, name, "tokens", path);

  std::vector<int32_t> tokens(length);
  const hsize_t slice_length = hsize_t{1} << 20;
  std::vector<int64_t> slice(std::min(length, slice_length));
  for (hsize_t start = 0; start < length; start += slice_length) {
    hsize_t count = std::min(slice_length, length - start);
    check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr),
          path, "cannot select in dataset " + name);
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!memory_space.valid()) throw file_error(path, "cannot read dataset " + name);
    check_chunk_sizes(dataset.get(), start, count, name, path);
    check(H5Dread(dataset.get(), H5T_NATIVE_INT64, memory_space.get(), file_space.get(),
                  H5P_DEFAULT, slice.data()),
          path, "cannot read dataset " + name);
    for (hsize_t k = 0; k < count; k++) {
      const int64_t token = slice[k];
      if (token < 0 || token >= vocab_size)
        throw token_range_error(path, name, token, static_cast<int64_t>(start + k), vocab_size);
      tokens[start + k] = static_cast<int32_t>(token);
    }
  }
  return tokens;
}

// Whether the file records document boundaries: /train_doc_starts and /val_doc_starts, both or
// neither (like the loss masks).
bool has_document_starts(hid_t file, const std::string& path) {
  const bool train = h5::link_exists(file, "/train_doc_starts");
  if (train != h5::link_exists(file, "/val_doc_starts"))
    throw file_error(path, std::string("has ") + (train ? "/train_doc_starts" : "/val_doc_starts") +
                               " but not " + (train ? "/val_doc_starts" : "/train_doc_starts"));
  return train;
}

// Dataset `name` (e.g. "/train_doc_starts") of any integer type, as int64, checked to be the
// document starts of a split of `split_size` tokens (check_document_starts).
std::vector<int64_t> read_document_starts(hid_t file, const std::string& name, int64_t split_size,
                                          const std::string& path) {
  hsize_t length = 0;
  Handle dataset = open_token_dataset(file, name, path, &length);
  check_stored_length(dataset.get(), length, name, "starts", path);
  // Starts are distinct positions of the split: of more than split_size + 1 (damage), the first
  // split_size + 1 already fail the check below, so no more are read (or allocated).
  hsize_t count = std::min<hsize_t>(length, static_cast<hsize_t>(split_size) + 1);
  std::vector<int64_t> starts(count);
  if (count > 0) {
    // HDF5 converts any integer type to int64 (an unsigned value above its range saturates, and
    // is then outside the split).
    Handle file_space(H5Dget_space(dataset.get()), H5Sclose);
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!file_space.valid() || !memory_space.valid())
      throw file_error(path, "cannot read dataset " + name);
    const hsize_t first = 0;
    check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &first, nullptr, &count, nullptr),
          path, "cannot select in dataset " + name);
    check_chunk_sizes(dataset.get(), first, count, name, path);
    check(H5Dread(dataset.get(), H5T_NATIVE_INT64, memory_space.get(), file_space.get(),
                  H5P_DEFAULT, starts.data()),
          path, "cannot read dataset " + name);
  }
  check_document_starts(starts, split_size, path + ": " + name);
  return starts;
}

// /tokenizer_model (uint8) and its attributes name and vocab_size, when the file has one.
void read_tokenizer_model(hid_t file, TokenData& data, const std::string& path) {
  const std::string name = "/tokenizer_model";
  const htri_t exists = H5Lexists(file, name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw file_error(path, "cannot query dataset " + name);
  if (exists == 0) return;
  Handle dataset = open_dataset(file, name, path);
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw file_error(path, "cannot inspect dataset " + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 ||
      H5Sget_simple_extent_ndims(space.get()) != 1)
    throw file_error(path, "dataset " + name + " is not 1-D bytes");
  check_number_type(type.get(), name, path);
  hsize_t length = 0;
  if (H5Sget_simple_extent_dims(space.get(), &length, nullptr) < 0)
    throw file_error(path, "cannot inspect dataset " + name);
  // SentencePiece models are MB; a larger claim is damage, whatever the storage layout.
  constexpr hsize_t kMaxModelBytes = hsize_t{1} << 30;
  if (length > kMaxModelBytes)
    throw file_error(path, "dataset " + name + " claims " + std::to_string(length) +
                               " bytes, more than a tokenizer model's 1 GiB");
  check_stored_length(dataset.get(), length, name, "bytes", path);
  data.tokenizer_model.assign(length, '\0');
  check_chunk_sizes(dataset.get(), 0, length, name, path);
  if (length > 0)
    check(H5Dread(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                  data.tokenizer_model.data()),
          path, "cannot read dataset " + name);
  try {
    data.tokenizer_model_name = h5::read_string_attribute(dataset.get(), "name");
    data.tokenizer_eos_token = h5::has_attribute(dataset.get(), "eos_token")
                                   ? h5::read_string_attribute(dataset.get(), "eos_token")
                                   : std::string();
    const int64_t model_vocab = h5::read_int_attribute(dataset.get(), "vocab_size");
    if (model_vocab != data.vocab_size)
      throw file_error(path, name + " has vocab_size " + std::to_string(model_vocab) +
                                 " but the file's vocab_size is " +
                                 std::to_string(data.vocab_size));
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, name + ": " + error.what());
  }
}

// ---- reading by window ----

// HDF5 as built by distributions is not thread-safe: every HDF5 call of a reader holds this.
// Recursive: open_token_file holds it while a half-built TokenFile (whose readers take it to
// close their datasets) may unwind.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

// Little-endian integer of `size` bytes, sign-extended when `is_signed`.
int64_t load_integer(const unsigned char* bytes, size_t size, bool is_signed) {
  uint64_t value = 0;
  for (size_t k = size; k-- > 0;) value = (value << 8) | bytes[k];
  if (is_signed && size < 8) {
    const uint64_t sign = uint64_t{1} << (8 * size - 1);
    return static_cast<int64_t>(value ^ sign) - static_cast<int64_t>(sign);
  }
  return static_cast<int64_t>(value);
}

// One split of a token file on disk. Contiguous little-endian storage is read with pread at the
// dataset's byte offset: no HDF5 state is touched while training, no page of the file stays
// mapped (resident memory does not grow with the file), and threads need no lock.
class TokensOnDisk final : public TokenSource {
 public:
  TokensOnDisk(hid_t file, const std::string& path, const std::string& name, int64_t vocab_size)
      : path_(path), name_(name), vocab_size_(vocab_size) {
    hsize_t length = 0;
    dataset_ = open_token_dataset(file, name, path, &length);
    check_stored_length(dataset_.get(), length, name, "tokens", path);  // as read_token_file
    length_ = static_cast<int64_t>(length);
    Handle type(H5Dget_type(dataset_.get()), H5Tclose);
    Handle create_list(H5Dget_create_plist(dataset_.get()), H5Pclose);
    if (!type.valid() || !create_list.valid())
      throw file_error(path, "cannot inspect dataset " + name);
    element_size_ = H5Tget_size(type.get());
    is_signed_ = H5Tget_sign(type.get()) == H5T_SGN_2;
    const bool plain_bytes =
        H5Pget_layout(create_list.get()) == H5D_CONTIGUOUS &&
        H5Pget_external_count(create_list.get()) == 0 &&
        (element_size_ == 1 || H5Tget_order(type.get()) == H5T_ORDER_LE) &&
        (element_size_ == 1 || element_size_ == 2 || element_size_ == 4 || element_size_ == 8);
    if (length_ == 0 || !plain_bytes) return;
    const haddr_t offset = H5Dget_offset(dataset_.get());
    if (offset == HADDR_UNDEF) return;  // storage not allocated: HDF5 reads the fill value
    descriptor_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (descriptor_ < 0) throw file_error(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat status {};
    const uint64_t end = offset + static_cast<uint64_t>(length_) * element_size_;
    if (::fstat(descriptor_, &status) != 0 || static_cast<uint64_t>(status.st_size) < end) {
      ::close(descriptor_);
      throw file_error(path, "dataset " + name + " ends at byte " + std::to_string(end) +
                                 ", past the end of the file (truncated?)");
    }
    offset_ = offset;
    dataset_.reset();
  }
  ~TokensOnDisk() override {
    {
      std::lock_guard<std::mutex> lock(prefetch_mutex_);
      stopping_ = true;
    }
    prefetch_wake_.notify_one();
    if (prefetcher_.joinable()) prefetcher_.join();
    if (descriptor_ >= 0) ::close(descriptor_);
    std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
    dataset_.reset();
  }
  TokensOnDisk(const TokensOnDisk&) = delete;
  TokensOnDisk& operator=(const TokensOnDisk&) = delete;

  int64_t size() const override { return length_; }

  const std::vector<int64_t>* document_starts() const override {
    return has_document_starts_ ? &document_starts_ : nullptr;
  }
  // Before the split is shared: `starts` checked by read_document_starts.
  void set_document_starts(std::vector<int64_t> starts) {
    document_starts_ = std::move(starts);
    has_document_starts_ = true;
  }

  void read(int64_t start, int64_t count, int32_t* out) const override {
    if (start < 0 || count < 0 || start > length_ || count > length_ - start)
      check_window(start, count, length_, (path_ + ": " + name_).c_str());  // throws
    if (count == 0) return;
    if (descriptor_ >= 0) {
      std::vector<unsigned char> bytes(static_cast<size_t>(count) * element_size_);
      read_bytes(offset_ + static_cast<uint64_t>(start) * element_size_, bytes);
      for (int64_t k = 0; k < count; k++)
        out[k] = checked(load_integer(&bytes[k * element_size_], element_size_, is_signed_),
                         start + k);
      return;
    }
    // Any other layout: an HDF5 hyperslab, converted by HDF5 to int64 (no wrap-around).
    std::vector<int64_t> values(count);
    {
      std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
      h5::QuietErrors quiet;
      Handle file_space(H5Dget_space(dataset_.get()), H5Sclose);
      const hsize_t first = start, length = count;
      check_chunk_sizes(dataset_.get(), first, length, name_, path_);
      Handle memory_space(H5Screate_simple(1, &length, nullptr), H5Sclose);
      if (!file_space.valid() || !memory_space.valid() ||
          H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &first, nullptr, &length,
                              nullptr) < 0 ||
          H5Dread(dataset_.get(), H5T_NATIVE_INT64, memory_space.get(), file_space.get(),
                  H5P_DEFAULT, values.data()) < 0)
        throw file_error(path_, "cannot read " + name_ + "[" + std::to_string(start) + ", " +
                                    std::to_string(start + count) + ")");
    }
    for (int64_t k = 0; k < count; k++) out[k] = checked(values[k], start + k);
  }

  // Handed to a helper thread: posix_fadvise on a page not yet cached submits the read, about
  // 15 us of the caller's time, which is 2% of a step of configs/tiny.yaml per sequence.
  void prefetch(int64_t start, int64_t count) const override {
    if (descriptor_ < 0 || start < 0 || count <= 0 || start > length_ - count) return;
    std::lock_guard<std::mutex> lock(prefetch_mutex_);
    if (!prefetcher_.joinable()) prefetcher_ = std::thread([this] { run_prefetcher(); });
    // Beyond a few steps ahead a hint is stale; dropping it costs only latency.
    if (prefetch_queue_.size() < 4096)
      prefetch_queue_.emplace_back(offset_ + static_cast<uint64_t>(start) * element_size_,
                                   static_cast<uint64_t>(count) * element_size_);
    prefetch_wake_.notify_one();
  }

 private:
  void run_prefetcher() const {
    std::unique_lock<std::mutex> lock(prefetch_mutex_);
    while (true) {
      prefetch_wake_.wait(lock, [this] { return stopping_ || !prefetch_queue_.empty(); });
      if (stopping_) return;
      const auto [offset, length] = prefetch_queue_.front();
      prefetch_queue_.pop_front();
      lock.unlock();
      // A failed hint costs only the latency it would have hidden.
      (void)::posix_fadvise(descriptor_, static_cast<off_t>(offset), static_cast<off_t>(length),
                            POSIX_FADV_WILLNEED);
      lock.lock();
    }
  }

  int32_t checked(int64_t token, int64_t position) const {
    if (token < 0 || token >= vocab_size_)
      throw token_range_error(path_, name_, token, position, vocab_size_);
    return static_cast<int32_t>(token);
  }

  void read_bytes(uint64_t offset, std::vector<unsigned char>& bytes) const {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t got = ::pread(descriptor_, bytes.data() + done, bytes.size() - done,
                                  static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw file_error(path_, "cannot read " + name_ + " at byte " +
                                    std::to_string(offset + done) + ": " +
                                    (got < 0 ? std::strerror(errno) : "unexpected end of file"));
      done += static_cast<size_t>(got);
    }
  }

  std::string path_, name_;
  int64_t vocab_size_;
  int64_t length_ = 0;
  size_t element_size_ = 0;
  bool is_signed_ = false;
  int descriptor_ = -1;  // >= 0: read with pread at offset_
  uint64_t offset_ = 0;
  Handle dataset_;       // valid: read through HDF5
  bool has_document_starts_ = false;
  std::vector<int64_t> document_starts_;
  // prefetch(): (byte offset, byte count) hints, served by prefetcher_ (started on first use).
  mutable std::mutex prefetch_mutex_;
  mutable std::condition_variable prefetch_wake_;
  mutable std::deque<std::pair<uint64_t, uint64_t>> prefetch_queue_;
  mutable std::thread prefetcher_;
  bool stopping_ = false;
};

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

// Document starts as a contiguous int64 dataset (empty for an empty split).
void write_document_starts(hid_t file, const char* name, const std::vector<int64_t>& starts,
                           const std::string& path) {
  const hsize_t length = starts.size();
  Handle space(H5Screate_simple(1, &length, nullptr), H5Sclose);
  if (!space.valid()) throw file_error(path, std::string("cannot create dataspace for ") + name);
  Handle dataset(
      H5Dcreate2(file, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      H5Dclose);
  if (!dataset.valid()) throw file_error(path, std::string("cannot create dataset ") + name);
  if (length > 0)
    check(H5Dwrite(dataset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, starts.data()),
          path, std::string("cannot write dataset ") + name);
  if (!dataset.close()) throw file_error(path, std::string("cannot write dataset ") + name);
}

void write_tokenizer_model(hid_t file, const std::string& model, const std::string& model_name,
                           int64_t vocab_size, const std::string& eos_token,
                           const std::string& path) {
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
    if (!eos_token.empty()) h5::write_string_attribute(dataset.get(), "eos_token", eos_token);
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, std::string("/tokenizer_model: ") + error.what());
  }
  if (!dataset.close()) throw file_error(path, "cannot write dataset /tokenizer_model");
}

void write_attributes(hid_t file, int64_t vocab_size, const std::string& tokenizer,
                      const std::string& path) {
  try {
    h5::write_int_attribute(file, "vocab_size", vocab_size);
    h5::write_string_attribute(file, "tokenizer", tokenizer);  // what h5py reads as a str
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
}

// The root attributes chat_template and chat_system, each written only when not empty.
void write_chat_attributes(hid_t file, const std::string& chat_template,
                           const std::string& chat_system, const std::string& path) {
  try {
    if (!chat_template.empty()) h5::write_string_attribute(file, "chat_template", chat_template);
    if (!chat_system.empty()) h5::write_string_attribute(file, "chat_system", chat_system);
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
}

// A root string attribute that may be missing ("" then).
std::string read_optional_string(hid_t file, const char* name, const std::string& path) {
  try {
    return h5::has_attribute(file, name) ? h5::read_string_attribute(file, name) : std::string();
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, std::string("attribute ") + name + ": " + error.what());
  }
}

template <class Target>
void read_chat_attributes(hid_t file, Target& target, const std::string& path) {
  target.chat_template = read_optional_string(file, "chat_template", path);
  target.chat_system = read_optional_string(file, "chat_system", path);
}

// The token file at `path` opened read-only, with one line naming it for each way that fails.
Handle open_token_file_handle(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) throw file_error(path, "no such file");
  if (std::filesystem::is_directory(path, error)) throw file_error(path, "is a folder, not a file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) throw file_error(path, "cannot open");
  if (is_hdf5 == 0) throw file_error(path, "not an HDF5 file");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw file_error(path, "cannot open as HDF5");
  return file;
}

}  // namespace

bool is_token_file(const std::string& path) {
  try {
    std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
    QuietHdf5Errors quiet;
    Handle file = open_token_file_handle(path);
    return h5::link_exists(file.get(), "/train");
  } catch (const std::exception&) {
    return false;
  }
}

TokenData read_token_file(const std::string& path) {
  QuietHdf5Errors quiet;
  Handle file = open_token_file_handle(path);

  TokenData data;
  data.vocab_size = read_vocab_size(file.get(), path);
  data.tokenizer = read_tokenizer_name(file.get(), path);
  read_chat_attributes(file.get(), data, path);
  data.train = read_tokens(file.get(), "/train", data.vocab_size, path);
  data.val = read_tokens(file.get(), "/val", data.vocab_size, path);
  data.documents = has_document_starts(file.get(), path);
  if (data.documents) {
    data.train_doc_starts = read_document_starts(file.get(), "/train_doc_starts",
                                                 static_cast<int64_t>(data.train.size()), path);
    data.val_doc_starts = read_document_starts(file.get(), "/val_doc_starts",
                                               static_cast<int64_t>(data.val.size()), path);
  }
  read_tokenizer_model(file.get(), data, path);
  return data;
}

namespace {

// write_token_file, with document starts when `train_starts` (and then `val_starts`) is not null.
void write_whole_token_file(const std::string& path, const std::vector<int32_t>& train,
                            const std::vector<int32_t>& val, int64_t vocab_size,
                            const std::string& tokenizer, const std::string& tokenizer_model,
                            const std::string& tokenizer_model_name,
                            const std::string& tokenizer_eos_token,
                            const std::string& chat_template, const std::string& chat_system,
                            const std::vector<int64_t>* train_starts,
                            const std::vector<int64_t>* val_starts) {
  QuietHdf5Errors quiet;
  if (vocab_size < 1 || vocab_size > kMaxVocabSize)
    throw file_error(path, "cannot write vocab_size " + std::to_string(vocab_size) +
                               ": outside [1, " + std::to_string(kMaxVocabSize) + "]");
  check_tokens(train, "train", vocab_size, path);
  check_tokens(val, "val", vocab_size, path);
  if (train_starts) {
    check_document_starts(*train_starts, static_cast<int64_t>(train.size()),
                          path + ": /train_doc_starts");
    check_document_starts(*val_starts, static_cast<int64_t>(val.size()),
                          path + ": /val_doc_starts");
  }
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
    Handle file(H5Fcreate(temporary_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT,
                          h5::checksummed_metadata_access().get()),
                H5Fclose);
    if (!file.valid()) throw file_error(temporary_path, "cannot create file");
    write_tokens(file.get(), "/train", train, file_type, temporary_path);
    write_tokens(file.get(), "/val", val, file_type, temporary_path);
    if (train_starts) {
      write_document_starts(file.get(), "/train_doc_starts", *train_starts, temporary_path);
      write_document_starts(file.get(), "/val_doc_starts", *val_starts, temporary_path);
    }
    write_attributes(file.get(), vocab_size, tokenizer, temporary_path);
    write_chat_attributes(file.get(), chat_template, chat_system, temporary_path);
    if (!tokenizer_model.empty())
      write_tokenizer_model(file.get(), tokenizer_model, tokenizer_model_name, vocab_size,
                            tokenizer_eos_token, temporary_path);
    if (!file.close()) throw file_error(temporary_path, "cannot finish writing file");
    std::filesystem::rename(temporary_path, path, error);
    if (error) throw file_error(path, "cannot rename " + temporary_path + " into place: " +
                                          error.message());
  } catch (...) {
    std::filesystem::remove(temporary_path, error);  // best effort; the original error matters
    throw;
  }
}

}  // namespace

void write_token_file(const std::string& path, const std::vector<int32_t>& train,
                      const std::vector<int32_t>& val, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& tokenizer_model,
                      const std::string& tokenizer_model_name,
                      const std::string& tokenizer_eos_token) {
  write_whole_token_file(path, train, val, vocab_size, tokenizer, tokenizer_model,
                         tokenizer_model_name, tokenizer_eos_token, {}, {}, nullptr, nullptr);
}

void write_token_file(const std::string& path, const TokenData& data) {
  write_whole_token_file(path, data.train, data.val, data.vocab_size, data.tokenizer,
                         data.tokenizer_model, data.tokenizer_model_name, data.tokenizer_eos_token,
                         data.chat_template, data.chat_system,
                         data.documents ? &data.train_doc_starts : nullptr,
                         data.documents ? &data.val_doc_starts : nullptr);
}

// ---- the tokenizer alone ----

TokenData read_token_file_tokenizer(const std::string& path) {
  QuietHdf5Errors quiet;
  Handle file = open_token_file_handle(path);
  TokenData data;
  data.vocab_size = read_vocab_size(file.get(), path);
  data.tokenizer = read_tokenizer_name(file.get(), path);
  read_chat_attributes(file.get(), data, path);
  read_tokenizer_model(file.get(), data, path);
  return data;
}

void write_tokenizer(hid_t file, const TokenData& tokenizer, const std::string& path) {
  try {
    h5::write_string_attribute(file, "tokenizer", tokenizer.tokenizer);
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
  if (!tokenizer.tokenizer_model.empty())
    write_tokenizer_model(file, tokenizer.tokenizer_model, tokenizer.tokenizer_model_name,
                          tokenizer.vocab_size, tokenizer.tokenizer_eos_token, path);
  write_chat_attributes(file, tokenizer.chat_template, tokenizer.chat_system, path);
}

bool read_tokenizer(hid_t file, TokenData& tokenizer, const std::string& path) {
  QuietHdf5Errors quiet;
  bool exists = false;
  try {
    exists = h5::has_attribute(file, "tokenizer");
  } catch (const h5::Hdf5Error& error) {
    throw file_error(path, error.what());
  }
  if (!exists) return false;
  tokenizer.tokenizer = read_tokenizer_name(file, path);
  tokenizer.vocab_size = 0;
  tokenizer.tokenizer_model.clear();
  tokenizer.tokenizer_model_name.clear();
  tokenizer.tokenizer_eos_token.clear();
  read_chat_attributes(file, tokenizer, path);
  if (H5Lexists(file, "/tokenizer_model", H5P_DEFAULT) > 0) {
    // The model's own vocab_size is the file's here (a checkpoint has no root vocab_size), so
    // read_tokenizer_model's comparison of the two holds by construction.
    Handle dataset = open_dataset(file, "/tokenizer_model", path);
    try {
      tokenizer.vocab_size = h5::read_int_attribute(dataset.get(), "vocab_size");
    } catch (const h5::Hdf5Error& error) {
      throw file_error(path, std::string("/tokenizer_model: ") + error.what());
    }
  }
  read_tokenizer_model(file, tokenizer, path);
  return true;
}

TokenData tokenizer_data(const TokenFile& file) {
  TokenData data;
  data.vocab_size = file.vocab_size;
  data.tokenizer = file.tokenizer;
  data.tokenizer_model = file.tokenizer_model;
  data.tokenizer_model_name = file.tokenizer_model_name;
  data.tokenizer_eos_token = file.tokenizer_eos_token;
  data.chat_template = file.chat_template;
  data.chat_system = file.chat_system;
  return data;
}

TokenFile open_token_file(const std::string& path) {
  std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  QuietHdf5Errors quiet;
  Handle file = open_token_file_handle(path);

  TokenFile opened;
  opened.vocab_size = read_vocab_size(file.get(), path);
  opened.tokenizer = read_tokenizer_name(file.get(), path);
  read_chat_attributes(file.get(), opened, path);
  auto train = std::make_shared<TokensOnDisk>(file.get(), path, "/train", opened.vocab_size);
  auto val = std::make_shared<TokensOnDisk>(file.get(), path, "/val", opened.vocab_size);
  if (has_document_starts(file.get(), path)) {
    train->set_document_starts(
        read_document_starts(file.get(), "/train_doc_starts", train->size(), path));
    val->set_document_starts(
        read_document_starts(file.get(), "/val_doc_starts", val->size(), path));
  }
  opened.train = std::move(train);
  opened.val = std::move(val);
  const bool train_mask = h5::link_exists(file.get(), "/train_mask");
  if (train_mask != h5::link_exists(file.get(), "/val_mask"))
    throw file_error(path, std::string("has a loss mask for ") + (train_mask ? "/train" : "/val") +
                               " but not for " + (train_mask ? "/val" : "/train") +
                               " (/train_mask and /val_mask go together)");
  if (train_mask) {
    // A mask is read like tokens of a vocabulary of 2: every value is checked to be 0 or 1.
    opened.train = std::make_shared<MaskedTokens>(
        opened.train, std::make_shared<TokensOnDisk>(file.get(), path, "/train_mask", 2),
        path + ": /train_mask");
    opened.val = std::make_shared<MaskedTokens>(
        opened.val, std::make_shared<TokensOnDisk>(file.get(), path, "/val_mask", 2),
        path + ": /val_mask");
  }
  TokenData model;  // read_tokenizer_model fills the tokenizer fields of a TokenData
  model.vocab_size = opened.vocab_size;
  read_tokenizer_model(file.get(), model, path);
  opened.tokenizer_model = std::move(model.tokenizer_model);
  opened.tokenizer_model_name = std::move(model.tokenizer_model_name);
  opened.tokenizer_eos_token = std::move(model.tokenizer_eos_token);
  return opened;
}

// ---- streaming writer ----

// One split's tokens on their way to the file: little-endian values of the stored element type in
// a raw file beside the output, `count` of them.
struct TokenSpill {
  std::string path;
  const char* split;
  std::FILE* file = nullptr;
  int64_t count = 0;
  std::vector<unsigned char> bytes;  // conversion buffer of append()

  ~TokenSpill() {
    if (file) std::fclose(file);
  }
};

namespace {

size_t element_size_for(int64_t vocab_size) {
  return vocab_size <= 256 ? 1 : vocab_size <= 65536 ? 2 : 4;
}

hid_t file_type_for(int64_t vocab_size) {
  return vocab_size <= 256 ? H5T_STD_U8LE : vocab_size <= 65536 ? H5T_STD_U16LE : H5T_STD_I32LE;
}

void remove_quietly(const std::string& path) {
  std::error_code error;
  std::filesystem::remove(path, error);  // best effort: the error that got us here matters
}

void append_to_spill(TokenSpill& spill, const int32_t* tokens, int64_t count,
                     int64_t vocab_size, const std::string& output) {
  const size_t size = element_size_for(vocab_size);
  spill.bytes.resize(static_cast<size_t>(count) * size);
  for (int64_t k = 0; k < count; k++) {
    const int32_t token = tokens[k];
    if (token < 0 || token >= vocab_size)
      throw file_error(output, "cannot write token " + std::to_string(token) + " at " +
                                   spill.split + "[" + std::to_string(spill.count + k) +
                                   "]: outside [0, " + std::to_string(vocab_size) + ")");
    const uint32_t value = static_cast<uint32_t>(token);
    for (size_t b = 0; b < size; b++) spill.bytes[k * size + b] = (value >> (8 * b)) & 0xff;
  }
  if (count > 0 && std::fwrite(spill.bytes.data(), 1, spill.bytes.size(), spill.file) !=
                       spill.bytes.size())
    throw file_error(spill.path, std::string("cannot write: ") + std::strerror(errno));
  spill.count += count;
}

// Copies a finished spill into a new contiguous dataset `name` of `file`, a slice at a time.
void copy_spill(hid_t file, const char* name, TokenSpill& spill, int64_t vocab_size,
                const std::string& path) {
  if (std::fflush(spill.file) != 0 || std::fseek(spill.file, 0, SEEK_SET) != 0)
    throw file_error(spill.path, std::string("cannot reread: ") + std::strerror(errno));
  const hid_t file_type = file_type_for(vocab_size);
  const size_t size = element_size_for(vocab_size);
  const hsize_t length = spill.count;
  Handle space(H5Screate_simple(1, &length, nullptr), H5Sclose);
  if (!space.valid()) throw file_error(path, std::string("cannot create dataspace for ") + name);
  Handle dataset(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Dclose);
  if (!dataset.valid()) throw file_error(path, std::string("cannot create dataset ") + name);
  const hsize_t slice_length = hsize_t{1} << 22;
  std::vector<unsigned char> slice(std::min(length, slice_length) * size);
  for (hsize_t start = 0; start < length; start += slice_length) {
    hsize_t count = std::min(slice_length, length - start);
    if (std::fread(slice.data(), size, count, spill.file) != count)
      throw file_error(spill.path, "cannot reread " + std::to_string(count) + " tokens at " +
                                       std::to_string(start));
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!memory_space.valid()) throw file_error(path, std::string("cannot write dataset ") + name);
    check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr),
          path, std::string("cannot select in dataset ") + name);
    // The spill holds the file's own element type: HDF5 copies it without conversion.
    check(H5Dwrite(dataset.get(), file_type, memory_space.get(), space.get(), H5P_DEFAULT,
                   slice.data()),
          path, std::string("cannot write dataset ") + name);
  }
  if (!dataset.close()) throw file_error(path, std::string("cannot write dataset ") + name);
}

}  // namespace

TokenFileWriter::TokenFileWriter(const std::string& path, int64_t vocab_size,
                                 const std::string& tokenizer, const std::string& tokenizer_model,
                                 const std::string& tokenizer_model_name, bool masked,
                                 const std::string& tokenizer_eos_token, bool documents)
    : path_(path),
      vocab_size_(vocab_size),
      tokenizer_(tokenizer),
      tokenizer_model_(tokenizer_model),
      tokenizer_model_name_(tokenizer_model_name),
      masked_(masked),
      tokenizer_eos_token_(tokenizer_eos_token),
      documents_(documents) {
  if (vocab_size < 1 || vocab_size > kMaxVocabSize)
    throw file_error(path, "cannot write vocab_size " + std::to_string(vocab_size) +
                               ": outside [1, " + std::to_string(kMaxVocabSize) + "]");
  std::error_code error;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::create_directories(parent, error) && error)
    throw file_error(path, "cannot create folder " + parent.string() + ": " + error.message());
  train_ = std::make_unique<TokenSpill>();
  val_ = std::make_unique<TokenSpill>();
  train_->split = "train";
  val_->split = "val";
  if (masked) {
    train_mask_ = std::make_unique<TokenSpill>();
    val_mask_ = std::make_unique<TokenSpill>();
    train_mask_->split = "train_mask";
    val_mask_->split = "val_mask";
  }
  for (TokenSpill* spill : spills()) {
    spill->path = path + ".tmp." + spill->split;
    spill->file = std::fopen(spill->path.c_str(), "w+b");
    if (!spill->file) {
      const std::string reason = std::strerror(errno);
      for (TokenSpill* opened : spills())
        if (opened->file) remove_quietly(opened->path);
      throw file_error(spill->path, "cannot create: " + reason);
    }
  }
}

std::vector<TokenSpill*> TokenFileWriter::spills() const {
  std::vector<TokenSpill*> all{train_.get(), val_.get()};
  if (masked_) all.insert(all.end(), {train_mask_.get(), val_mask_.get()});
  return all;
}

TokenFileWriter::~TokenFileWriter() {
  if (finished_) return;
  for (TokenSpill* spill : spills()) {
    if (spill->file) std::fclose(spill->file);
    spill->file = nullptr;
    remove_quietly(spill->path);
  }
  remove_quietly(path_ + ".tmp");
}

void TokenFileWriter::append_train(const int32_t* tokens, int64_t count, const uint8_t* mask) {
  append(false, tokens, count, mask);
}

void TokenFileWriter::append_val(const int32_t* tokens, int64_t count, const uint8_t* mask) {
  append(true, tokens, count, mask);
}

void TokenFileWriter::append(bool is_val, const int32_t* tokens, int64_t count,
                             const uint8_t* mask) {
  if (finished_) throw file_error(path_, "append after finish");
  if (mask && !masked_) throw file_error(path_, "a loss mask for a file written without one");
  TokenSpill& spill = is_val ? *val_ : *train_;
  const int64_t first = spill.count;
  append_to_spill(spill, tokens, count, vocab_size_, path_);
  bool& start_pending = is_val ? val_start_pending_ : train_start_pending_;
  if (documents_ && count > 0 && (first == 0 || start_pending)) {
    (is_val ? val_starts_ : train_starts_).push_back(first);
    start_pending = false;
  }
  if (!masked_) return;
  std::vector<int32_t> values(count, 1);  // no mask given: every token is a target
  if (mask) std::copy_n(mask, count, values.begin());
  append_to_spill(is_val ? *val_mask_ : *train_mask_, values.data(), count, 2, path_);
}

void TokenFileWriter::start_document_train() { start_document(false); }
void TokenFileWriter::start_document_val() { start_document(true); }

void TokenFileWriter::start_document(bool is_val) {
  if (finished_) throw file_error(path_, "document start after finish");
  if (!documents_) throw file_error(path_, "a document start for a file written without them");
  (is_val ? val_start_pending_ : train_start_pending_) = true;
}

int64_t TokenFileWriter::train_size() const { return train_->count; }
int64_t TokenFileWriter::val_size() const { return val_->count; }

void TokenFileWriter::finish() {
  if (finished_) throw file_error(path_, "finish called twice");
  QuietHdf5Errors quiet;
  const std::string temporary_path = path_ + ".tmp";
  {
    Handle file(H5Fcreate(temporary_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT,
                          h5::checksummed_metadata_access().get()),
                H5Fclose);
    if (!file.valid()) throw file_error(temporary_path, "cannot create file");
    copy_spill(file.get(), "/train", *train_, vocab_size_, temporary_path);
    copy_spill(file.get(), "/val", *val_, vocab_size_, temporary_path);
    if (masked_) {
      copy_spill(file.get(), "/train_mask", *train_mask_, 2, temporary_path);
      copy_spill(file.get(), "/val_mask", *val_mask_, 2, temporary_path);
    }
    if (documents_) {
      write_document_starts(file.get(), "/train_doc_starts", train_starts_, temporary_path);
      write_document_starts(file.get(), "/val_doc_starts", val_starts_, temporary_path);
    }
    write_attributes(file.get(), vocab_size_, tokenizer_, temporary_path);
    write_chat_attributes(file.get(), chat_template_, chat_system_, temporary_path);
    if (!tokenizer_model_.empty())
      write_tokenizer_model(file.get(), tokenizer_model_, tokenizer_model_name_, vocab_size_,
                            tokenizer_eos_token_, temporary_path);
    if (!file.close()) throw file_error(temporary_path, "cannot finish writing file");
  }
  std::error_code error;
  std::filesystem::rename(temporary_path, path_, error);
  if (error)
    throw file_error(path_, "cannot rename " + temporary_path + " into place: " + error.message());
  finished_ = true;
  for (TokenSpill* spill : spills()) {
    std::fclose(spill->file);
    spill->file = nullptr;
    remove_quietly(spill->path);
  }
}

std::vector<TokenFile> open_train_files(const DataConfig& data, const TokenFile& path_file) {
  std::vector<TokenFile> files;
  for (const std::string& path : data.train_paths)
    files.push_back(names_data_path(data, path) ? path_file : open_token_file(path));
  return files;
}

}  // namespace sy
