// Load balancing beyond the Switch aux loss (docs/load-balancing.md), on the CPU reference:
// sigmoid scores, the expert bias of aux-loss-free balancing and its update, the probability
// drop policy, rerouting, the aux loss from counts given from outside (global scope), the load
// metrics; and end to end: global scope on one rank equals micro-batch scope, the bias update
// evens out a skewed router, a run with the bias resumes bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/moe/moe_layer.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "tests/grad_check.h"
#include "tests/slots_of_rows.h"
#include "tests/synthetic_corpus.h"
#include "tests/tiny_moe.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using Vec = std::vector<double>;
using Idx = std::vector<int32_t>;

// One routing group through the backend's router ops, in f64.
struct Routed {
  Vec scores, gates;
  Idx topk, slot_row, row_slot, slot_expert, assignments;  // row_slot: slot_row's inverse
  std::vector<int64_t> kept;
  int64_t rerouted = 0;
  RouterLossValues losses;
};

class Balancing : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();

  Tensor tensor(const Shape& shape, const Vec& values) {
    Tensor t = be->alloc(shape, DType::f64);
    be->write(t, std::span<const double>(values));
    return t;
  }

  // logits [T, E]; bias [E] or empty; counts [E] for f_e, or empty for the group's own choices.
  Routed route(const Vec& logits, int64_t T, int64_t E, const RoutingRule& rule,
               const Vec& bias = {}, const Idx& counts = {}) {
    const int64_t K = rule.top_k;
    Tensor scores = be->alloc({T, E}, DType::f64), lse = be->alloc({T}, DType::f64);
    Tensor idx = be->alloc({T, K}, DType::i32), gates = be->alloc({T, K}, DType::f64);
    Tensor slot_row = be->alloc({T * K}, DType::i32);
    Tensor slot_expert = be->alloc({T * K}, DType::i32), assignments = be->alloc({E}, DType::i32);
    Tensor logit_tensor = tensor({T, E}, logits);
    Tensor bias_tensor = bias.empty() ? Tensor() : tensor({E}, bias);
    be->router_scores_topk(scores, lse, idx, gates, logit_tensor, bias_tensor, rule);
    const RouterPlanCounts plan = be->router_plan(slot_row, slot_expert, assignments, idx, gates,
                                                  logit_tensor, bias_tensor, rule);
    Tensor balance = assignments;
    if (!counts.empty()) {
      balance = be->alloc({E}, DType::i32);
      be->write(balance, std::span<const int32_t>(counts));
    }
    Routed r;
    r.losses = be->router_losses(scores, lse, balance, rule);
    r.scores = be->read(scores);
    r.gates = be->read(gates);
    r.topk = be->read_i32(idx);
    r.slot_row = be->read_i32(slot_row);
    r.row_slot = slots_of_rows(r.slot_row);
    r.slot_expert = be->read_i32(slot_expert);
    r.assignments = be->read_i32(assignments);
    r.kept = plan.tokens_per_expert;
    r.rerouted = plan.rerouted;
    return r;
  }
};

RoutingRule rule_of(int64_t K, RouterScore score, bool normalize, int64_t capacity = -1,
                    DropPolicy policy = DropPolicy::position, Overflow overflow = Overflow::drop) {
  return {{.top_k = K, .score = score, .drop_policy = policy, .overflow = overflow}, normalize, capacity};
}

// The dropped assignments t*K+k.
Idx dropped_slots(const Routed& r) {
  Idx out;
  for (size_t s = 0; s < r.slot_row.size(); ++s)
    if (r.slot_row[s] < 0) out.push_back(static_cast<int32_t>(s));
  return out;
}

// ---- scores and selection -----------------------------------------------------------------------
TEST_F(Balancing, SigmoidScoresAndNormalisedGates) {
  // sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4.
  const double ln3 = std::log(3.0);
  const Routed r = route({0.0, ln3, -ln3}, 1, 3, rule_of(2, RouterScore::sigmoid, true));
  EXPECT_NEAR(r.scores[0], 0.5, 1e-15);
  EXPECT_NEAR(r.scores[1], 0.75, 1e-15);
  EXPECT_NEAR(r.scores[2], 0.25, 1e-15);
  EXPECT_EQ(r.topk, (Idx{1, 0}));
  EXPECT_NEAR(r.gates[0], 0.75 / 1.25, 1e-15);
  EXPECT_NEAR(r.gates[1], 0.5 / 1.25, 1e-15);
  // Unnormalised sigmoid gates are the scores themselves.
  const Routed raw = route({0.0, ln3, -ln3}, 1, 3, rule_of(1, RouterScore::sigmoid, false));
  EXPECT_NEAR(raw.gates[0], 0.75, 1e-15);
}

