#include "parallel/nccl_communicator.h"

#include <chrono>
#include <cstdio>
#include <stdexcept>

namespace sy {

namespace {

// Throws for a dtype added to DType but not here, as the MPI communicator's mpi_type does:
// moving its bytes as float32 would send the wrong count.
ncclDataType_t nccl_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::f32_split:
      break;  // two planes: moved plane by plane (planes()), never reduced
  }
  throw std::runtime_error(std::string("nccl ") + op + ": cannot move or reduce a " +
                           dtype_name(dtype) + " tensor as one buffer");
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The current CUDA device, or -1 where there is none.
int current_device() {
  int device = -1;
  return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

// " (rank R, device D)": where an error happened, R this process's rank in the world.
std::string process_where(int device) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  return " (rank " + std::to_string(world_rank) + ", device " + std::to_string(device) + ")";
}

}  // namespace

void NcclCommunicator::fail(const char* op, const std::string& message) const {
  host_.fail(op, message);
}

void NcclCommunicator::check(ncclResult_t result, const char* op, const char* what) const {
  if (result == ncclSuccess) return;
  std::string detail = ncclGetErrorString(result);
  if (nccl_) {
    const char* last = ncclGetLastError(nccl_);
    if (last && *last) detail += std::string(": ") + last;
  }
  fail(op, std::string(what) + " failed: " + detail);
}

void NcclCommunicator::check_tensor(const Tensor& x, const char* op, const char* name) const {
  if (x.device() != Device::cuda)
    fail(op, std::string(name) + " is not on the cuda device (NCCL moves device memory only)");
}

namespace {
// What NCCL moves for x: x itself, or an f32_split tensor's two planes of 16-bit halves (each
// contiguous, also for a view of rows), as bf16 bits.
struct Plane {
  void* data;
  size_t count;
  ncclDataType_t type;
};
std::vector<Plane> planes(const Tensor& x, const char* op) {
  const auto n = static_cast<size_t>(x.numel());
  if (x.dtype() != DType::f32_split) return {{x.data(), n, nccl_type(x.dtype(), op)}};
  return {{x.data(), n, ncclBfloat16}, {x.low_half_bits(), n, ncclBfloat16}};
}
}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm comm, cudaStream_t stream, Watchdog* watchdog,
                                   const char* group)
    : comm_(comm),
      stream_(stream),
      device_(current_device()),
      watchdog_(watchdog),
      group_(group),
      host_(comm, watchdog, group, "nccl", process_where(device_)) {
  if (device_ < 0) fail("init", "no current CUDA device");
  host_.check(MPI_Comm_rank(comm_, &rank_), "init");
  host_.check(MPI_Comm_size(comm_, &size_), "init");
  ncclUniqueId id;
  if (rank_ == 0) check(ncclGetUniqueId(&id), "init", "ncclGetUniqueId");
  {
    WatchdogScope watch(watchdog_, "NCCL init", group_);
    host_.check(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm_), "init");
    check(ncclCommInitRank(&nccl_, size_, id, rank_), "init", "ncclCommInitRank");
  }
  if (watchdog_) {
    const cudaError_t made = cudaEventCreateWithFlags(&enqueued_, cudaEventDisableTiming);
    if (made != cudaSuccess)
      fail("init", std::string("cudaEventCreate: ") + cudaGetErrorString(made));
    poller_id_ = watchdog_->add_poller([this] { return poll_for_watchdog(); },
                                       [this] { ncclCommAbort(nccl_); });
  }
}

void NcclCommunicator::note_enqueued(const char* op) {
  if (!watchdog_) return;
  std::lock_guard<std::mutex> lock(pending_mutex_);
  const cudaError_t recorded = cudaEventRecord(enqueued_, stream_);
  if (recorded != cudaSuccess)
    fail(op, std::string("cudaEventRecord: ") + cudaGetErrorString(recorded));
  if (pending_since_ns_ == 0) {
    pending_since_ns_ = now_ns();
    pending_op_ = op;
  }
}

