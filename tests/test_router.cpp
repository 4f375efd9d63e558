// Router behaviour (SPEC.md section 2) on the CPU backend: top-K selection and ties, gates,
// capacity drops in the specified order, the permutation plan, the aux and z losses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "tests/slots_of_rows.h"

namespace sy {
namespace {

using Vec = std::vector<double>;
using Idx = std::vector<int32_t>;
constexpr DType kFloatTypes[] = {DType::f32, DType::f64};

// C = ceil(capacity_factor * K * T / E), in float64, left to right.
int64_t capacity(double capacity_factor, int64_t K, int64_t T, int64_t E) {
  return static_cast<int64_t>(std::ceil(capacity_factor * K * T / E));
}

struct Routing {
  Vec probs, lse, gates;
  Idx topk;
  Vec logits;
  DType dtype = DType::f64;
};

struct Plan {
  Idx slot_row, row_slot, slot_expert, assignments;
  std::vector<int64_t> kept;
  int64_t rerouted = 0;
};

class RouterTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();

  Tensor tensor(const Shape& shape, DType dtype, const Vec& values) {
    Tensor t = be->alloc(shape, dtype);
    be->write(t, std::span<const double>(values));
    return t;
  }

  Routing route(const Vec& logits, int64_t T, int64_t E, int64_t K, bool normalize,
                DType dt = DType::f64) {
    Tensor probs = be->alloc({T, E}, dt), lse = be->alloc({T}, dt);
    Tensor idx = be->alloc({T, K}, DType::i32), gates = be->alloc({T, K}, dt);
    RoutingRule rule;
    rule.top_k = K;
    rule.normalize = normalize;
    be->router_scores_topk(probs, lse, idx, gates, tensor({T, E}, dt, logits), Tensor(), rule);
    return {be->read(probs), be->read(lse), be->read(gates), be->read_i32(idx), logits, dt};
  }