TEST_F(Balancing, BiasSteersTheSelectionButNotTheGates) {
  // Logits favour expert 0; a bias of +2 on expert 2 makes it the choice, and its gate is its
  // unbiased softmax probability.
  const Vec logits{1.0, 0.5, 0.0};
  const double sum = std::exp(1.0) + std::exp(0.5) + 1.0;
  const Routed plain = route(logits, 1, 3, rule_of(1, RouterScore::softmax, false));
  EXPECT_EQ(plain.topk, (Idx{0}));
  const Routed biased = route(logits, 1, 3, rule_of(1, RouterScore::softmax, false), {0, 0, 2});
  EXPECT_EQ(biased.topk, (Idx{2}));
  EXPECT_NEAR(biased.gates[0], 1.0 / sum, 1e-15);
  EXPECT_NEAR(biased.scores[0], std::exp(1.0) / sum, 1e-15);  // scores are unbiased too
  // Ties of the biased score go to the lower index: 1 + 0 = 0 + 1.
  EXPECT_EQ(route(logits, 1, 3, rule_of(1, RouterScore::softmax, false), {0, 0, 1}).topk, (Idx{0}));
  // The counts behind the aux loss follow the biased choice.
  EXPECT_EQ(biased.assignments, (Idx{0, 0, 1}));
}

// ---- drop policies ------------------------------------------------------------------------------
TEST_F(Balancing, ProbabilityPolicyDropsTheLowestGatesFirst) {
  // Four tokens all choose expert 0 (K = 1, unnormalised: gate = p), with p rising with t except
  // token 2, the most confident. Capacity 2.
  const int64_t T = 4, E = 2;
  const Vec logits{1.0, 0.0, 1.5, 0.0, 4.0, 0.0, 2.0, 0.0};
  const Routed position = route(logits, T, E, rule_of(1, RouterScore::softmax, false, 2));
  EXPECT_EQ(dropped_slots(position), (Idx{2, 3}));  // SPEC order: the first tokens win
  const Routed by_gate = route(logits, T, E,
                               rule_of(1, RouterScore::softmax, false, 2, DropPolicy::probability));
  EXPECT_EQ(dropped_slots(by_gate), (Idx{0, 1}));  // gates 0.73, 0.82 lose to 0.98, 0.88
  EXPECT_EQ(by_gate.kept, (std::vector<int64_t>{2, 0}));
  // Rows stay in token order within the expert.
  EXPECT_EQ(by_gate.row_slot[0], 2);
  EXPECT_EQ(by_gate.row_slot[1], 3);
}

TEST_F(Balancing, ProbabilityPolicyRanksSecondChoicesByGateToo) {
  // K = 2, unnormalised gates: token 0's second choice of expert 1 (p = 0.47) has a higher gate
  // than token 1's first choice of it (p = 0.28); capacity 1. The probability policy keeps the
  // former, the position policy (first choices first) the latter.
  const int64_t T = 2, E = 4;
  const Vec logits{2.0, 1.9, -5.0, -5.0,  //
                   0.0, 0.5, 0.4, 0.45};
  const RoutingRule position = rule_of(2, RouterScore::softmax, false, 1);
  RoutingRule by_gate = position;
  by_gate.drop_policy = DropPolicy::probability;
  const Routed p = route(logits, T, E, position);
  const Routed g = route(logits, T, E, by_gate);
  ASSERT_EQ(p.topk, (Idx{0, 1, 1, 3}));
  ASSERT_GT(p.gates[1], p.gates[2]);  // token 0's second gate beats token 1's first
  EXPECT_EQ(dropped_slots(p), (Idx{1}));
  EXPECT_EQ(dropped_slots(g), (Idx{2}));
}

