// NcclCommunicator against MpiCommunicator (device tensors staged through the host) on the same
// data: all_to_all_v, all_to_all_blocks, all_reduce, broadcast and the host collectives must
// agree exactly; start_all_reduce must give all_reduce's bits. Written for any number of ranks with
// one GPU each; run at W = 1 here (one GPU). Runs under mpirun (tests/mpi_main.cpp); skipped when
// no CUDA device is visible (label gpu).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "model/cuda/cuda_backend.h"
#include "model/rng.h"
#include "parallel/launch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "tests/shuffled_blocks.h"

namespace sy {
namespace {

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    const int world = world_rank();
    backend = make_cuda_backend(
        cuda_device_for_local_rank(host_local_rank(MPI_COMM_WORLD), world), world);
    MPI_Comm dup = MPI_COMM_NULL;
    MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    nccl = std::make_unique<NcclCommunicator>(dup, static_cast<cudaStream_t>(backend->native_stream()));
    mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, *backend);
    rank = mpi->rank();
    size = mpi->size();
  }
  void TearDown() override {
    nccl.reset();
    mpi.reset();
  }

  Tensor random(int64_t n, DType dtype, uint64_t seed) {
    CounterRng rng(seed * 1000 + rank);
    std::vector<double> v(n);
    for (double& x : v) x = rng.normal();
    Tensor t = backend->alloc({n}, dtype);
    backend->write(t, std::span<const double>(v));
    return t;
  }

  std::unique_ptr<Backend> backend;
  std::unique_ptr<NcclCommunicator> nccl;
  std::unique_ptr<MpiCommunicator> mpi;
  int rank = 0, size = 1;
};

TEST_F(Nccl, AllToAllVMatchesMpi) {
  for (DType dtype : {DType::f32, DType::bf16, DType::i32}) {
    // Rank r sends 3 + r + p elements to peer p (so it receives 3 + p + r from p).
    std::vector<int64_t> send_counts(size), recv_counts(size);
    int64_t send_total = 0, recv_total = 0;
    for (int p = 0; p < size; ++p) {
      send_counts[p] = 3 + rank + p + 40 * (dtype == DType::bf16);
      recv_counts[p] = 3 + p + rank + 40 * (dtype == DType::bf16);
      send_total += send_counts[p];
      recv_total += recv_counts[p];
    }
    Tensor send = dtype == DType::i32 ? backend->alloc({send_total}, DType::i32)
                                      : random(send_total, dtype, 1);
    if (dtype == DType::i32) {
      std::vector<int32_t> v(send_total);
      for (int64_t i = 0; i < send_total; ++i) v[i] = static_cast<int32_t>(rank * 100000 + i);
      backend->write(send, std::span<const int32_t>(v));
    }
    Tensor by_nccl = backend->alloc({recv_total}, dtype), by_mpi = backend->alloc({recv_total}, dtype);
    backend->fill(by_nccl, dtype == DType::i32 ? -1 : std::nan(""));
    nccl->all_to_all_v(send, send_counts, by_nccl, recv_counts);
    mpi->all_to_all_v(send, send_counts, by_mpi, recv_counts);
    EXPECT_EQ(backend->read(by_nccl), backend->read(by_mpi)) << dtype_name(dtype);
    if (size == 1) {
      EXPECT_EQ(backend->read(by_nccl), backend->read(send)) << dtype_name(dtype);
    }
  }
}

