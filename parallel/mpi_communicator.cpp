#include "parallel/mpi_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "parallel/launch.h"

namespace sy {

namespace {

MPI_Datatype mpi_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::bf16: return MPI_UINT16_T;  // moved, never reduced
    case DType::f32_split:
      return MPI_FLOAT;  // staged through the host as f32 (host_dtype)
  }
  throw std::runtime_error(std::string("mpi ") + op + ": unsupported dtype");
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

int as_int(int64_t value, const char* op) {
  if (value < 0 || value > INT_MAX)
    throw std::runtime_error(std::string("mpi ") + op + ": count " + std::to_string(value) +
                             " does not fit an MPI int count");
  return static_cast<int>(value);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, Backend& backend, Watchdog* watchdog,
                                 const char* group)
    : comm_(comm),
      backend_(backend),
      watchdog_(watchdog),
      group_(group),
      host_(comm, watchdog, group, "mpi") {
  check_mpi(MPI_Comm_rank(comm_, &rank_), "comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "comm_size");
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void* MpiCommunicator::host_view(const Tensor& x, std::vector<char>& staging, bool fill) {
  if (x.device() == Device::cpu) return x.data();
  staging.resize(x.nbytes());
  if (fill) backend_.copy_to_host(staging.data(), x);
  return staging.data();
}

void MpiCommunicator::finish_host(const Tensor& x, std::vector<char>& staging) {
  if (x.device() != Device::cpu) backend_.copy_from_host(x, staging.data());
}

void MpiCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                                   const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  if (static_cast<int>(send_counts.size()) != size_ || static_cast<int>(recv_counts.size()) != size_)
    throw std::runtime_error("mpi all_to_all_v: counts must have one entry per rank");
  if (send.dtype() != recv.dtype()) throw std::runtime_error("mpi all_to_all_v: dtype mismatch");
  std::vector<int> scounts(size_), sdispls(size_), rcounts(size_), rdispls(size_);
  int64_t soffset = 0, roffset = 0;
  for (int p = 0; p < size_; ++p) {
    scounts[p] = as_int(send_counts[p], "all_to_all_v");
    rcounts[p] = as_int(recv_counts[p], "all_to_all_v");
    sdispls[p] = as_int(soffset, "all_to_all_v");
    rdispls[p] = as_int(roffset, "all_to_all_v");
    soffset += send_counts[p];
    roffset += recv_counts[p];
  }
  if (soffset > send.numel() || roffset > recv.numel())
    throw std::runtime_error("mpi all_to_all_v: counts exceed the buffers (" +
                             std::to_string(soffset) + " > " + std::to_string(send.numel()) +
                             " or " + std::to_string(roffset) + " > " +
                             std::to_string(recv.numel()) + ")");
  const MPI_Datatype type = mpi_type(send.dtype(), "all_to_all_v");
  void* send_host = host_view(send, send_staging_, true);
  void* recv_host = host_view(recv, recv_staging_, false);
  {
    WatchdogScope watch(watchdog_, "all_to_all_v", group_);
    check_mpi(MPI_Alltoallv(send_host, scounts.data(), sdispls.data(), type, recv_host,
                            rcounts.data(), rdispls.data(), type, comm_),
              "all_to_all_v");
  }
  finish_host(recv, recv_staging_);
}

void MpiCommunicator::all_to_all_blocks(const Tensor& send,
                                        const std::vector<PeerBlock>& send_blocks,
                                        const Tensor& recv,
                                        const std::vector<PeerBlock>& recv_blocks) {
  const char* op = "all_to_all_blocks";
  if (const std::string error = peer_blocks_error(send, send_blocks, recv, recv_blocks, size_);
      !error.empty())
    throw std::runtime_error("mpi all_to_all_blocks: " + error);
  // One datatype a peer and side, the blocks as byte ranges of the host buffer: MPI moves them
  // straight from their places and into theirs, no packing of ours in between.
  const int64_t element = static_cast<int64_t>(dtype_size(host_dtype(send.dtype())));
  std::vector<MPI_Datatype> types;
  struct FreeTypes {
    std::vector<MPI_Datatype>& types;
    ~FreeTypes() {
      for (MPI_Datatype& type : types) MPI_Type_free(&type);
    }
  } free_types{types};
  auto peer_types = [&](const std::vector<PeerBlock>& blocks) {
    std::vector<std::vector<int>> lengths(size_);
    std::vector<std::vector<MPI_Aint>> displacements(size_);
    for (const PeerBlock& b : blocks) {
      lengths[b.peer].push_back(as_int(b.count * element, op));
      displacements[b.peer].push_back(static_cast<MPI_Aint>(b.offset * element));
    }
    std::vector<MPI_Datatype> out(size_);
    for (int p = 0; p < size_; ++p) {
      check_mpi(MPI_Type_create_hindexed(static_cast<int>(lengths[p].size()), lengths[p].data(),
                                         displacements[p].data(), MPI_BYTE, &out[p]),
                op);
      check_mpi(MPI_Type_commit(&out[p]), op);
      types.push_back(out[p]);  // freed on every way out
    }
    return out;
  };
  const std::vector<MPI_Datatype> send_types = peer_types(send_blocks);
  const std::vector<MPI_Datatype> recv_types = peer_types(recv_blocks);
  const std::vector<int> ones(size_, 1), zeros(size_, 0);
  void* send_host = host_view(send, send_staging_, true);
  void* recv_host = host_view(recv, recv_staging_, false);
  {
    WatchdogScope watch(watchdog_, op, group_);
    check_mpi(MPI_Alltoallw(send_host, ones.data(), zeros.data(), send_types.data(), recv_host,
                            ones.data(), zeros.data(), recv_types.data(), comm_),
              op);
  }
  finish_host(recv, recv_staging_);
}

void MpiCommunicator::all_reduce(const Tensor& x, ReduceOp op) {
  if (x.dtype() == DType::bf16) throw std::runtime_error("mpi all_reduce: bf16 is not reduced");
  void* host = host_view(x, recv_staging_, true);
  {
    WatchdogScope watch(watchdog_, "all_reduce", group_);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, host, as_int(x.numel(), "all_reduce"),
                            mpi_type(x.dtype(), "all_reduce"), mpi_op(op), comm_),
              "all_reduce");
  }
  finish_host(x, recv_staging_);
}