// ---- rerouting ----------------------------------------------------------------------------------
TEST_F(Balancing, RerouteMovesOverflowToTheNextBestExpertWithRoom) {
  // K = 1, E = 4, T = 4, capacity 1: every token prefers expert 0. Token 1's next best is 1;
  // token 2's is 1 (full by then), then 2; token 3's is 1, 2 (full), then 3.
  const int64_t T = 4, E = 4;
  const Vec logits{3, 1, 0.5, 0,    //
                   3, 2, 1, 0,      //
                   3, 2, 1, 0,      //
                   3, 2, 1, 0.5};
  const RoutingRule rule = rule_of(1, RouterScore::softmax, false, 1, DropPolicy::position,
                                   Overflow::reroute);
  const Routed r = route(logits, T, E, rule);
  EXPECT_EQ(r.topk, (Idx{0, 0, 0, 0}));
  EXPECT_EQ(r.slot_expert, (Idx{0, 1, 2, 3}));
  EXPECT_EQ(r.rerouted, 3);
  EXPECT_TRUE(dropped_slots(r).empty());
  EXPECT_EQ(r.kept, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(r.row_slot, (Idx{0, 1, 2, 3}));  // grouped by the expert that runs them
  // f_e and expert_load count the router's choices, not where the tokens went.
  EXPECT_EQ(r.assignments, (Idx{4, 0, 0, 0}));
  // A rerouted assignment keeps its gate: token 3's gate is still its probability of expert 0.
  const double sum = std::exp(3.0) + std::exp(2.0) + std::exp(1.0) + std::exp(0.5);
  EXPECT_NEAR(r.gates[3], std::exp(3.0) / sum, 1e-15);
  // Without reroute the same routing drops three.
  RoutingRule drop = rule;
  drop.overflow = Overflow::drop;
  EXPECT_EQ(dropped_slots(route(logits, T, E, drop)), (Idx{1, 2, 3}));
}

TEST_F(Balancing, RerouteSkipsTheTokensOwnExpertsAndDropsWhenAllAreFull) {
  // K = 2, E = 4, capacity 2, five tokens all choosing (0, 1): tokens 0 and 1 fill experts 0
  // and 1; the six overflowing assignments are rerouted in (k, t) order to experts 2 and 3 (two
  // slots each), never to an expert the token already uses:
  //   (t2,k0) -> 3 (t2 prefers 3), (t3,k0) -> 2 (t3 prefers 2), (t4,k0) -> 3 (now full),
  //   (t2,k1) -> 2 (its sibling holds 3; now full), (t3,k1): its sibling holds 2, 3 is full ->
  //   dropped, (t4,k1): sibling holds 3, 2 is full -> dropped.
  const int64_t T = 5, E = 4;
  const Vec logits{2, 1, 0, 0,    //
                   2, 1, 0, 0,    //
                   2, 1, 0, 0.5,  //
                   2, 1, 0.5, 0,  //
                   2, 1, 0, 0.5};
  const RoutingRule rule = rule_of(2, RouterScore::softmax, true, 2, DropPolicy::position,
                                   Overflow::reroute);
  const Routed r = route(logits, T, E, rule);
  EXPECT_EQ(r.topk, (Idx{0, 1, 0, 1, 0, 1, 0, 1, 0, 1}));
  EXPECT_EQ(r.slot_expert, (Idx{0, 1, 0, 1, 3, 2, 2, 1, 3, 1}));
  EXPECT_EQ(r.rerouted, 4);
  EXPECT_EQ(dropped_slots(r), (Idx{7, 9}));
  EXPECT_EQ(r.kept, (std::vector<int64_t>{2, 2, 2, 2}));
}

TEST_F(Balancing, RerouteOrderFollowsTheDropPolicy) {
  // K = 1, E = 2, capacity 1, three tokens choosing expert 0 with gates rising with t. Expert 1
  // has one slot for the two that overflow. Position: token 0 is kept, token 1 (earlier) takes
  // the free slot, token 2 is dropped. Probability: token 2 (highest gate) is kept, token 1
  // (next highest) takes the slot, token 0 is dropped.
  const int64_t T = 3, E = 2;
  const Vec logits{1.0, 0.0, 1.5, 0.0, 3.0, 0.0};
  RoutingRule rule = rule_of(1, RouterScore::softmax, false, 1, DropPolicy::position,
                             Overflow::reroute);
  const Routed p = route(logits, T, E, rule);
  EXPECT_EQ(p.slot_expert, (Idx{0, 1, 0}));
  EXPECT_EQ(dropped_slots(p), (Idx{2}));
  rule.drop_policy = DropPolicy::probability;
  const Routed g = route(logits, T, E, rule);
  EXPECT_EQ(g.slot_expert, (Idx{0, 1, 0}));
  EXPECT_EQ(dropped_slots(g), (Idx{0}));
  EXPECT_EQ(g.row_slot[0], 2);
}

// ---- the losses ---------------------------------------------------------------------------------
TEST_F(Balancing, SigmoidAuxLossNormalisesTheScoresAndEntropyIsPerToken) {
  // Two tokens, two experts; scores s; q = s / sum(s); aux = E * sum_e f_e * mean_t q[t,e].
  const double ln3 = std::log(3.0);
  const Vec logits{ln3, 0.0, 0.0, 0.0};  // s = (3/4, 1/2), (1/2, 1/2)
  const Routed r = route(logits, 2, 2, rule_of(1, RouterScore::sigmoid, true));
  EXPECT_EQ(r.assignments, (Idx{2, 0}));  // ties go to expert 0
  const double q0 = 0.75 / 1.25, q1 = 0.5 / 1.25;
  const double P0 = (q0 + 0.5) / 2;
  EXPECT_NEAR(r.losses.aux, 2 * (1.0 * P0 + 0.0), 1e-15);
  const double h0 = -(q0 * std::log(q0) + q1 * std::log(q1)), h1 = std::log(2.0);
  EXPECT_NEAR(r.losses.entropy, (h0 + h1) / 2, 1e-15);
  // The z-loss still comes from the logits' logsumexp.
  const double lse0 = std::log(3.0 + 1.0), lse1 = std::log(2.0);
  EXPECT_NEAR(r.losses.z, (lse0 * lse0 + lse1 * lse1) / 2, 1e-14);
}

TEST_F(Balancing, SoftmaxEntropyIsLogEWhenUniform) {
  const Routed r = route(Vec(3 * 4, 0.25), 3, 4, rule_of(2, RouterScore::softmax, true));
  EXPECT_NEAR(r.losses.entropy, std::log(4.0), 1e-15);
  EXPECT_NEAR(r.losses.aux, 1.0, 1e-15);
}

TEST_F(Balancing, AuxLossTakesItsCountsFromOutside) {
  // Global scope hands the router the choices of every group of the micro-step: f_e comes from
  // those counts, P_e from this group's scores.
  const int64_t T = 3, E = 3;
  const Vec logits{1, 0, 0, 0, 2, 0, 0, 0, 3};
  const RoutingRule rule = rule_of(1, RouterScore::softmax, false);
  const Routed own = route(logits, T, E, rule);
  const Routed global = route(logits, T, E, rule, {}, {6, 2, 1});
  Vec P(E, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) P[e] += own.scores[t * E + e] / T;
  EXPECT_NEAR(global.losses.aux, E * (6.0 / 9 * P[0] + 2.0 / 9 * P[1] + 1.0 / 9 * P[2]), 1e-15);
  EXPECT_NEAR(own.losses.aux, E * (P[0] + P[1] + P[2]) / 3, 1e-15);
}

// ---- metrics ------------------------------------------------------------------------------------
TEST(LoadMetrics, CoefficientOfVariationAndMaxOverMean) {
  const LoadBalance uniform = load_balance({0.25, 0.25, 0.25, 0.25});
  EXPECT_DOUBLE_EQ(uniform.cv, 0.0);
  EXPECT_DOUBLE_EQ(uniform.max_over_mean, 1.0);
  const LoadBalance collapsed = load_balance({1.0, 0.0, 0.0, 0.0});
  EXPECT_NEAR(collapsed.cv, std::sqrt(3.0), 1e-15);  // sqrt(E - 1)
  EXPECT_DOUBLE_EQ(collapsed.max_over_mean, 4.0);
  const LoadBalance half = load_balance({0.5, 0.5, 0.0, 0.0});
  EXPECT_NEAR(half.cv, 1.0, 1e-15);
  EXPECT_DOUBLE_EQ(half.max_over_mean, 2.0);
}

TEST(LoadMetrics, ProgressLineSummarisesEachLayer) {
  StepMetrics m;
  m.step = 10;
  m.load_cv = {0.123, 1.5};
  m.load_max_mean = {1.26, 3.04};
  m.rerouted_frac = 0.25;
  const std::string line = progress_line(m, 100);
  EXPECT_NE(line.find("(rerouted 25.00%)"), std::string::npos) << line;
  EXPECT_NE(line.find("cv/max 0.12/1.3 1.50/3.0"), std::string::npos) << line;
  m.load_cv.assign(6, 0.1);
  m.load_max_mean.assign(6, 1.1);
  m.load_cv[4] = 0.9;
  m.load_max_mean[4] = 2.5;
  EXPECT_NE(progress_line(m, 100).find("cv/max worst L4 0.90/2.5"), std::string::npos);
}

// ---- the expert bias ----------------------------------------------------------------------------
TransformerOptions one_moe_layer(double rate) {
  TransformerOptions options;
  options.model = {16, 8, 8, 1, 2, 16, true};  // V, S, D, L, H, F, tie
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 1;
  options.moe.expert_hidden = 8;
  options.moe.bias_update_rate = rate;
  options.moe_layers = {true};
  return options;
}

TEST_F(Balancing, BiasUpdateBySignOfTheLoadGap) {
  const TransformerOptions options = one_moe_layer(0.01);
  LocalExchange exchange(*be, 4);
  Transformer model(*be, options, &exchange);
  ASSERT_EQ(model.expert_biases().size(), 1u);
  EXPECT_EQ(model.expert_biases()[0].first, "layers/0/moe/expert_bias");
  const Tensor bias = model.expert_biases()[0].second;
  EXPECT_EQ(be->read(bias), (Vec{0, 0, 0, 0}));
  // Loads 10, 2, 4, 0: mean 4. Overloaded experts go down, underloaded up, the mean stays.
  model.update_expert_bias({{10, 2, 4, 0}});
  const Vec after = be->read(bias);
  EXPECT_FLOAT_EQ(after[0], -0.01f);
  EXPECT_FLOAT_EQ(after[1], 0.01f);
  EXPECT_EQ(after[2], 0.0);
  EXPECT_FLOAT_EQ(after[3], 0.01f);
  model.update_expert_bias({{4, 4, 4, 4}});  // balanced: nothing moves
  EXPECT_EQ(be->read(bias), after);
  // Off (rate 0): no bias tensor, the update is a no-op.
  Transformer plain(*be, one_moe_layer(0.0), &exchange);
  EXPECT_TRUE(plain.expert_biases().empty());
  EXPECT_NO_THROW(plain.update_expert_bias({{1, 2, 3, 4}}));
}

TEST_F(Balancing, BiasUpdateEvensOutASkewedRouter) {
  // A router whose weights push most tokens to expert 0; the model is frozen (no gradient
  // steps), so only the bias can move the load.
  const TransformerOptions options = one_moe_layer(0.02);
  LocalExchange exchange(*be, 4);
  Transformer model(*be, options, &exchange);
  model.init_parameters(3);
  for (Param* p : model.params())
    if (p->path == "layers/0/moe/router") {
      std::vector<double> w = be->read(p->value);
      for (int64_t d = 0; d < 8; ++d) w[d * 4 + 0] += 0.3;  // [D, E]: expert 0's column
      be->write(p->value, std::span<const double>(w));
    }
  const int64_t B = 8, T = B * options.model.seq_len;
  std::vector<int32_t> inputs(T), targets(T);
  for (int64_t t = 0; t < T; ++t) {
    inputs[t] = static_cast<int32_t>((t * 7 + t / 5) % 16);
    targets[t] = static_cast<int32_t>((t * 3 + 1) % 16);
  }
  auto max_over_mean = [&] {
    const GroupStats stats = model.forward_backward(inputs, targets, B, false, 0.0);
    std::vector<double> load(stats.assignments_per_expert[0].begin(),
                             stats.assignments_per_expert[0].end());
    return std::make_pair(load_balance(load).max_over_mean, load);
  };
  const double before = max_over_mean().first;
  ASSERT_GT(before, 2.0) << "the router should start skewed";
  // The sign update keeps the bias oscillating around balance: judge the last 50 steps' mean.
  double late = 0;
  for (int step = 0; step < 200; ++step) {
    auto [ratio, load] = max_over_mean();
    model.update_expert_bias({load});
    if (step >= 150) late += ratio / 50;
  }
  std::printf("[ balance  ] max/mean load %.2f before, %.2f on average over updates 150-200\n",
              before, late);
  EXPECT_LT(late, 1.35) << "from " << before;
  const Vec bias = be->read(model.expert_biases()[0].second);
  EXPECT_LT(bias[0], 0.0) << "the overloaded expert's bias must fall";
}

// ---- buffers -------------------------------------------------------------------------------------
// Under a capacity the kept and received row counts change from step to step. Every MoE buffer is sized for the worst case on the first forward, so none is ever
// reallocated (on a device, each regrowth would leave the old block cached: memory crept up
// from 5.1 to 9.7 GiB over 300 steps of a 109M model at capacity 1.0 before this).
TEST_F(Balancing, MoEBuffersAreAllocatedOnceWhateverTheRouting) {
  for (double capacity_factor : {0.0, 1.0}) {
    const int64_t T = 16, D = 6, E = 4, F = 5;
    LocalExchange exchange(*be, E);
    MoELayer moe;
    moe.exchange = &exchange;
    moe.router.weight = test::random_param(*be, "router", {D, E}, 61);  // overwritten per trial
    moe.router.settings = {{.top_k = 2}, E, capacity_factor};
    moe.experts.w1 = test::random_param(*be, "w1", {E, D, F}, 62);
    moe.experts.w3 = test::random_param(*be, "w3", {E, D, F}, 63);
    moe.experts.w2 = test::random_param(*be, "w2", {E, F, D}, 64);
    Tensor u = be->alloc({T, D}, DType::f64), dout = be->zeros({T, D}, DType::f64);
    std::vector<const void*> first;
    std::vector<int64_t> kept;
    for (int trial = 0; trial < 6; ++trial) {
      // Router weights that send ever more of the group to expert `trial % E`.
      std::vector<double> w(D * E, 0.0), x(T * D);
      for (int64_t d = 0; d < D; ++d) w[d * E + trial % E] = 0.5 * trial;
      for (int64_t i = 0; i < T * D; ++i) x[i] = std::sin(0.7 * i + trial);
      be->write(moe.router.weight.value, std::span<const double>(w));
      be->write(u, std::span<const double>(x));
      moe.forward(*be, u);
      moe.backward(*be, dout, u, 0.1, 0.1);
      kept.push_back(moe.router.kept);
      const std::vector<const void*> now{
          moe.x_perm_storage.data(), moe.x_recv_storage.data(), moe.y_perm_storage.data(),
          moe.dy_perm_storage.data(), moe.dy_recv_storage.data(), moe.dx_perm_storage.data(),
          moe.experts.out_storage.data(), moe.experts.du_storage.data(), moe.experts.acts.h1.data(),
          moe.experts.acts.dh3.data()};
      if (trial == 0) first = now;
      EXPECT_EQ(now, first) << "a buffer was reallocated at trial " << trial
                            << " (capacity factor " << capacity_factor << ")";
    }
    if (capacity_factor > 0) {
      EXPECT_NE(*std::min_element(kept.begin(), kept.end()), *std::max_element(kept.begin(), kept.end()))
          << "the test wants kept counts that vary";
    }
  }
}

// ---- end to end ---------------------------------------------------------------------------------
class BalancingTrain : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("sy_balancing_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "the quick brown fox jumps over the lazy dog. "
                              "a mixture of experts routes each token to a few of its experts. ",
                              60, 95);
  }
  void TearDown() override { fs::remove_all(dir); }

  Config config(const std::string& run) const {
    Config c = test::tiny_moe(32);
    c.moe.capacity_factor = 1.0;
    c.train.micro_batch_size = 4;
    c.train.grad_accum_steps = 2;
    c.train.steps = 12;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 3;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 0;
    c.eval.batches = 2;
    c.run.dir = (dir / run).string();
    c.run.log_every = 1;
    return c;
  }
};

