// The file side of a checkpoint save (docs/checkpoint.md, "Writing"): the HDF5 file of world
// rank 0, written chunk by chunk with HDF5's direct chunk write (the Fletcher-32 checksum computed
// here, so that a chunk is copied once instead of three times by the filter pipeline), with the
// kernel's writeback started as the file grows (so that the disk works from the first chunk
// instead of from when the page cache fills up, and the closing fsync has little left to do),
// and I/O errors reported with the system's errno text. Also the background thread of
// checkpoint.async. trainer/checkpoint.cpp decides what goes in the file; this writes it.
#pragma once
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "data/hdf5_io.h"
#include "model/backend.h"

namespace sy {

// HDF5's Fletcher-32 of `bytes` (an even count: chunks of fp32), the value its filter stores
// (little-endian) after each chunk. Equal to what H5Z's fletcher32 filter computes (tested against
// it in tests/test_checkpoint_async.cpp), in a form the compiler vectorises.
uint32_t hdf5_fletcher32(const void* data, size_t bytes);

// The system error behind the HDF5 error stack's current failure ("No space left on device",
// from the "errno = 28" its POSIX driver records), or "" when it names none. Read it right after
// the failing call, on the same thread.
std::string hdf5_system_error();

// One checkpoint file being written: groups with creation-order tracking (readers list tensors
// in model order), fp32 datasets chunked by whole rows (about kChunkBytes a chunk; one expert per
// chunk for expert tensors) with the Fletcher-32 filter. The file layout is the one readers
// expect (docs/checkpoint.md); only how the bytes get there is this class's business.
class CheckpointFileWriter {
 public:
  static constexpr int64_t kChunkBytes = int64_t{4} << 20;
  // Rows per chunk of a dataset of `shape` (experts: 1).
  static int64_t chunk_rows(const std::vector<int64_t>& shape, bool is_expert);

  explicit CheckpointFileWriter(const std::filesystem::path& path);
  // Without a successful close(): closes the file as abandon() does (the caller removes it).
  ~CheckpointFileWriter();
  CheckpointFileWriter(const CheckpointFileWriter&) = delete;
  CheckpointFileWriter& operator=(const CheckpointFileWriter&) = delete;
  hid_t file() const { return file_.get(); }

  // Creates the dataset at `path` (and its parent groups) and makes it current.
  void create(const std::string& path, const std::vector<int64_t>& shape, bool is_expert);
  // Writes whole chunks of the current dataset: rows [row, row + rows) from host memory of
  // `dtype` (f32, or f64 rounded to f32 as HDF5's conversion does). `row` is a chunk boundary
  // and `rows` whole chunks, except that the dataset's last chunk may be partial.
  void write_rows(int64_t row, int64_t rows, const void* host, DType dtype);
  // The same from a tensor (host or device): rows(row, row + n) of the current dataset.
  void write_tensor_rows(int64_t row, const Tensor& rows, Backend& backend);
  // A whole (non-expert) tensor, chunk by chunk.
  void write_whole(const Tensor& tensor, Backend& backend);
  void finish_dataset();
  // Flushes and closes the file (where HDF5 writes its last metadata), then fsyncs it.
  void close();
  // After a failed write: closes the file without touching the disk again. HDF5 1.10 leaves a
  // file whose close failed (its last metadata write hit the same full disk) half-closed, and
  // crashes on it at exit (H5F__close_cb, exit status 139); so the file's descriptor is first
  // pointed at an empty in-memory file (memfd), where HDF5's closing writes succeed.
  void abandon() noexcept;
  // Bytes of tensor data written so far (checksums included).
  int64_t bytes_written() const { return bytes_written_; }

 private:
  void ensure_parent_groups(const std::string& path);
  void write_chunk(int64_t row, const void* f32, int64_t rows);
  void start_writeback();

  std::filesystem::path path_;
  h5::Handle file_, gcpl_, dataset_;
  std::string dataset_path_;
  std::vector<int64_t> shape_;
  int64_t chunk_rows_ = 1, row_elements_ = 1;
  std::set<std::string> groups_;
  std::vector<char> chunk_;    // one chunk and its 4-byte checksum, as it goes to the file
  std::vector<char> staging_;  // device or f64 rows on their way into chunk_
  int fd_ = -1;                // the file's descriptor under HDF5's POSIX driver (for writeback)
  int64_t bytes_written_ = 0, writeback_started_at_ = 0;
  std::deque<std::pair<int64_t, int64_t>> in_writeback_;  // [offset, length) ranges, oldest first
};

// Tests only: from `after_bytes` of tensor data on (-1: never), the file's descriptor is pointed at
// /dev/full, so that every later write fails with ENOSPC, as on a disk that fills up mid-save.
void set_checkpoint_write_fault(int64_t after_bytes);

// One background file write of checkpoint.async on world rank 0: `write` runs on its own thread
// and returns "" or the error (one line naming the file). Every process has at most one.
// wait() joins it and returns its error ("" when none or when nothing ran).
class BackgroundWrite {
 public:
  ~BackgroundWrite() { wait(); }
  void start(std::function<std::string()> write);
  std::string wait();
  bool running() const { return thread_.joinable(); }

 private:
  std::thread thread_;
  std::string error_;
};

}  // namespace sy