void MpiCommunicator::broadcast(const Tensor& x, int root) {
  void* host = host_view(x, recv_staging_, rank_ == root);
  {
    WatchdogScope watch(watchdog_, "broadcast", group_);
    check_mpi(MPI_Bcast(host, as_int(x.numel(), "broadcast"), mpi_type(x.dtype(), "broadcast"),
                        root, comm_),
              "broadcast");
  }
  finish_host(x, recv_staging_);
}

void MpiCommunicator::send(const Tensor& x, int peer) {
  void* host = host_view(x, send_staging_, true);
  {
    WatchdogScope watch(watchdog_, "send", group_);
    check_mpi(
        MPI_Send(host, as_int(x.numel(), "send"), mpi_type(x.dtype(), "send"), peer, 0, comm_),
        "send");
  }
}

void MpiCommunicator::recv(const Tensor& x, int peer) {
  void* host = host_view(x, recv_staging_, false);
  {
    WatchdogScope watch(watchdog_, "recv", group_);
    check_mpi(MPI_Recv(host, as_int(x.numel(), "recv"), mpi_type(x.dtype(), "recv"), peer, 0, comm_,
                       MPI_STATUS_IGNORE),
              "recv");
  }
  finish_host(x, recv_staging_);
}

std::vector<int64_t> MpiCommunicator::all_to_all_host(const std::vector<int64_t>& send,
                                                      int64_t per_peer) {
  return host_.all_to_all(send, per_peer);
}

void MpiCommunicator::all_reduce_host(std::vector<double>& values, ReduceOp op) {
  host_.all_reduce(values, op);
}

void MpiCommunicator::all_reduce_host(std::vector<int64_t>& values, ReduceOp op) {
  host_.all_reduce(values, op);
}

std::vector<std::string> MpiCommunicator::all_gather_host(const std::string& value) {
  return host_.all_gather(value);
}

void MpiCommunicator::barrier() { host_.barrier(); }

namespace {

// Tests `request` every `interval_us` microseconds until it completes.
void wait_sleeping(MPI_Request& request, useconds_t interval_us, const char* op) {
  int done = 0;
  check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op);
  while (!done) {
    ::usleep(interval_us);
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op);
  }
}

}  // namespace

void MpiCommunicator::barrier_sleeping() {
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Ibarrier(comm_, &request), "barrier_sleeping");
  wait_sleeping(request, 1000, "barrier_sleeping");
}

void MpiCommunicator::send_sleeping(const Tensor& x, int peer) {
  // The same datatype and tag as send() and recv(), so that either end may sleep.
  void* host = host_view(x, send_staging_, true);
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Isend(host, as_int(x.numel(), "send_sleeping"), mpi_type(x.dtype(), "send_sleeping"),
                      peer, 0, comm_, &request),
            "send_sleeping");
  // A shorter interval than the barrier's: the writer takes one expert slice after another.
  wait_sleeping(request, 200, "send_sleeping");
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

}  // namespace sy