  // row_slot: the inverse of slot_row, on the host.
  Plan plan(const Routing& r, int64_t T, int64_t K, int64_t E, int64_t cap) {
    Tensor idx = be->alloc({T, K}, DType::i32);
    be->write(idx, std::span<const int32_t>(r.topk));
    Tensor slot_row = be->alloc({T * K}, DType::i32);
    Tensor slot_expert = be->alloc({T * K}, DType::i32), assignments = be->alloc({E}, DType::i32);
    RoutingRule rule;
    rule.top_k = K;
    rule.capacity = cap;
    Plan p;
    const RouterPlanCounts counts =
        be->router_plan(slot_row, slot_expert, assignments, idx, tensor({T, K}, r.dtype, r.gates),
                        tensor({T, E}, r.dtype, r.logits), Tensor(), rule);
    p.kept = counts.tokens_per_expert;
    p.rerouted = counts.rerouted;
    p.slot_row = be->read_i32(slot_row);
    p.row_slot = slots_of_rows(p.slot_row);
    p.slot_expert = be->read_i32(slot_expert);
    p.assignments = be->read_i32(assignments);
    // The plan returns the choices' counts on the host too, equal to the tensor's.
    EXPECT_EQ(counts.assignments_per_expert,
              std::vector<int64_t>(p.assignments.begin(), p.assignments.end()));
    return p;
  }
};

// Logits [T, E] where token t's first choice gets 2, its second 1, the others 0.
Vec two_choice_logits(const std::vector<std::pair<int, int>>& choices, int64_t E) {
  Vec logits(choices.size() * E, 0.0);
  for (size_t t = 0; t < choices.size(); ++t) {
    logits[t * E + choices[t].first] = 2.0;
    logits[t * E + choices[t].second] = 1.0;
  }
  return logits;
}

std::set<std::pair<int, int>> dropped(const Plan& p, int64_t T, int64_t K) {
  std::set<std::pair<int, int>> out;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (p.slot_row[t * K + k] < 0) out.insert({static_cast<int>(t), static_cast<int>(k)});
  return out;
}

// ---- top-K ----------------------------------------------------------------------------------
TEST_F(RouterTest, TopKTiesChooseLowerExpertFirst) {
  for (DType dt : kFloatTypes) {
    EXPECT_EQ(route({1, 3, 3, 2, 3}, 1, 5, 3, true, dt).topk, (Idx{1, 2, 4}));
    EXPECT_EQ(route({1, 3, 3, 2, 3}, 1, 5, 2, true, dt).topk, (Idx{1, 2}));
    EXPECT_EQ(route({5, 1, 1, 1}, 1, 4, 2, true, dt).topk, (Idx{0, 1}));
    EXPECT_EQ(route({0, 0, 0, 0}, 1, 4, 2, true, dt).topk, (Idx{0, 1}));
    EXPECT_EQ(route({-1, 2, 2, 2}, 1, 4, 1, false, dt).topk, (Idx{1}));
  }
}

TEST_F(RouterTest, TopKIsLargestFirst) {
  for (DType dt : kFloatTypes) {
    EXPECT_EQ(route({0.1, 0.9, -1, 0.5, 2.0}, 1, 5, 3, true, dt).topk, (Idx{4, 1, 3}));
    EXPECT_EQ(route({0.1, 0.9, -1, 0.5, 2.0, 3, 4, 5, 6, 7}, 2, 5, 5, true, dt).topk,
              (Idx{4, 1, 3, 0, 2, 4, 3, 2, 1, 0}));
  }
}

TEST_F(RouterTest, ProbsLseAndGates) {
  const int64_t T = 16, E = 6;
  std::mt19937_64 gen(1);
  std::normal_distribution<double> normal(0.0, 2.0);
  Vec logits(T * E);
  for (double& x : logits) x = static_cast<float>(normal(gen));
  for (DType dt : kFloatTypes) {
    const double tol = dt == DType::f32 ? 1e-6 : 1e-14;
    for (auto [K, normalize] : {std::pair{2, true}, {2, false}, {1, false}, {3, true}}) {
      const Routing r = route(logits, T, E, K, normalize, dt);
      for (int64_t t = 0; t < T; ++t) {
        double m = -1e300, sum = 0, psum = 0, gsum = 0, selected = 0;
        for (int64_t e = 0; e < E; ++e) m = std::max(m, logits[t * E + e]);
        for (int64_t e = 0; e < E; ++e) sum += std::exp(logits[t * E + e] - m);
        EXPECT_NEAR(r.lse[t], m + std::log(sum), tol * 10);
        for (int64_t e = 0; e < E; ++e) {
          EXPECT_NEAR(r.probs[t * E + e], std::exp(logits[t * E + e] - m) / sum, tol);
          psum += r.probs[t * E + e];
        }
        EXPECT_NEAR(psum, 1.0, tol * E);
        for (int64_t k = 0; k < K; ++k) selected += r.probs[t * E + r.topk[t * K + k]];
        for (int64_t k = 0; k < K; ++k) {
          const double p = r.probs[t * E + r.topk[t * K + k]];
          EXPECT_NEAR(r.gates[t * K + k], normalize ? p / selected : p, tol);
          gsum += r.gates[t * K + k];
        }
        if (normalize) {
          EXPECT_NEAR(gsum, 1.0, tol * K);
        } else if (K == 1) {
          EXPECT_LT(gsum, 1.0);  // K = 1 default: the plain probability, not 1
        }
      }
    }
  }
}

// ---- capacity -------------------------------------------------------------------------------
TEST_F(RouterTest, CapacityDropsFirstChoicesLast) {
  // Expert 0 is the first choice of tokens 0..5 and the second choice of tokens 6, 7.
  const int64_t T = 8, E = 4, K = 2;
  const int64_t C = capacity(1.2, K, T, E);  // ceil(4.8)
  ASSERT_EQ(C, 5);
  const Vec logits = two_choice_logits(
      {{0, 1}, {0, 2}, {0, 3}, {0, 1}, {0, 2}, {0, 3}, {1, 0}, {2, 0}}, E);
  const Routing r = route(logits, T, E, K, true);
  const Plan p = plan(r, T, K, E, C);
  EXPECT_EQ(p.assignments, (Idx{8, 3, 3, 2}));
  EXPECT_EQ(p.kept, (std::vector<int64_t>{5, 3, 3, 2}));
  EXPECT_EQ(dropped(p, T, K), (std::set<std::pair<int, int>>{{5, 0}, {6, 1}, {7, 1}}));
}

TEST_F(RouterTest, CapacityRanksByChoiceThenToken) {
  // Expert 0 is the second choice of tokens 0, 1 and the first choice of tokens 2..7: the first
  // choices of the later tokens win over the earlier tokens' second choices.
  const int64_t T = 8, E = 4, K = 2;
  const int64_t C = capacity(1.2, K, T, E);
  const Vec logits = two_choice_logits(
      {{1, 0}, {2, 0}, {0, 3}, {0, 1}, {0, 2}, {0, 3}, {0, 1}, {0, 2}}, E);
  const Routing r = route(logits, T, E, K, true);
  const Plan p = plan(r, T, K, E, C);
  EXPECT_EQ(p.assignments, (Idx{8, 3, 3, 2}));
  EXPECT_EQ(p.kept, (std::vector<int64_t>{5, 3, 3, 2}));
  EXPECT_EQ(dropped(p, T, K), (std::set<std::pair<int, int>>{{7, 0}, {0, 1}, {1, 1}}));
  // Kept gates are not renormalised: token 7's second gate keeps its value.
  EXPECT_NEAR(r.gates[7 * K + 1], 1.0 / (1.0 + std::exp(1.0)), 1e-15);
}

TEST_F(RouterTest, DroplessKeepsEverything) {
  const int64_t T = 40, E = 5, K = 2;
  std::mt19937_64 gen(2);
  std::normal_distribution<double> normal;
  Vec logits(T * E);
  for (double& x : logits) x = normal(gen);
  logits[0] += 10;  // make an imbalanced expert
  const Routing r = route(logits, T, E, K, true);
  const Plan p = plan(r, T, K, E, -1);
  EXPECT_EQ(std::accumulate(p.kept.begin(), p.kept.end(), int64_t{0}), T * K);
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(p.kept[e], p.assignments[e]);
  EXPECT_TRUE(dropped(p, T, K).empty());
}

// ---- the permutation plan -------------------------------------------------------------------
TEST_F(RouterTest, PlanIsConsistentAndGroupedByExpertThenToken) {
  const int64_t T = 50, E = 6, K = 2;
  std::mt19937_64 gen(3);
  std::normal_distribution<double> normal;
  Vec logits(T * E);
  for (double& x : logits) x = normal(gen);
  for (int64_t t = 0; t < T; t += 2) logits[t * E + 1] += 3;  // expert 1 overloaded
  const Routing r = route(logits, T, E, K, true);
  for (int64_t C : {capacity(1.0, K, T, E), int64_t{-1}, int64_t{0}, int64_t{3}}) {
    SCOPED_TRACE("capacity " + std::to_string(C));
    const Plan p = plan(r, T, K, E, C);

    // Reference: per expert, assignments ranked by (k, t); the first C kept.
    std::vector<int64_t> assigned(E, 0), kept(E, 0);
    std::vector<bool> keep(T * K);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t t = 0; t < T; ++t) {
        const int e = r.topk[t * K + k];
        ++assigned[e];
        keep[t * K + k] = C < 0 || kept[e] < C;
        kept[e] += keep[t * K + k];
      }
    EXPECT_EQ(p.kept, kept);
    for (int64_t e = 0; e < E; ++e) EXPECT_EQ(p.assignments[e], assigned[e]);
    const int64_t N = std::accumulate(kept.begin(), kept.end(), int64_t{0});

    for (int64_t s = 0; s < T * K; ++s) {
      ASSERT_EQ(p.slot_row[s] >= 0, keep[s]) << "slot " << s;
      if (keep[s]) {
        ASSERT_LT(p.slot_row[s], N);
        ASSERT_EQ(p.row_slot[p.slot_row[s]], s);
      }
    }
    ASSERT_EQ(static_cast<int64_t>(p.row_slot.size()), N);  // rows 0 .. N-1, each named once
    for (int64_t row = 0; row < N; ++row) {
      const int32_t s = p.row_slot[row];
      ASSERT_GE(s, 0);
      ASSERT_EQ(p.slot_row[s], row);
      if (row > 0) {  // grouped by expert ascending, then token ascending
        const int32_t prev = p.row_slot[row - 1];
        const int e = r.topk[s], prev_e = r.topk[prev];
        ASSERT_LE(prev_e, e);
        if (prev_e == e) {
          ASSERT_LT(prev / K, s / K);
        }
      }
    }
    int64_t begin = 0;  // expert e's rows are [sum of earlier kept, + kept[e])
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t row = begin; row < begin + kept[e]; ++row) ASSERT_EQ(r.topk[p.row_slot[row]], e);
      begin += kept[e];
    }
  }
}

