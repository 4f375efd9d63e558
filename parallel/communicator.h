// A Communicator: the collectives that distributed training needs, over one process group.
// MpiCommunicator implements it on MPI (tensors on the host, or device tensors staged through
// host memory); NcclCommunicator implements it on NCCL, stream-ordered, for one rank per GPU.
// The call sites are the same for both.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/tensor.h"

namespace sy {

enum class ReduceOp { sum, max };

// Elements [offset, offset + count) of a tensor, exchanged with rank `peer` of the group.
struct PeerBlock {
  int peer;
  int64_t offset;
  int64_t count;
};

// For all_to_all_blocks: "" when send and recv have one dtype and every block has a peer in
// [0, size), a count > 0 and lies in its tensor; else what is wrong with the first that does not.
inline std::string peer_blocks_error(const Tensor& send, const std::vector<PeerBlock>& send_blocks,
                                     const Tensor& recv, const std::vector<PeerBlock>& recv_blocks,
                                     int size) {
  if (send.dtype() != recv.dtype()) return "send and recv dtypes differ";
  for (const auto* side : {&send_blocks, &recv_blocks}) {
    const int64_t numel = side == &send_blocks ? send.numel() : recv.numel();
    for (const PeerBlock& b : *side)
      if (b.peer < 0 || b.peer >= size || b.count <= 0 || b.offset < 0 ||
          b.offset + b.count > numel)
        return std::string(side == &send_blocks ? "send" : "recv") + " block of peer " +
               std::to_string(b.peer) + " at " + std::to_string(b.offset) + " + " +
               std::to_string(b.count) + " is empty or outside its " + std::to_string(numel) +
               " elements (" + std::to_string(size) + " ranks)";
  }
  return "";
}

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "mpi" | "nccl"

  // ---- tensors (host or device, per implementation) -------------------------------------------
  // Segment p of `send` (send_counts[p] elements, in peer order) goes to peer p; segment p of
  // `recv` (recv_counts[p] elements) comes from peer p. Counts are in elements.
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                            const Tensor& recv, const std::vector<int64_t>& recv_counts) = 0;
  // all_to_all_v with each peer's data in blocks anywhere in the tensors: the blocks of
  // send_blocks whose peer is p go to p in their listed order, and land in the blocks of p's
  // recv_blocks whose peer is this rank, in its listed order, block for block (the k-th block to
  // p has the count of p's k-th block from here). No block has count 0; blocks do not overlap.
  // Elements of recv outside its blocks are unspecified afterwards.
  virtual void all_to_all_blocks(const Tensor& send, const std::vector<PeerBlock>& send_blocks,
                                 const Tensor& recv, const std::vector<PeerBlock>& recv_blocks) = 0;
  virtual void all_reduce(const Tensor& x, ReduceOp op) = 0;  // in place
  virtual void broadcast(const Tensor& x, int root) = 0;
  virtual void send(const Tensor& x, int peer) = 0;
  virtual void recv(const Tensor& x, int peer) = 0;

  // ---- small host values (counts, scalars, strings) -------------------------------------------
  // send[p*per_peer .. (p+1)*per_peer) goes to peer p; returns the same layout from each peer.
  virtual std::vector<int64_t> all_to_all_host(const std::vector<int64_t>& send,
                                               int64_t per_peer) = 0;
  virtual void all_reduce_host(std::vector<double>& values, ReduceOp op) = 0;
  virtual void all_reduce_host(std::vector<int64_t>& values, ReduceOp op) = 0;
  virtual std::vector<std::string> all_gather_host(const std::string& value) = 0;
  virtual void barrier() = 0;

  // ---- waiting on one busy rank (a checkpoint's writer) -----------------------------------------
  // barrier() and send(), for ranks that wait while one rank does long work of its own (world
  // rank 0 writing a checkpoint file): they sleep between polls instead of spinning, so that on a
  // machine with few cores the busy rank keeps the CPU (and the kernel's writeback) to itself.
  // The watchdog is not armed: the wait is as long as the file write, which parallel.timeout_s
  // does not bound. An implementation that cannot poll blocks as barrier() and send() do.
  // send_sleeping matches recv() on the peer, as send() does.
  virtual void barrier_sleeping() { barrier(); }
  virtual void send_sleeping(const Tensor& x, int peer) { send(x, peer); }

  // ---- reductions behind later work (gradients during backward) --------------------------------
  // start_all_reduce: all_reduce (in place) of each tensor, started after everything the caller
  // has enqueued so far, and allowed to run while the caller goes on enqueueing other work. The
  // tensors must be neither read nor written until wait_started(); work enqueued after that call
  // sees the sums. Each tensor's sum has the bits that all_reduce gives it. An implementation
  // that cannot run in the background reduces at once (these defaults): then
  // reduces_in_background() is false.
  virtual void start_all_reduce(const std::vector<Tensor>& xs, ReduceOp op) {
    for (const Tensor& x : xs) all_reduce(x, op);
  }
  virtual void wait_started() {}
  virtual bool reduces_in_background() const { return false; }
};

}  // namespace sy