TEST_F(BalancingTrain, GlobalScopeOnOneRankEqualsMicroBatchScope) {
  // With one rank, the groups of a micro-step are the rank's own group: the same objective.
  Config micro = config("micro");
  Config global = config("global");
  global.moe.aux_loss_scope = AuxLossScope::global;
  const TrainSummary a = train(micro, {.print = false, .collect_parameters = true});
  const TrainSummary b = train(global, {.print = false, .collect_parameters = true});
  EXPECT_EQ(a.losses, b.losses);
  ASSERT_EQ(a.parameters.size(), b.parameters.size());
  for (size_t p = 0; p < a.parameters.size(); ++p)
    EXPECT_EQ(a.parameters[p].second, b.parameters[p].second) << a.parameters[p].first;
}

TEST_F(BalancingTrain, EveryOptionTrainsAndLogsItsMetrics) {
  Config c = config("all_options");
  c.moe.routing.score = RouterScore::sigmoid;
  c.moe.bias_update_rate = 0.01;
  c.moe.routing.drop_policy = DropPolicy::probability;
  c.moe.routing.overflow = Overflow::reroute;
  c.moe.capacity_factor = 0.75;
  const TrainSummary summary = train(c, {.print = false});
  EXPECT_LT(summary.losses.back(), summary.losses.front() - 0.5);
  std::ifstream in(dir / "all_options" / "metrics.jsonl");
  std::string first;
  std::getline(in, first);
  for (const char* key : {"\"rerouted_frac\": ", "\"load_cv\": [", "\"load_max_mean\": [",
                          "\"layer_dropped_frac\": [", "\"router_entropy\": [",
                          "\"expert_bias\": [["})
    EXPECT_NE(first.find(key), std::string::npos) << key << " missing from " << first;
  EXPECT_EQ(first.find("\"rerouted_frac\": 0.0,"), std::string::npos) << "nothing rerouted: " << first;
}

