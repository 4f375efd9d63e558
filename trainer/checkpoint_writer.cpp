#include "trainer/checkpoint_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace sy {

namespace fs = std::filesystem;
using h5::Handle;
using h5::Hdf5Error;

static_assert(std::endian::native == std::endian::little,
              "checkpoint chunks are written as little-endian fp32 bytes");

namespace {

// Start the kernel's writeback every this many bytes, and wait for the range this many windows
// back: the disk always has a few windows queued, and dirty memory stays bounded.
constexpr int64_t kWritebackWindow = int64_t{64} << 20;
constexpr size_t kWindowsInFlight = 4;

herr_t find_errno(unsigned, const H5E_error2_t* error, void* data) {
  auto* found = static_cast<int*>(data);
  if (*found != 0 || !error->desc) return 0;
  // The POSIX driver's messages: "... errno = 28, error message = 'No space left on device' ..."
  const char* at = std::strstr(error->desc, "errno = ");
  if (at) *found = std::atoi(at + 8);
  return 0;
}

// "<what>: <system error>" when the HDF5 error stack names one, else "<what>: <HDF5's innermost
// message>".
[[noreturn]] void throw_write_error(const std::string& what) {
  const std::string system = hdf5_system_error();
  const std::string cause = system.empty() ? h5::last_error() : system;
  throw Hdf5Error(cause.empty() ? what : what + ": " + cause);
}

std::string errno_text(int error) { return std::string(std::strerror(error)); }

std::atomic<int64_t> write_fault_after{-1};

// Points `fd` at what `replacement` opens (keeping the number HDF5 holds); false on failure.
bool redirect(int fd, int replacement) {
  if (replacement < 0) return false;
  const bool ok = ::dup2(replacement, fd) >= 0;
  ::close(replacement);
  return ok;
}

}  // namespace

uint32_t hdf5_fletcher32(const void* data, size_t bytes) {
  // HDF5's definition: big-endian 16-bit words summed in blocks of 360 words (so that no sum
  // overflows 32 bits), both sums folded after each block and twice at the end. Within a block,
  // sum2 grows by n*sum1 + sum_i (n - i) w_i: the same integer as the word-by-word loop, without
  // its serial dependence.
  const auto* p = static_cast<const uint8_t*>(data);
  size_t words = bytes / 2;
  uint32_t sum1 = 0, sum2 = 0;
  while (words > 0) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(words, 360));
    uint32_t plain = 0, weighted = 0;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t w = (uint32_t{p[2 * i]} << 8) | p[2 * i + 1];
      plain += w;
      weighted += (n - i) * w;
    }
    sum2 += n * sum1 + weighted;
    sum1 += plain;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    p += 2 * n;
    words -= n;
  }
  if (bytes % 2) {
    sum1 += uint32_t{*p} << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

std::string hdf5_system_error() {
  int error = 0;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, find_errno, &error);
  return error > 0 ? errno_text(error) : "";
}

// ---- CheckpointFileWriter ----------------------------------------------------------------------

int64_t CheckpointFileWriter::chunk_rows(const std::vector<int64_t>& shape, bool is_expert) {
  if (shape.empty() || is_expert) return 1;
  int64_t row_elements = 1;
  for (size_t i = 1; i < shape.size(); ++i) row_elements *= shape[i];
  const int64_t row_bytes = std::max<int64_t>(1, row_elements * int64_t{sizeof(float)});
  return std::clamp<int64_t>(kChunkBytes / row_bytes, 1, std::max<int64_t>(shape[0], 1));
}

CheckpointFileWriter::CheckpointFileWriter(const fs::path& path) : path_(path) {
  Handle fcpl = h5::own(H5Pcreate(H5P_FILE_CREATE), H5Pclose, "cannot create the file");
  h5::check(H5Pset_link_creation_order(fcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
            "cannot create the file");
  Handle fapl = h5::checksummed_metadata_access();
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  if (file < 0) throw_write_error("cannot create the file");
  file_ = Handle(file, H5Fclose);
  gcpl_ = h5::own(H5Pcreate(H5P_GROUP_CREATE), H5Pclose, "cannot create the file");
  h5::check(H5Pset_link_creation_order(gcpl_.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
            "cannot create the file");
  // The descriptor of HDF5's default POSIX driver, for sync_file_range; without it (another
  // driver) the kernel writes back on its own schedule and the final fsync does the rest.
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_.get(), H5P_DEFAULT, &handle) >= 0 && handle)
    fd_ = *static_cast<int*>(handle);
}

void set_checkpoint_write_fault(int64_t after_bytes) { write_fault_after = after_bytes; }

CheckpointFileWriter::~CheckpointFileWriter() {
  if (file_.valid()) abandon();
}