std::string NcclCommunicator::poll_for_watchdog() {
  ncclResult_t async = ncclSuccess;
  if (ncclCommGetAsyncError(nccl_, &async) == ncclSuccess && async != ncclSuccess &&
      async != ncclInProgress) {
    std::string detail = ncclGetErrorString(async);
    const char* last = ncclGetLastError(nccl_);
    if (last && *last) detail += std::string(": ") + last;
    return std::string("NCCL asynchronous error on ") + group_ + " (device " +
           std::to_string(device_) + "): " + detail;
  }
  std::lock_guard<std::mutex> lock(pending_mutex_);
  if (pending_since_ns_ == 0) return "";
  cudaSetDevice(device_);  // this is the watchdog's thread
  const cudaError_t state = cudaEventQuery(enqueued_);
  if (state == cudaSuccess) {
    pending_since_ns_ = 0;  // the latest collective is done, hence every one before it
    return "";
  }
  if (state != cudaErrorNotReady)
    return std::string("CUDA error while waiting for ") + pending_op_ + " (" + group_ +
           ", NCCL): " + cudaGetErrorString(state);
  const double waited_s = static_cast<double>(now_ns() - pending_since_ns_) * 1e-9;
  if (waited_s < watchdog_->timeout_s()) return "";
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%g", watchdog_->timeout_s());
  return std::string(pending_op_) + " (" + group_ + ", NCCL on device " + std::to_string(device_) +
         ") did not complete within " + seconds +
         " s; a rank is stalled or dead (parallel.timeout_s)";
}

NcclCommunicator::~NcclCommunicator() {
  if (watchdog_ && poller_id_ >= 0) watchdog_->remove_poller(poller_id_);
  if (enqueued_) cudaEventDestroy(enqueued_);
  if (nccl_) {
    cudaStreamSynchronize(stream_);
    if (side_stream_) cudaStreamSynchronize(side_stream_);
    ncclCommDestroy(nccl_);
  }
  if (side_ready_) cudaEventDestroy(side_ready_);
  if (side_done_) cudaEventDestroy(side_done_);
  if (side_stream_) cudaStreamDestroy(side_stream_);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void NcclCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                                    const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  const char* op = "all_to_all_v";
  check_tensor(send, op, "send");
  check_tensor(recv, op, "recv");
  if (send.dtype() != recv.dtype()) fail(op, "send and recv dtypes differ");
  if (static_cast<int>(send_counts.size()) != size_ || static_cast<int>(recv_counts.size()) != size_)
    fail(op, "one count per peer needed");
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < size_; ++p) {
    send_total += send_counts[p];
    recv_total += recv_counts[p];
  }
  if (send_total > send.numel() || recv_total > recv.numel())
    fail(op, "counts exceed the tensors (send " + std::to_string(send_total) + " of " +
                 std::to_string(send.numel()) + ", recv " + std::to_string(recv_total) + " of " +
                 std::to_string(recv.numel()) + ")");
  const size_t elem = dtype_size(send.dtype());
  const ncclDataType_t type = nccl_type(send.dtype(), op);
  const char* send_base = static_cast<const char*>(send.data());
  char* recv_base = static_cast<char*>(recv.data());
  check(ncclGroupStart(), op, "ncclGroupStart");
  int64_t send_offset = 0, recv_offset = 0;
  for (int p = 0; p < size_; ++p) {
    if (send_counts[p] > 0)
      check(ncclSend(send_base + send_offset * elem, static_cast<size_t>(send_counts[p]), type, p,
                     nccl_, stream_),
            op, "ncclSend");
    if (recv_counts[p] > 0)
      check(ncclRecv(recv_base + recv_offset * elem, static_cast<size_t>(recv_counts[p]), type, p,
                     nccl_, stream_),
            op, "ncclRecv");
    send_offset += send_counts[p];
    recv_offset += recv_counts[p];
  }
  check(ncclGroupEnd(), op, "ncclGroupEnd");
  note_enqueued(op);
}

void NcclCommunicator::all_to_all_blocks(const Tensor& send,
                                         const std::vector<PeerBlock>& send_blocks,
                                         const Tensor& recv,
                                         const std::vector<PeerBlock>& recv_blocks) {
  const char* op = "all_to_all_blocks";
  check_tensor(send, op, "send");
  check_tensor(recv, op, "recv");
  if (const std::string error = peer_blocks_error(send, send_blocks, recv, recv_blocks, size_);
      !error.empty())
    fail(op, error);
  const size_t elem = dtype_size(send.dtype());
  const ncclDataType_t type = nccl_type(send.dtype(), op);
  const char* send_base = static_cast<const char*>(send.data());
  char* recv_base = static_cast<char*>(recv.data());
  // One group: NCCL matches the sends and receives between two ranks in the order issued, which
  // is the blocks' listed order (the contract in communicator.h).
  check(ncclGroupStart(), op, "ncclGroupStart");
  for (const PeerBlock& b : send_blocks)
    check(ncclSend(send_base + b.offset * elem, static_cast<size_t>(b.count), type, b.peer, nccl_,
                   stream_),
          op, "ncclSend");
  for (const PeerBlock& b : recv_blocks)
    check(ncclRecv(recv_base + b.offset * elem, static_cast<size_t>(b.count), type, b.peer, nccl_,
                   stream_),
          op, "ncclRecv");
  check(ncclGroupEnd(), op, "ncclGroupEnd");
  note_enqueued(op);
}