TEST_F(RouterTest, PlanRejectsBadInput) {
  Tensor idx = be->alloc({2, 2}, DType::i32);
  be->write(idx, std::span<const int32_t>(Idx{0, 1, 1, 4}));
  Tensor slot_row = be->alloc({4}, DType::i32);
  Tensor slot_expert = be->alloc({4}, DType::i32), assignments = be->alloc({4}, DType::i32);
  Tensor gates = be->zeros({2, 2}, DType::f64), logits = be->zeros({2, 4}, DType::f64);
  RoutingRule rule;
  rule.top_k = 2;
  auto plan_with = [&](const Tensor& rows, const Tensor& bias, int64_t capacity) {
    rule.capacity = capacity;
    be->router_plan(rows, slot_expert, assignments, idx, gates, logits, bias, rule);
  };
  EXPECT_THROW(plan_with(slot_row, Tensor(), -1), std::runtime_error);  // expert 4 of 4
  be->write(idx, std::span<const int32_t>(Idx{0, 1, 1, 3}));
  EXPECT_THROW(plan_with(be->alloc({3}, DType::i32), Tensor(), -1), std::runtime_error);
  EXPECT_THROW(plan_with(slot_row, be->zeros({3}, DType::f64), -1), std::runtime_error);
  EXPECT_THROW(plan_with(slot_row, be->zeros({4}, DType::f32), -1), std::runtime_error);
  EXPECT_NO_THROW(plan_with(slot_row, be->zeros({4}, DType::f64), -1));
  EXPECT_NO_THROW(plan_with(slot_row, Tensor(), 0));
}

