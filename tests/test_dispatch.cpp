// The all-to-all token dispatcher under mpirun (1, 2 and 4 ranks): where rows go, the counts,
// the adjoint property backward relies on, and an MoE layer with sharded experts against the
// same layer with every expert local.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "model/moe/moe_layer.h"
#include "parallel/local_exchange.h"
#include "parallel/process_groups.h"
#include "parallel/token_dispatcher.h"
#include "tests/grad_check.h"
#include "tests/shuffled_blocks.h"

namespace sy {
namespace {

int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// All ranks of the world form one EP group (P = W), the hardest case for the dispatcher.
struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  ProcessGroups groups = make_process_groups(MPI_COMM_WORLD, world_size(), *backend);
  Communicator& ep() { return *groups.expert_parallel; }
};

// Rows grouped by expert, each row [source rank, index in its expert, global expert, 1].
Tensor payload_rows(Backend& backend, int rank, const std::vector<int64_t>& rows_per_expert) {
  int64_t total = 0;
  for (int64_t rows : rows_per_expert) total += rows;
  std::vector<double> values;
  for (size_t e = 0; e < rows_per_expert.size(); ++e)
    for (int64_t i = 0; i < rows_per_expert[e]; ++i)
      values.insert(values.end(), {double(rank), double(i), double(e), 1.0});
  Tensor rows = backend.alloc({total, 4}, DType::f64);
  backend.write(rows, std::span<const double>(values));
  return rows;
}

// Deterministic, uneven counts with zeros: rank r sends (r + 2e) % 4 rows to expert e.
std::vector<int64_t> uneven_counts(int rank, int64_t experts) {
  std::vector<int64_t> counts(experts);
  for (int64_t e = 0; e < experts; ++e) counts[e] = (rank + 2 * e) % 4;
  return counts;
}

TEST(Dispatcher, PayloadsArriveAtTheirExpertsOwnerInOrder) {
  Fixture f;
  const int P = f.ep().size(), me = f.ep().rank();
  const int64_t E = 2 * P, local = 2;
  AllToAllDispatcher dispatcher(*f.backend, f.ep(), E);
  EXPECT_EQ(dispatcher.first_local_expert(), me * local);
  const std::vector<int64_t> counts = uneven_counts(me, E);
  const ExchangePlan plan = dispatcher.plan(counts);
  const Tensor sent = payload_rows(*f.backend, me, counts);
  Tensor received = f.backend->alloc({plan.rows_received, 4}, DType::f64);
  dispatcher.dispatch(plan, received, sent);

  // Expected: for each local expert j, for each source q, that source's rows for the expert.
  std::vector<double> expected;
  for (int64_t j = 0; j < local; ++j) {
    const int64_t e = me * local + j;
    int64_t rows_for_expert = 0;
    for (int q = 0; q < P; ++q) {
      const int64_t rows = uneven_counts(q, E)[e];
      rows_for_expert += rows;
      EXPECT_EQ(plan.recv_rows[q * local + j], rows);
      for (int64_t i = 0; i < rows; ++i) expected.insert(expected.end(), {double(q), double(i), double(e), 1.0});
    }
    EXPECT_EQ(plan.rows_per_local_expert[j], rows_for_expert) << "counts match the reference";
  }
  EXPECT_EQ(f.backend->read(received), expected);

  // Identity experts: combine brings every row back to the slot it left from.
  Tensor returned = f.backend->alloc({plan.rows_sent, 4}, DType::f64);
  dispatcher.combine(plan, returned, received);
  EXPECT_EQ(f.backend->read(returned), f.backend->read(sent));
}

// Communicator::all_to_all_blocks on its own, on tests/shuffled_blocks.h's layout. Each element
// says where it came from: source * 1e6 + destination * 1e4 + block * 1e2 + index.
TEST(AllToAllBlocks, EveryBlockLandsInItsPlace) {
  Fixture f;
  Communicator& c = f.ep();
  const int P = c.size(), me = c.rank();
  const test::ShuffledBlocks shuffled;
  int64_t send_numel = 0, recv_numel = 0;
  const std::vector<PeerBlock> send_blocks = shuffled.layout(me, P, true, send_numel);
  const std::vector<PeerBlock> recv_blocks = shuffled.layout(me, P, false, recv_numel);
  auto value = [](int from, int to, int k, int64_t i) {
    return from * 1e6 + to * 1e4 + k * 1e2 + i;
  };
  std::vector<double> send_values(send_numel, -1.0);
  for (size_t n = 0; n < send_blocks.size(); ++n)
    for (int64_t i = 0; i < send_blocks[n].count; ++i)
      send_values[send_blocks[n].offset + i] = value(me, send_blocks[n].peer, int(n % 3), i);
  const Tensor send = f.backend->alloc({send_numel}, DType::f64);
  const Tensor recv = f.backend->alloc({recv_numel}, DType::f64);
  f.backend->write(send, std::span<const double>(send_values));
  c.all_to_all_blocks(send, send_blocks, recv, recv_blocks);
  const std::vector<double> got = f.backend->read(recv);
  for (size_t n = 0; n < recv_blocks.size(); ++n)
    for (int64_t i = 0; i < recv_blocks[n].count; ++i)
      ASSERT_EQ(got[recv_blocks[n].offset + i], value(recv_blocks[n].peer, me, int(n % 3), i))
          << "block " << n << " from rank " << recv_blocks[n].peer << ", element " << i;

  // An empty block or one outside the tensor is refused on every rank, before any message.
  std::vector<PeerBlock> bad = send_blocks;
  bad.front().count = 0;
  EXPECT_THROW(c.all_to_all_blocks(send, bad, recv, recv_blocks), std::runtime_error);
  bad.front() = {0, send_numel - 1, 2};
  EXPECT_THROW(c.all_to_all_blocks(send, bad, recv, recv_blocks), std::runtime_error);
}

// The host collectives (parallel/mpi_host_collectives.cpp): values from every rank in rank order,
// strings of different lengths (one empty), and a send of the wrong size refused with its sizes.
TEST(HostCollectives, ValuesAndStringsFromEveryRank) {
  Fixture f;
  Communicator& c = f.ep();
  const int P = c.size(), me = c.rank();
  std::vector<int64_t> send;
  for (int to = 0; to < P; ++to) send.insert(send.end(), {100 * me + to, -me});
  const std::vector<int64_t> got = c.all_to_all_host(send, 2);
  ASSERT_EQ(got.size(), send.size());
  for (int from = 0; from < P; ++from) {
    EXPECT_EQ(got[2 * from], 100 * from + me) << "from rank " << from;
    EXPECT_EQ(got[2 * from + 1], -from) << "from rank " << from;
  }
  std::vector<double> sums{double(me), 0.5}, maxima{double(me), -double(me)};
  c.all_reduce_host(sums, ReduceOp::sum);
  c.all_reduce_host(maxima, ReduceOp::max);
  EXPECT_EQ(sums, (std::vector<double>{P * (P - 1) / 2.0, 0.5 * P}));
  EXPECT_EQ(maxima, (std::vector<double>{P - 1.0, 0.0}));
  std::vector<int64_t> counts{int64_t{1} << 40, me};
  c.all_reduce_host(counts, ReduceOp::sum);
  EXPECT_EQ(counts, (std::vector<int64_t>{P * (int64_t{1} << 40), P * (P - 1) / 2}));
  const std::vector<std::string> names = c.all_gather_host(std::string(me, 'x'));
  ASSERT_EQ(names.size(), size_t(P));
  for (int p = 0; p < P; ++p) EXPECT_EQ(names[p], std::string(p, 'x'));
  c.barrier();
  try {
    c.all_to_all_host({1, 2, 3}, 2);
    FAIL() << "a send of 3 values for 2 a peer was accepted";
  } catch (const std::runtime_error& error) {
    EXPECT_EQ(std::string(error.what()),
              "mpi all_to_all_host: expected " + std::to_string(2 * P) + " values, got 3");
  }
}

TEST(Dispatcher, CombineIsTheTransposeOfDispatch) {
  Fixture f;
  const int me = f.ep().rank();
  const int64_t E = 3 * f.ep().size(), D = 5;
  AllToAllDispatcher dispatcher(*f.backend, f.ep(), E);
  const std::vector<int64_t> counts = uneven_counts(me + 1, E);
  const ExchangePlan plan = dispatcher.plan(counts);
  const Tensor x = test::random_tensor(*f.backend, {plan.rows_sent, D}, 100 + me);
  const Tensor y = test::random_tensor(*f.backend, {plan.rows_received, D}, 200 + me);
  Tensor dispatched = f.backend->alloc({plan.rows_received, D}, DType::f64);
  Tensor combined = f.backend->alloc({plan.rows_sent, D}, DType::f64);
  dispatcher.dispatch(plan, dispatched, x);
  dispatcher.combine(plan, combined, y);
  // <dispatch(x), y> summed over ranks equals <x, combine(y)> summed over ranks.
  std::vector<double> dots{test::weighted_sum(*f.backend, dispatched, y),
                           test::weighted_sum(*f.backend, x, combined)};
  f.ep().all_reduce_host(dots, ReduceOp::sum);
  EXPECT_NEAR(dots[0], dots[1], 1e-12 * std::max(1.0, std::abs(dots[0])));
}

// An MoE layer whose experts are spread over the ranks against the same layer with all experts
// local: outputs, input gradients, router gradients, and expert gradients (summed over ranks).
struct Scenario {
  const char* name;
  int64_t experts_per_rank, top_k;  // top_k 0: all experts
  double capacity_factor;
  bool identical_tokens_on_rank1;  // a rank whose whole micro-batch routes to the same experts
  bool starve_expert1;             // expert 1 never chosen: its gradient must be exactly zero
};

void run_scenario(const Scenario& s) {
  SCOPED_TRACE(s.name);
  Fixture f;
  Backend& be = *f.backend;
  const int P = f.ep().size(), me = f.ep().rank();
  const int64_t E = s.experts_per_rank * P, T = 10, D = 6, F = 4;
  const int64_t K = s.top_k > 0 ? s.top_k : E;  // 0: top_k = num_experts
  const int64_t first = me * s.experts_per_rank;

  // Same weights on every rank; inputs differ by rank.
  std::vector<double> router = test::random_values(D * E, 1, 1.0);
  // Expert 1 ties with expert 0 on every token; ties go to the lower index, so with top-1 it is
  // never chosen.
  if (s.starve_expert1)
    for (int64_t d = 0; d < D; ++d) router[d * E + 1] = router[d * E + 0];
  const std::vector<double> w1 = test::random_values(E * D * F, 2, 0.5);
  const std::vector<double> w3 = test::random_values(E * D * F, 3, 0.5);
  const std::vector<double> w2 = test::random_values(E * F * D, 4, 0.5);
  std::vector<double> u_values = test::random_values(T * D, 10 + me);
  if (s.identical_tokens_on_rank1 && me == 1)
    for (int64_t t = 1; t < T; ++t)
      std::copy(u_values.begin(), u_values.begin() + D, u_values.begin() + t * D);

  auto make_layer = [&](TokenExchange& exchange, int64_t first_expert, int64_t count) {
    auto layer = std::make_unique<MoELayer>();
    layer->exchange = &exchange;
    layer->router.settings = {{.top_k = K}, E, s.capacity_factor};  // normalised iff K > 1
    layer->router.weight = test::random_param(be, "router", {D, E}, 0);
    be.write(layer->router.weight.value, std::span<const double>(router));
    auto slice = [&](const std::vector<double>& full, const Shape& shape) {
      Param p = test::random_param(be, "w", shape, 0);
      const int64_t per = shape[1] * shape[2];
      be.write(p.value, std::span<const double>(full.data() + first_expert * per, count * per));
      return p;
    };
    layer->experts.w1 = slice(w1, {count, D, F});
    layer->experts.w3 = slice(w3, {count, D, F});
    layer->experts.w2 = slice(w2, {count, F, D});
    return layer;
  };
  AllToAllDispatcher dispatcher(be, f.ep(), E);
  LocalExchange local(be, E);
  auto sharded = make_layer(dispatcher, first, s.experts_per_rank);
  auto replicated = make_layer(local, 0, E);

  Tensor u = be.alloc({T, D}, DType::f64);
  be.write(u, std::span<const double>(u_values));
  const Tensor dout = test::random_tensor(be, {T, D}, 20 + me);
  const std::vector<double> out_sharded = be.read(sharded->forward(be, u));
  const std::vector<double> out_replicated = be.read(replicated->forward(be, u));
  const std::vector<double> du_sharded = be.read(sharded->backward(be, dout, u, 0.3, 0.1));
  const std::vector<double> du_replicated = be.read(replicated->backward(be, dout, u, 0.3, 0.1));
  auto expect_close = [](const std::vector<double>& a, const std::vector<double>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12 * (1 + std::abs(b[i]))) << what << " " << i;
  };
  expect_close(out_sharded, out_replicated, "out");
  expect_close(du_sharded, du_replicated, "du");
  expect_close(be.read(sharded->router.weight.grad), be.read(replicated->router.weight.grad),
               "router grad");
  EXPECT_EQ(sharded->router.dropped, replicated->router.dropped);