void NcclCommunicator::all_reduce(const Tensor& x, ReduceOp op) {
  check_tensor(x, "all_reduce", "x");
  if (x.numel() == 0) return;
  check(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()),
                      nccl_type(x.dtype(), "all_reduce"),
                      nccl_op(op), nccl_, stream_),
        "all_reduce", "ncclAllReduce");
  note_enqueued("all_reduce");
}

void NcclCommunicator::start_all_reduce(const std::vector<Tensor>& xs, ReduceOp op) {
  const char* name = "start_all_reduce";
  for (const Tensor& x : xs) check_tensor(x, name, "x");
  const auto cuda = [&](cudaError_t result, const char* what) {
    if (result != cudaSuccess) fail(name, std::string(what) + ": " + cudaGetErrorString(result));
  };
  if (!side_stream_) {
    int least = 0, greatest = 0;
    cuda(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    cuda(cudaStreamCreateWithPriority(&side_stream_, cudaStreamNonBlocking, greatest),
         "cudaStreamCreateWithPriority");
    cuda(cudaEventCreateWithFlags(&side_ready_, cudaEventDisableTiming), "cudaEventCreate");
    cuda(cudaEventCreateWithFlags(&side_done_, cudaEventDisableTiming), "cudaEventCreate");
  }
  cuda(cudaEventRecord(side_ready_, stream_), "cudaEventRecord");
  cuda(cudaStreamWaitEvent(side_stream_, side_ready_, 0), "cudaStreamWaitEvent");
  // One call per tensor, as all_reduce makes it, so that each sum has all_reduce's bits (NCCL
  // picks its algorithm by the call's size).
  for (const Tensor& x : xs) {
    if (x.numel() == 0) continue;
    check(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()),
                        nccl_type(x.dtype(), name), nccl_op(op), nccl_, side_stream_),
          name, "ncclAllReduce");
  }
  side_pending_ = true;
}

void NcclCommunicator::wait_started() {
  if (!side_pending_) return;
  const char* name = "wait_started";
  cudaError_t result = cudaEventRecord(side_done_, side_stream_);
  if (result == cudaSuccess) result = cudaStreamWaitEvent(stream_, side_done_, 0);
  if (result != cudaSuccess) fail(name, std::string("CUDA: ") + cudaGetErrorString(result));
  side_pending_ = false;
  note_enqueued("all_reduce (started during backward)");  // the watchdog times the wait
}

void NcclCommunicator::broadcast(const Tensor& x, int root) {
  check_tensor(x, "broadcast", "x");
  if (x.numel() == 0) return;
  for (const Plane& p : planes(x, "broadcast"))
    check(ncclBroadcast(p.data, p.data, p.count, p.type, root, nccl_, stream_), "broadcast",
          "ncclBroadcast");
  note_enqueued("broadcast");
}

void NcclCommunicator::send(const Tensor& x, int peer) {
  check_tensor(x, "send", "x");
  if (x.numel() == 0) return;
  for (const Plane& p : planes(x, "send"))
    check(ncclSend(p.data, p.count, p.type, peer, nccl_, stream_), "send", "ncclSend");
  note_enqueued("send");
}

void NcclCommunicator::recv(const Tensor& x, int peer) {
  check_tensor(x, "recv", "x");
  if (x.numel() == 0) return;
  for (const Plane& p : planes(x, "recv"))
    check(ncclRecv(p.data, p.count, p.type, peer, nccl_, stream_), "recv", "ncclRecv");
  note_enqueued("recv");
}

std::vector<int64_t> NcclCommunicator::all_to_all_host(const std::vector<int64_t>& send,
                                                       int64_t per_peer) {
  return host_.all_to_all(send, per_peer);
}

void NcclCommunicator::all_reduce_host(std::vector<double>& values, ReduceOp op) {
  host_.all_reduce(values, op);
}

void NcclCommunicator::all_reduce_host(std::vector<int64_t>& values, ReduceOp op) {
  host_.all_reduce(values, op);
}

std::vector<std::string> NcclCommunicator::all_gather_host(const std::string& value) {
  return host_.all_gather(value);
}

void NcclCommunicator::barrier() { host_.barrier(); }

}  // namespace sy