// tests/shuffled_blocks.h's layout: NCCL's grouped sends and receives land the blocks as
// MPI_Alltoallw does (at W = 1: each block in its place, all to this rank).
TEST_F(Nccl, AllToAllBlocksMatchesMpi) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const test::ShuffledBlocks shuffled{5, 300, 3};
    int64_t send_numel = 0, recv_numel = 0;
    const std::vector<PeerBlock> send_blocks = shuffled.layout(rank, size, true, send_numel);
    const std::vector<PeerBlock> recv_blocks = shuffled.layout(rank, size, false, recv_numel);
    const Tensor send = random(send_numel, dtype, 7);
    Tensor by_nccl = backend->alloc({recv_numel}, dtype),
           by_mpi = backend->alloc({recv_numel}, dtype);
    backend->fill(by_nccl, 0.0);
    backend->fill(by_mpi, 0.0);
    nccl->all_to_all_blocks(send, send_blocks, by_nccl, recv_blocks);
    mpi->all_to_all_blocks(send, send_blocks, by_mpi, recv_blocks);
    const std::vector<double> a = backend->read(by_nccl), b = backend->read(by_mpi);
    const std::vector<double> sent = backend->read(send);
    for (size_t n = 0; n < recv_blocks.size(); ++n) {
      const PeerBlock& r = recv_blocks[n];
      for (int64_t i = 0; i < r.count; ++i) {
        ASSERT_EQ(a[r.offset + i], b[r.offset + i]) << dtype_name(dtype) << " block " << n;
        if (size == 1) {
          ASSERT_EQ(a[r.offset + i], sent[send_blocks[n].offset + i]) << dtype_name(dtype);
        }
      }
    }
  }
}

TEST_F(Nccl, AllReduceAndBroadcastMatchMpi) {
  for (DType dtype : {DType::f32, DType::f64}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
      Tensor a = random(1000, dtype, 2), b = backend->alloc({1000}, dtype);
      backend->copy(b, a);
      nccl->all_reduce(a, op);
      mpi->all_reduce(b, op);
      EXPECT_EQ(backend->read(a), backend->read(b)) << dtype_name(dtype);
    }
    Tensor a = random(77, dtype, 3), b = backend->alloc({77}, dtype);
    backend->copy(b, a);
    nccl->broadcast(a, 0);
    mpi->broadcast(b, 0);
    EXPECT_EQ(backend->read(a), backend->read(b));
  }
}

// start_all_reduce (gradients summed during backward): the side stream starts after the work
// enqueued before it (here the copies that write the tensors), the main stream's work after
// wait_started sees the sums, and each sum has all_reduce's bits.
TEST_F(Nccl, StartedAllReduceMatchesAllReduce) {
  EXPECT_TRUE(nccl->reduces_in_background());
  std::vector<Tensor> started, reference;
  for (const int64_t n : {int64_t{1000}, int64_t{1} << 22, int64_t{77}}) {
    const Tensor source = random(n, DType::f32, static_cast<uint64_t>(n));
    started.push_back(backend->alloc({n}, DType::f32));
    reference.push_back(backend->alloc({n}, DType::f32));
    backend->fill(started.back(), 0.0);
    backend->copy(started.back(), source);  // enqueued: the reduction must wait for it
    backend->copy(reference.back(), source);
  }
  nccl->start_all_reduce(started, ReduceOp::sum);
  const Tensor busy = backend->alloc({int64_t{1} << 24}, DType::f32);
  backend->fill(busy, 1.0);  // main-stream work while the sums run
  nccl->wait_started();
  for (const Tensor& x : reference) nccl->all_reduce(x, ReduceOp::sum);
  for (size_t i = 0; i < started.size(); ++i)
    EXPECT_EQ(backend->read(started[i]), backend->read(reference[i])) << "tensor " << i;
  nccl->wait_started();  // nothing started: a no-op
}

TEST_F(Nccl, HostCollectivesMatchMpi) {
  std::vector<int64_t> send(3 * size);
  for (size_t i = 0; i < send.size(); ++i) send[i] = rank * 1000 + static_cast<int64_t>(i);
  EXPECT_EQ(nccl->all_to_all_host(send, 3), mpi->all_to_all_host(send, 3));
  std::vector<double> a{1.5 + rank, -2.0}, b = a;
  nccl->all_reduce_host(a, ReduceOp::sum);
  mpi->all_reduce_host(b, ReduceOp::sum);
  EXPECT_EQ(a, b);
  std::vector<int64_t> c{rank, 7}, d = c;
  nccl->all_reduce_host(c, ReduceOp::max);
  mpi->all_reduce_host(d, ReduceOp::max);
  EXPECT_EQ(c, d);
  EXPECT_EQ(nccl->all_gather_host("rank " + std::to_string(rank)),
            mpi->all_gather_host("rank " + std::to_string(rank)));
  nccl->barrier();
  EXPECT_EQ(nccl->name(), "nccl");
  EXPECT_EQ(nccl->size(), size);
}

}  // namespace
}  // namespace sy
