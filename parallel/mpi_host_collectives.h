// The host collectives of a communicator (counts, losses, metrics, strings) on MPI, whatever
// moves its tensors: MpiCommunicator and NcclCommunicator both run theirs here. Every blocking
// call is armed on the watchdog (null: none), naming `group`. Errors are thrown as
// "<name> <op><where>: <what>", e.g. "nccl all_gather_host (rank 3, device 1): ...".
#pragma once
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace sy {

class MpiHostCollectives {
 public:
  // Does not own `comm`; `group` is a string literal. `where` follows the op in errors ("" or
  // " (rank 3, device 1)").
  MpiHostCollectives(MPI_Comm comm, Watchdog* watchdog, const char* group, std::string name,
                     std::string where = "");

  // send: per_peer values for each rank in turn; returns per_peer values from each rank.
  std::vector<int64_t> all_to_all(const std::vector<int64_t>& send, int64_t per_peer) const;
  void all_reduce(std::vector<double>& values, ReduceOp op) const;
  void all_reduce(std::vector<int64_t>& values, ReduceOp op) const;
  // Every rank's string, in rank order.
  std::vector<std::string> all_gather(const std::string& value) const;
  void barrier() const;

  // For the owner's own calls: errors in the same words.
  [[noreturn]] void fail(const char* op, const std::string& what) const;
  void check(int code, const char* op) const;  // throws unless code is MPI_SUCCESS

 private:
  int as_int(int64_t count, const char* op) const;  // an MPI count, or throws
  void all_reduce(void* values, int64_t count, MPI_Datatype type, ReduceOp op) const;

  MPI_Comm comm_;
  Watchdog* watchdog_;
  const char* group_;
  std::string name_, where_;
  int size_ = 1;
};

}  // namespace sy
