// Communicator on MPI. Host tensors go straight to MPI; device tensors are staged through host
// memory, so that several ranks sharing one GPU (which NCCL refuses) can still run multi-rank
// expert parallelism.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "model/backend.h"
#include "parallel/communicator.h"
#include "parallel/mpi_host_collectives.h"
#include "parallel/watchdog.h"

namespace sy {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor unless it is MPI_COMM_WORLD).
  // `backend` copies device tensors to and from host staging buffers. `watchdog` (may be null)
  // is armed around every blocking MPI call, naming `group` (a string literal) when it fires.
  MpiCommunicator(MPI_Comm comm, Backend& backend, Watchdog* watchdog = nullptr,
                  const char* group = "world");
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  MPI_Comm comm() const { return comm_; }

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
  void barrier_sleeping() override;
  void send_sleeping(const Tensor& x, int peer) override;

 private:
  // A host pointer to x's bytes: x itself on the CPU, else a staging buffer (filled from the
  // device when `fill`); finish_host() copies a staged buffer back into x.
  void* host_view(const Tensor& x, std::vector<char>& staging, bool fill);
  void finish_host(const Tensor& x, std::vector<char>& staging);

  MPI_Comm comm_;
  Backend& backend_;
  Watchdog* watchdog_;
  const char* group_;
  MpiHostCollectives host_;
  int rank_ = 0, size_ = 1;
  std::vector<char> send_staging_, recv_staging_;
};

// The MPI library's version, its first line without trailing separators ("Open MPI v4.1.4"), as
// checkpoint provenance records it. Needs no communicator (MPI_Get_library_version may be called
// before MPI_Init).
std::string mpi_library_version();

}  // namespace sy
