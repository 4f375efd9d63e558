// Communicator on NCCL, for one rank per GPU: the tensor collectives run on the device,
// stream-ordered on the backend's stream (no host synchronisation); the small host values go
// through MPI on the same process group. Bootstrapped through MPI: rank 0 of the group makes
// the NCCL unique id and broadcasts it. NCCL refuses two ranks on one GPU: ranks that share a
// GPU use MpiCommunicator instead. Built only with CUDA and NCCL (SY_HAVE_NCCL).
#pragma once
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_host_collectives.h"
#include "parallel/watchdog.h"

namespace sy {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `comm`. Takes ownership of `comm` (freed in the destructor unless it is
  // MPI_COMM_WORLD), as MpiCommunicator does. `stream`: the CUDA backend's stream
  // (Backend::native_stream()); the current CUDA device must be the backend's. `watchdog` (may
  // be null) is armed around the blocking MPI calls and polls this communicator: an
  // asynchronous NCCL error, or a device collective still running parallel.timeout_s after it
  // was enqueued, ends the job after ncclCommAbort. `group` (a string literal) names it there.
  NcclCommunicator(MPI_Comm comm, cudaStream_t stream, Watchdog* watchdog = nullptr,
                   const char* group = "world");
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  MPI_Comm comm() const { return comm_; }

  // Device tensors only (f32, f64, bf16, i32), enqueued on the stream; counts in elements.
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                    const Tensor& recv, const std::vector<int64_t>& recv_counts) override;
  void all_to_all_blocks(const Tensor& send, const std::vector<PeerBlock>& send_blocks,
                         const Tensor& recv, const std::vector<PeerBlock>& recv_blocks) override;
  void all_reduce(const Tensor& x, ReduceOp op) override;
  void broadcast(const Tensor& x, int root) override;
  void send(const Tensor& x, int peer) override;
  void recv(const Tensor& x, int peer) override;

  std::vector<int64_t> all_to_all_host(const std::vector<int64_t>& send,
                                       int64_t per_peer) override;
  void all_reduce_host(std::vector<double>& values, ReduceOp op) override;
  void all_reduce_host(std::vector<int64_t>& values, ReduceOp op) override;
  std::vector<std::string> all_gather_host(const std::string& value) override;
  void barrier() override;
  // On a side stream of this communicator (created at the first call, high priority, so that
  // its kernels start as soon as SMs free up), after an event recorded on the main stream; the
  // main stream waits for it at wait_started().
  void start_all_reduce(const std::vector<Tensor>& xs, ReduceOp op) override;
  void wait_started() override;
  bool reduces_in_background() const override { return true; }

 private:
  [[noreturn]] void fail(const char* op, const std::string& message) const;
  void check(ncclResult_t result, const char* op, const char* what) const;
  void check_tensor(const Tensor& x, const char* op, const char* name) const;
  // After each enqueued device collective: records event_ on the stream and, when nothing was
  // pending, starts the clock. Run on the watchdog thread: the problem, or "".
  void note_enqueued(const char* op);
  std::string poll_for_watchdog();

  MPI_Comm comm_;
  cudaStream_t stream_;
  ncclComm_t nccl_ = nullptr;
  int rank_ = 0, size_ = 1, device_ = -1;

  Watchdog* watchdog_;
  const char* group_;
  MpiHostCollectives host_;  // the host collectives, and every error's "nccl OP (rank, device)"
  int poller_id_ = -1;
  cudaEvent_t enqueued_ = nullptr;  // recorded after the latest device collective
  cudaStream_t side_stream_ = nullptr;  // start_all_reduce's; null until its first call
  cudaEvent_t side_ready_ = nullptr;    // main stream -> side stream: the tensors are final
  cudaEvent_t side_done_ = nullptr;     // side stream -> main stream: the sums are in
  bool side_pending_ = false;           // started reductions not yet waited for
  std::mutex pending_mutex_;        // guards the two below and enqueued_'s record/query pairs
  int64_t pending_since_ns_ = 0;    // the oldest device collective not seen complete (0: none)
  const char* pending_op_ = nullptr;
};

}  // namespace sy