TEST_F(BalancingTrain, ExpertBiasIsCheckpointedAndResumesBitForBit) {
  Config c = config("straight");
  c.moe.bias_update_rate = 0.01;
  c.checkpoint.every = 6;
  const TrainSummary straight = train(c, {.print = false, .collect_parameters = true});
  const std::string half = (fs::path(checkpoint_dir(c)) / checkpoint_file_name(6)).string();
  bool found = false;
  scan_checkpoint_tensors(half, nullptr, [&](const TensorInfo& info) {
    if (info.path == "/model/layers/1/moe/expert_bias") {
      found = true;
      EXPECT_EQ(info.shape, (std::vector<int64_t>{4}));
      EXPECT_GT(info.norm, 0.0) << "six updates of 0.01 should have moved it";
    }
  });
  EXPECT_TRUE(found) << "no expert_bias in " << half;

  Config resumed_config = c;
  resumed_config.run.dir = (dir / "resumed").string();
  resumed_config.checkpoint.dir = checkpoint_dir(c);
  resumed_config.checkpoint.every = 0;
  const TrainSummary resumed = train(resumed_config, {.print = false, .collect_parameters = true,
                                                      .resume = half});
  ASSERT_EQ(resumed.losses.size(), 6u);
  for (size_t s = 0; s < 6; ++s) EXPECT_EQ(resumed.losses[s], straight.losses[6 + s]) << "step " << 7 + s;
  for (size_t p = 0; p < straight.parameters.size(); ++p)
    EXPECT_EQ(resumed.parameters[p].second, straight.parameters[p].second)
        << straight.parameters[p].first;

  // Turning bias balancing on at resume: the bias starts at zero, and that is reported.
  Config plain = config("plain");
  plain.checkpoint.every = 6;
  plain.train.steps = 6;
  train(plain, {.print = false});
  Config turned_on = plain;
  turned_on.train.steps = 8;
  turned_on.moe.bias_update_rate = 0.01;
  const TrainSummary on = train(turned_on, {.print = false, .resume = "auto"});
  std::string messages;
  for (const std::string& line : on.resume_messages) messages += line + "\n";
  EXPECT_NE(messages.find("/model/layers/0/moe/expert_bias is not in the checkpoint: starts at zero"),
            std::string::npos)
      << messages;
}

}  // namespace
}  // namespace sy