// router_plan_start then router_plan_finish is router_plan; misuse is refused by name.
TEST_F(RouterTest, PlanInTwoCallsIsThePlan) {
  const int64_t T = 3, E = 4, K = 2;
  Tensor idx = be->alloc({T, K}, DType::i32);
  be->write(idx, std::span<const int32_t>(Idx{0, 1, 1, 3, 1, 0}));
  Tensor gates = be->zeros({T, K}, DType::f64), logits = be->zeros({T, E}, DType::f64);
  RoutingRule rule;
  rule.top_k = K;
  rule.capacity = 1;  // drops, so that the counts say something
  auto outputs = [&] {
    return std::vector<Tensor>{be->alloc({T * K}, DType::i32), be->alloc({T * K}, DType::i32),
                               be->alloc({E}, DType::i32)};
  };
  const std::vector<Tensor> one = outputs(), two = outputs();
  const RouterPlanCounts whole =
      be->router_plan(one[0], one[1], one[2], idx, gates, logits, Tensor(), rule);
  EXPECT_THROW(be->router_plan_finish(), std::runtime_error);  // nothing started
  be->router_plan_start(two[0], two[1], two[2], idx, gates, logits, Tensor(), rule);
  EXPECT_THROW(be->router_plan_start(two[0], two[1], two[2], idx, gates, logits, Tensor(), rule),
               std::runtime_error);
  EXPECT_THROW(be->router_plan(one[0], one[1], one[2], idx, gates, logits, Tensor(), rule),
               std::runtime_error);
  const RouterPlanCounts halves = be->router_plan_finish();
  EXPECT_EQ(halves.tokens_per_expert, whole.tokens_per_expert);
  EXPECT_EQ(halves.assignments_per_expert, whole.assignments_per_expert);
  EXPECT_EQ(halves.rerouted, whole.rerouted);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(be->read_i32(two[i]), be->read_i32(one[i])) << i;
  EXPECT_THROW(be->router_plan_finish(), std::runtime_error);  // already finished
}