void CheckpointFileWriter::abandon() noexcept {
  if (fd_ >= 0) redirect(fd_, ::memfd_create("sy-abandoned-checkpoint", MFD_CLOEXEC));
  fd_ = -1;
  h5::QuietErrors quiet;
  dataset_.reset();
  gcpl_.reset();
  file_.reset();
  H5Eclear2(H5E_DEFAULT);
}

void CheckpointFileWriter::create(const std::string& path, const std::vector<int64_t>& shape,
                                  bool is_expert) {
  if (shape.empty()) throw std::runtime_error("cannot store a 0-d tensor " + path);
  ensure_parent_groups(path);
  const std::string what = "cannot create dataset " + path;
  std::vector<hsize_t> dims(shape.begin(), shape.end()), chunk = dims;
  chunk_rows_ = chunk_rows(shape, is_expert);
  chunk[0] = chunk_rows_;
  row_elements_ = 1;
  for (size_t i = 1; i < shape.size(); ++i) row_elements_ *= shape[i];
  Handle space = h5::own(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                         H5Sclose, what);
  Handle dcpl = h5::own(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, what);
  h5::check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
  h5::check(H5Pset_fletcher32(dcpl.get()), what);
  h5::check(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), what);
  const hid_t dataset = H5Dcreate2(file_.get(), path.c_str(), H5T_IEEE_F32LE, space.get(),
                                   H5P_DEFAULT, dcpl.get(), H5P_DEFAULT);
  if (dataset < 0) throw_write_error(what);
  dataset_ = Handle(dataset, H5Dclose);
  dataset_path_ = path;
  shape_ = shape;
}

void CheckpointFileWriter::write_rows(int64_t row, int64_t rows, const void* host, DType dtype) {
  if (dtype != DType::f32 && dtype != DType::f64)
    throw std::runtime_error(std::string("checkpoint: cannot store a ") + dtype_name(dtype) +
                             " tensor (master weights are f32 or f64)");
  const size_t element_bytes = dtype == DType::f32 ? 4 : 8;
  for (int64_t done = 0; done < rows;) {
    const int64_t piece = std::min(chunk_rows_, rows - done);
    const char* source = static_cast<const char*>(host) + done * row_elements_ * element_bytes;
    if (dtype == DType::f64) {
      // The rounding HDF5's double-to-float conversion does (round to nearest).
      chunk_.resize(chunk_rows_ * row_elements_ * sizeof(float) + 4);
      const double* in = reinterpret_cast<const double*>(source);
      float* out = reinterpret_cast<float*>(chunk_.data());
      for (int64_t i = 0; i < piece * row_elements_; ++i) out[i] = static_cast<float>(in[i]);
      source = chunk_.data();
    }
    write_chunk(row + done, source, piece);
    done += piece;
  }
}

void CheckpointFileWriter::write_tensor_rows(int64_t row, const Tensor& rows, Backend& backend) {
  const int64_t n = rows.dim(0);
  if (rows.device() == Device::cpu) {
    write_rows(row, n, rows.data(), rows.dtype());
    return;
  }
  for (int64_t done = 0; done < n;) {
    const int64_t piece = std::min(chunk_rows_, n - done);
    const Tensor part = rows.rows(done, done + piece);
    const DType dtype = host_dtype(part.dtype());  // what copy_to_host gives
    if (dtype == DType::f32) {                     // straight into the chunk buffer: one copy
      chunk_.resize(chunk_rows_ * row_elements_ * sizeof(float) + 4);
      backend.copy_to_host(chunk_.data(), part);
      write_chunk(row + done, chunk_.data(), piece);
    } else {
      staging_.resize(part.nbytes());
      backend.copy_to_host(staging_.data(), part);
      write_rows(row + done, piece, staging_.data(), dtype);
    }
    done += piece;
  }
}

void CheckpointFileWriter::write_whole(const Tensor& tensor, Backend& backend) {
  if (tensor.ndim() == 0) throw std::runtime_error("cannot store a 0-d tensor " + dataset_path_);
  write_tensor_rows(0, tensor, backend);
}