  // Expert gradients: the owner's equals the sum over ranks of the replicated layers' slices.
  for (auto [mine, all] : {std::pair{&sharded->experts.w1, &replicated->experts.w1},
                           std::pair{&sharded->experts.w3, &replicated->experts.w3},
                           std::pair{&sharded->experts.w2, &replicated->experts.w2}}) {
    std::vector<double> summed = be.read(all->grad);
    f.ep().all_reduce_host(summed, ReduceOp::sum);
    const int64_t per = all->grad.numel() / E;
    const std::vector<double> expected(summed.begin() + first * per,
                                       summed.begin() + (first + s.experts_per_rank) * per);
    const std::vector<double> got = be.read(mine->grad);
    expect_close(got, expected, "expert grad");
    if (s.starve_expert1 && first <= 1 && 1 < first + s.experts_per_rank) {
      for (int64_t i = (1 - first) * per; i < (2 - first) * per; ++i)
        EXPECT_EQ(got[i], 0.0) << "a starved expert's gradient is exactly zero";
    }
  }
}

TEST(ShardedMoE, RandomRouting) { run_scenario({"random", 2, 2, 0.0, false, false}); }
TEST(ShardedMoE, CapacityDrops) { run_scenario({"drops", 2, 2, 0.6, false, false}); }
TEST(ShardedMoE, OneRankRoutesEverythingToOneExpertPair) {
  run_scenario({"identical tokens", 2, 2, 0.0, true, false});
}
TEST(ShardedMoE, IdenticalTokensWithDrops) { run_scenario({"identical+drops", 2, 1, 1.0, true, false}); }
TEST(ShardedMoE, TopKEqualsNumExperts) { run_scenario({"top_k = E", 1, 0, 0.0, false, false}); }
TEST(ShardedMoE, ExpertWithNoTokensGetsZeroGradient) {
  run_scenario({"starved expert", 2, 1, 0.0, false, true});
}

}  // namespace
}  // namespace sy
