#include "parallel/mpi_host_collectives.h"

#include <climits>
#include <stdexcept>
#include <utility>

namespace sy {

MpiHostCollectives::MpiHostCollectives(MPI_Comm comm, Watchdog* watchdog, const char* group,
                                       std::string name, std::string where)
    : comm_(comm),
      watchdog_(watchdog),
      group_(group),
      name_(std::move(name)),
      where_(std::move(where)) {
  check(MPI_Comm_size(comm_, &size_), "comm_size");
}

void MpiHostCollectives::fail(const char* op, const std::string& what) const {
  throw std::runtime_error(name_ + " " + op + where_ + ": " + what);
}

void MpiHostCollectives::check(int code, const char* op) const {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(op, std::string(text, length));
}

int MpiHostCollectives::as_int(int64_t count, const char* op) const {
  if (count < 0 || count > INT_MAX)
    fail(op, "count " + std::to_string(count) + " does not fit an MPI int count");
  return static_cast<int>(count);
}

std::vector<int64_t> MpiHostCollectives::all_to_all(const std::vector<int64_t>& send,
                                                    int64_t per_peer) const {
  const char* op = "all_to_all_host";
  if (static_cast<int64_t>(send.size()) != per_peer * size_)
    fail(op, "expected " + std::to_string(per_peer * size_) + " values, got " +
                 std::to_string(send.size()));
  std::vector<int64_t> recv(send.size());
  const int count = as_int(per_peer, op);
  WatchdogScope watch(watchdog_, op, group_);
  check(MPI_Alltoall(send.data(), count, MPI_INT64_T, recv.data(), count, MPI_INT64_T, comm_), op);
  return recv;
}

void MpiHostCollectives::all_reduce(void* values, int64_t count, MPI_Datatype type,
                                    ReduceOp op) const {
  const char* name = "all_reduce_host";
  const MPI_Op mpi_op = op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
  const int n = as_int(count, name);
  WatchdogScope watch(watchdog_, name, group_);
  check(MPI_Allreduce(MPI_IN_PLACE, values, n, type, mpi_op, comm_), name);
}

void MpiHostCollectives::all_reduce(std::vector<double>& values, ReduceOp op) const {
  all_reduce(values.data(), static_cast<int64_t>(values.size()), MPI_DOUBLE, op);
}

void MpiHostCollectives::all_reduce(std::vector<int64_t>& values, ReduceOp op) const {
  all_reduce(values.data(), static_cast<int64_t>(values.size()), MPI_INT64_T, op);
}

std::vector<std::string> MpiHostCollectives::all_gather(const std::string& value) const {
  const char* op = "all_gather_host";
  const int length = as_int(static_cast<int64_t>(value.size()), op);
  std::vector<int> lengths(size_), offsets(size_);
  {
    WatchdogScope watch(watchdog_, op, group_);
    check(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_), op);
  }
  int64_t total = 0;
  for (int p = 0; p < size_; ++p) {
    offsets[p] = as_int(total, op);
    total += lengths[p];
  }
  std::string all(static_cast<size_t>(as_int(total, op)), '\0');
  {
    WatchdogScope watch(watchdog_, op, group_);
    check(MPI_Allgatherv(value.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(),
                         MPI_CHAR, comm_),
          op);
  }
  std::vector<std::string> values(size_);
  for (int p = 0; p < size_; ++p) values[p] = all.substr(offsets[p], lengths[p]);
  return values;
}

void MpiHostCollectives::barrier() const {
  WatchdogScope watch(watchdog_, "barrier", group_);
  check(MPI_Barrier(comm_), "barrier");
}

}  // namespace sy