void CheckpointFileWriter::write_chunk(int64_t row, const void* f32, int64_t rows) {
  if (row % chunk_rows_ != 0 || (rows != chunk_rows_ && row + rows != shape_[0]) ||
      row + rows > shape_[0])
    throw std::logic_error("checkpoint writer: rows [" + std::to_string(row) + ", " +
                           std::to_string(row + rows) + ") of " + dataset_path_ +
                           " are not whole chunks");
  const size_t chunk_bytes = static_cast<size_t>(chunk_rows_ * row_elements_) * sizeof(float);
  const size_t data_bytes = static_cast<size_t>(rows * row_elements_) * sizeof(float);
  chunk_.resize(chunk_bytes + 4);
  if (f32 != chunk_.data()) std::memcpy(chunk_.data(), f32, data_bytes);
  // A partial last chunk is stored whole (HDF5 keeps edge chunks at full size); its tail is zero
  // so that the file's bytes do not depend on what the buffer held before.
  std::memset(chunk_.data() + data_bytes, 0, chunk_bytes - data_bytes);
  const uint32_t checksum = hdf5_fletcher32(chunk_.data(), chunk_bytes);
  std::memcpy(chunk_.data() + chunk_bytes, &checksum, 4);  // stored little-endian
  std::vector<hsize_t> offset(shape_.size(), 0);
  offset[0] = static_cast<hsize_t>(row);
  const int64_t fault = write_fault_after;
  if (fault >= 0 && bytes_written_ >= fault && fd_ >= 0)
    redirect(fd_, ::open("/dev/full", O_WRONLY | O_CLOEXEC));
  if (H5Dwrite_chunk(dataset_.get(), H5P_DEFAULT, 0, offset.data(), chunk_bytes + 4, chunk_.data()) < 0)
    throw_write_error("cannot write " + dataset_path_);
  bytes_written_ += static_cast<int64_t>(chunk_bytes + 4);
  if (bytes_written_ - writeback_started_at_ >= kWritebackWindow) start_writeback();
}

void CheckpointFileWriter::start_writeback() {
  writeback_started_at_ = bytes_written_;
  if (fd_ < 0) return;
  struct stat status {};
  if (::fstat(fd_, &status) != 0) return;
  const int64_t end = status.st_size;
  const int64_t begin = in_writeback_.empty() ? 0 : in_writeback_.back().first + in_writeback_.back().second;
  if (end <= begin) return;
  if (::sync_file_range(fd_, begin, end - begin, SYNC_FILE_RANGE_WRITE) != 0) {
    if (errno == EINVAL || errno == ENOSYS || errno == ESPIPE) {  // not for this file system
      fd_ = -1;
      return;
    }
    throw Hdf5Error("cannot write " + dataset_path_ + ": " + errno_text(errno));
  }
  in_writeback_.emplace_back(begin, end - begin);
  while (in_writeback_.size() > kWindowsInFlight) {
    const auto [offset, length] = in_writeback_.front();
    in_writeback_.pop_front();
    if (::sync_file_range(fd_, offset, length,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                              SYNC_FILE_RANGE_WAIT_AFTER) != 0)
      throw Hdf5Error("cannot write " + dataset_path_ + ": " + errno_text(errno));
  }
}

void CheckpointFileWriter::finish_dataset() {
  if (!dataset_.close()) throw_write_error("cannot write " + dataset_path_);
}

void CheckpointFileWriter::close() {
  if (!dataset_.close()) throw_write_error("cannot write " + dataset_path_);
  gcpl_.reset();
  // Every byte reaches the file here; the close after it has nothing left to write, so that a
  // failure is met while abandon() can still make the close safe.
  if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0) throw_write_error("cannot flush the file");
  fd_ = -1;
  if (!file_.close()) throw_write_error("cannot close the file");
}

void CheckpointFileWriter::ensure_parent_groups(const std::string& path) {
  size_t next = path.find('/', 1);
  while (next != std::string::npos) {
    const std::string group = path.substr(0, next);
    if (!groups_.count(group)) {
      const htri_t exists = H5Lexists(file_.get(), group.c_str(), H5P_DEFAULT);
      h5::check(exists, "cannot look up group " + group);
      if (exists == 0) {
        const hid_t id = H5Gcreate2(file_.get(), group.c_str(), H5P_DEFAULT, gcpl_.get(), H5P_DEFAULT);
        if (id < 0) throw_write_error("cannot create group " + group);
        H5Gclose(id);
      }
      groups_.insert(group);
    }
    next = path.find('/', next + 1);
  }
}

// ---- BackgroundWrite ---------------------------------------------------------------------------

void BackgroundWrite::start(std::function<std::string()> write) {
  wait();
  thread_ = std::thread([this, write = std::move(write)] {
    try {
      error_ = write();
    } catch (const std::exception& error) {
      error_ = error.what();
    } catch (...) {
      error_ = "unknown error in the background checkpoint write";
    }
    // This thread's HDF5 error stack holds references to HDF5's error classes until cleared;
    // left behind, the library cannot shut down at exit ("HDF5: infinite loop closing library").
    H5Eclear2(H5E_DEFAULT);
  });
}

std::string BackgroundWrite::wait() {
  if (thread_.joinable()) thread_.join();
  return std::exchange(error_, std::string());
}

}  // namespace sy