// ---- losses ---------------------------------------------------------------------------------
struct Losses {
  double aux, z;
};

Losses losses(Backend& be, const Routing& r, const Plan& p, int64_t T, int64_t E, int64_t K,
              DType dt) {
  Tensor probs = be.alloc({T, E}, dt), lse = be.alloc({T}, dt), a = be.alloc({E}, DType::i32);
  be.write(probs, std::span<const double>(r.probs));
  be.write(lse, std::span<const double>(r.lse));
  be.write(a, std::span<const int32_t>(p.assignments));
  RoutingRule rule;
  rule.top_k = K;
  const RouterLossValues values = be.router_losses(probs, lse, a, rule);
  // The same values written into a tensor (the op training uses, which need not wait for them).
  Tensor into = be.alloc({3}, DType::f64);
  be.router_losses_into(into, probs, lse, a, rule);
  EXPECT_EQ(be.read(into), (std::vector<double>{values.aux, values.z, values.entropy}));
  return {values.aux, values.z};
}

TEST_F(RouterTest, AuxLossIsOneForAUniformRouter) {
  for (DType dt : kFloatTypes) {
    const double tol = dt == DType::f32 ? 1e-6 : 1e-12;
    {
      // All logits equal: p exactly uniform; ties pick experts 0..K-1, so f is not uniform,
      // but aux = E * sum_e f_e / E = 1.
      const int64_t T = 8, E = 4, K = 2;
      const Routing r = route(Vec(T * E, 0.5), T, E, K, true, dt);
      const Plan p = plan(r, T, K, E, -1);
      EXPECT_EQ(p.assignments, (Idx{8, 8, 0, 0}));
      EXPECT_NEAR(losses(*be, r, p, T, E, K, dt).aux, 1.0, tol);
    }
    {
      // Token t prefers expert t % 4 by 1e-9: f uniform, p uniform to 1e-9.
      const int64_t T = 8, E = 4, K = 1;
      Vec logits(T * E, 0.0);
      for (int64_t t = 0; t < T; ++t) logits[t * E + t % E] = 1e-9;
      const Routing r = route(logits, T, E, K, false, DType::f64);
      const Plan p = plan(r, T, K, E, -1);
      EXPECT_EQ(p.assignments, (Idx{2, 2, 2, 2}));
      EXPECT_NEAR(losses(*be, r, p, T, E, K, dt).aux, 1.0, 1e-6);
    }
  }
}

TEST_F(RouterTest, AuxLossMatchesFormula) {
  const int64_t T = 10, E = 3, K = 2;
  std::mt19937_64 gen(4);
  std::normal_distribution<double> normal;
  Vec logits(T * E);
  for (double& x : logits) x = normal(gen);
  const Routing r = route(logits, T, E, K, true);
  const Plan p = plan(r, T, K, E, 2);  // drops do not change f (counted before drops)
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) {
    double P = 0;
    for (int64_t t = 0; t < T; ++t) P += r.probs[t * E + e] / T;
    aux += static_cast<double>(p.assignments[e]) / (K * T) * P;
  }
  EXPECT_NEAR(losses(*be, r, p, T, E, K, DType::f64).aux, E * aux, 1e-14);
}

TEST_F(RouterTest, ZLossHandExample) {
  // lse of [0, 0] is ln 2, of [ln 3, 0] is ln 4: z = (ln2^2 + (2 ln2)^2) / 2 = 2.5 ln2^2.
  const double ln2 = std::log(2.0);
  for (DType dt : kFloatTypes) {
    const Routing r = route({0.0, 0.0, std::log(3.0), 0.0}, 2, 2, 1, false, dt);
    EXPECT_NEAR(r.lse[0], ln2, 1e-7);
    EXPECT_NEAR(r.lse[1], 2 * ln2, 1e-7);
    const Plan p = plan(r, 2, 1, 2, -1);
    EXPECT_NEAR(losses(*be, r, p, 2, 2, 1, dt).z, 2.5 * ln2 * ln2, dt == DType::f32 ? 1e-6 : 1e-15);
  }
}

}  // namespace
}  // namespace sy
