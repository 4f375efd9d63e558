#include "parallel/launch.h"

#include <climits>
#include <cstdlib>
#include <stdexcept>

#include "parallel/mpi_communicator.h"

namespace sy {

void check_mpi(int code, const char* op) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string("mpi ") + op + ": " + std::string(text, length));
}

CommHandle world_comm() { return MPI_COMM_WORLD; }

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "init_thread");
}

MpiRuntime::~MpiRuntime() { MPI_Finalize(); }

int world_rank() {
  int rank = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "comm_rank");
  return rank;
}

int comm_size(CommHandle comm) {
  int size = 1;
  check_mpi(MPI_Comm_size(comm, &size), "comm_size");
  return size;
}

int world_size() { return comm_size(MPI_COMM_WORLD); }

void world_barrier() { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

void abort_world(int status) {
  MPI_Abort(MPI_COMM_WORLD, status);
  std::abort();  // MPI_Abort does not return; this tells the compiler so
}

void broadcast_from_rank0(std::string& value) {
  if (value.size() > static_cast<size_t>(INT_MAX))
    throw std::runtime_error("mpi bcast: a string of " + std::to_string(value.size()) +
                             " bytes does not fit an MPI int count");
  int length = static_cast<int>(value.size());
  check_mpi(MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD), "bcast");
  value.resize(static_cast<size_t>(length));
  check_mpi(MPI_Bcast(value.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD), "bcast");
}

void broadcast_from_rank0(int& value) {
  check_mpi(MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD), "bcast");
}

HostShare sum_over_host(CommHandle comm, double value) {
  MPI_Comm host = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &host),
            "comm_split_type");
  HostShare share;
  try {
    check_mpi(MPI_Comm_size(host, &share.ranks), "comm_size");
    check_mpi(MPI_Allreduce(&value, &share.sum, 1, MPI_DOUBLE, MPI_SUM, host), "allreduce");
  } catch (...) {
    MPI_Comm_free(&host);
    throw;
  }
  MPI_Comm_free(&host);
  return share;
}

int host_local_rank(CommHandle comm) {
  MPI_Comm host = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &host),
            "comm_split_type");
  int rank = 0;
  const int code = MPI_Comm_rank(host, &rank);
  MPI_Comm_free(&host);
  check_mpi(code, "comm_rank");
  return rank;
}

std::string mpi_library_name() {
  std::string name = mpi_library_version();  // its first line
  const size_t cut = name.find(',');
  if (cut != std::string::npos) name.resize(cut);
  return name.empty() ? "unknown" : name;
}

}  // namespace sy
