// Finite-difference gradient checks in float64 for every layer and for the whole model,
// including the aux and z losses and the top-k / capacity path.
#include <gtest/gtest.h>

#include "model/attention.h"
#include "model/embedding.h"
#include "model/lm_head.h"
#include "model/moe/moe_layer.h"
#include "model/rmsnorm.h"
#include "model/swiglu.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "tests/grad_check.h"

namespace sy {
namespace {

using test::expect_gradient;
using test::random_param;
using test::random_tensor;
using test::weighted_sum;

class LayerGrad : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Backend& be = *backend;
  std::vector<double> grad_of(const Param& p) { return be.read(p.grad); }
  void zero(std::initializer_list<Param*> params) {
    for (Param* p : params) be.fill(p->grad, 0.0);
  }
};

TEST_F(LayerGrad, RMSNorm) {
  const int64_t T = 5, D = 7;
  RMSNorm norm;
  norm.gain = random_param(be, "g", {D}, 1);
  Tensor x = random_tensor(be, {T, D}, 2), r = random_tensor(be, {T, D}, 3);
  auto loss = [&] { return weighted_sum(be, norm.forward(be, x), r); };
  loss();
  const std::vector<double> dx = be.read(norm.backward(be, r, x));
  expect_gradient(be, x, dx, loss, "rmsnorm x");
  expect_gradient(be, norm.gain.value, grad_of(norm.gain), loss, "rmsnorm gain");
}

// Multi-head attention, and grouped-query: 4 query heads over 2 key/value heads, and over 1
// (multi-query); QK-norm over the whole projections and per head (its gains checked too); and
// heads wider than D / H (head_dim), with and without grouping and per-head QK-norm.
TEST_F(LayerGrad, Attention) {
  struct Case {
    int64_t heads, kv_heads;
    QkNorm qk_norm;
    int64_t head_dim;  // 0: D / H
  };
  for (const Case c : {Case{2, 0, QkNorm::none, 0},
                       {4, 2, QkNorm::none, 0},
                       {4, 1, QkNorm::none, 0},
                       {2, 0, QkNorm::full, 0},
                       {4, 2, QkNorm::full, 0},
                       {4, 2, QkNorm::per_head, 0},
                       {2, 0, QkNorm::none, 6},
                       {4, 2, QkNorm::per_head, 6}}) {
    const auto [heads, kv_heads, qk_norm, head_dim] = c;
    const AttentionShape shape{2, 5, heads};
    const int64_t D = 4 * heads, T = shape.batch * shape.seq;
    const int64_t Dh = head_dim > 0 ? head_dim : D / heads;
    const int64_t q_width = heads * Dh, kv_width = (kv_heads > 0 ? kv_heads : heads) * Dh;
    Attention attn;
    attn.kv_heads = kv_heads;
    attn.wq = random_param(be, "wq", {D, q_width}, 11, 0.4);
    attn.wk = random_param(be, "wk", {D, kv_width}, 12, 0.4);
    attn.wv = random_param(be, "wv", {D, kv_width}, 13, 0.4);
    attn.wo = random_param(be, "wo", {q_width, D}, 14, 0.4);
    std::vector<Param*> params{&attn.wq, &attn.wk, &attn.wv, &attn.wo};
    if (qk_norm != QkNorm::none) {
      const bool per_head = qk_norm == QkNorm::per_head;
      attn.q_norm = random_param(be, "q_norm", {per_head ? Dh : q_width}, 17, 0.3);
      attn.k_norm = random_param(be, "k_norm", {per_head ? Dh : kv_width}, 18, 0.3);
      params.insert(params.end(), {&attn.q_norm, &attn.k_norm});
    }
    Tensor x = random_tensor(be, {T, D}, 15), r = random_tensor(be, {T, D}, 16);
    auto loss = [&] { return weighted_sum(be, attn.forward(be, x, shape), r); };
    loss();
    const std::vector<double> dx = be.read(attn.backward(be, r, x, shape));
    const char* norms[] = {"", " qk_norm full", " qk_norm per_head"};
    const std::string name = "attention kv_heads " + std::to_string(kv_heads) + " Dh " +
                             std::to_string(Dh) + norms[static_cast<int>(qk_norm)] + " ";
    expect_gradient(be, x, dx, loss, name + "x", 40);
    // Steps of 1e-5: at 1e-6 the rounding of the loss (summed over every output) is ~2e-8 of
    // the per-head QK-norm case's wq gradients, over the tolerance; 1e-5 and 1e-4 agree.
    for (Param* p : params)
      expect_gradient(be, p->value, grad_of(*p), loss, name + p->path, 24, 1e-5);
  }
}

// Grouped-query attention is multi-head attention whose wk and wv repeat each key/value head's
// columns for the query heads it serves: the same output, and the same gradients, each key/value
// head's being the sum over its group (to rounding: the sum is formed before the GEMM there).
TEST_F(LayerGrad, GroupedQueryAttentionIsMultiHeadWithRepeatedHeads) {
  const AttentionShape shape{2, 6, 4};
  const int64_t D = 16, Dh = D / shape.heads, kv_heads = 2, G = shape.heads / kv_heads;
  const int64_t T = shape.batch * shape.seq, kv_width = kv_heads * Dh;
  for (const AttentionKernel kernel : {AttentionKernel::reference, AttentionKernel::flash}) {
    Attention grouped, multi;
    grouped.kernel = multi.kernel = kernel;
    grouped.kv_heads = kv_heads;
    grouped.wq = random_param(be, "wq", {D, D}, 61, 0.4);
    grouped.wk = random_param(be, "wk", {D, kv_width}, 62, 0.4);
    grouped.wv = random_param(be, "wv", {D, kv_width}, 63, 0.4);
    grouped.wo = random_param(be, "wo", {D, D}, 64, 0.4);
    multi.wq = random_param(be, "wq", {D, D}, 61, 0.4);
    multi.wo = random_param(be, "wo", {D, D}, 64, 0.4);
    // wk_multi[:, (j*G + g)*Dh + d] = wk[:, j*Dh + d]: column blocks repeated, rows kept.
    auto repeated = [&](const Param& w, const std::string& path) {
      Param full = random_param(be, path, {D, D}, 0, 0.0);
      const std::vector<double> kv = be.read(w.value);
      std::vector<double> values(D * D);
      for (int64_t row = 0; row < D; ++row)
        for (int64_t col = 0; col < D; ++col)
          values[row * D + col] = kv[row * kv_width + (col / Dh / G) * Dh + col % Dh];
      be.write(full.value, std::span<const double>(values));
      return full;
    };
    multi.wk = repeated(grouped.wk, "wk");
    multi.wv = repeated(grouped.wv, "wv");
    Tensor x = random_tensor(be, {T, D}, 65), r = random_tensor(be, {T, D}, 66);
    const std::vector<double> out_grouped = be.read(grouped.forward(be, x, shape));
    EXPECT_EQ(out_grouped, be.read(multi.forward(be, x, shape)));
    const std::vector<double> dx_grouped = be.read(grouped.backward(be, r, x, shape));
    const std::vector<double> dx_multi = be.read(multi.backward(be, r, x, shape));
    for (int64_t i = 0; i < T * D; ++i) EXPECT_NEAR(dx_grouped[i], dx_multi[i], 1e-12);
    EXPECT_EQ(grad_of(grouped.wq), grad_of(multi.wq));
    EXPECT_EQ(grad_of(grouped.wo), grad_of(multi.wo));
    for (auto [kv, full] : {std::pair{&grouped.wk, &multi.wk}, {&grouped.wv, &multi.wv}}) {
      const std::vector<double> kv_grad = grad_of(*kv), full_grad = grad_of(*full);
      for (int64_t row = 0; row < D; ++row)
        for (int64_t c = 0; c < kv_width; ++c) {
          double sum = 0;
          for (int64_t g = 0; g < G; ++g)
            sum += full_grad[row * D + ((c / Dh) * G + g) * Dh + c % Dh];
          EXPECT_NEAR(kv_grad[row * kv_width + c], sum, 1e-12) << kv->path;
        }
    }
  }
}

TEST_F(LayerGrad, DenseSwiGLU) {
  const int64_t T = 6, D = 5, F = 7;
  DenseFFN ffn;
  ffn.w1 = random_param(be, "w1", {D, F}, 21, 0.5);
  ffn.w3 = random_param(be, "w3", {D, F}, 22, 0.5);
  ffn.w2 = random_param(be, "w2", {F, D}, 23, 0.5);
  Tensor u = random_tensor(be, {T, D}, 24), r = random_tensor(be, {T, D}, 25);
  auto loss = [&] { return weighted_sum(be, ffn.forward(be, u), r); };
  loss();
  const std::vector<double> du = be.read(ffn.backward(be, r, u));
  expect_gradient(be, u, du, loss, "swiglu u");
  for (Param* p : {&ffn.w1, &ffn.w3, &ffn.w2})
    expect_gradient(be, p->value, grad_of(*p), loss, "swiglu " + p->path);
}

TEST_F(LayerGrad, Embedding) {
  const int64_t V = 6, D = 3;
  Embedding emb;
  emb.table = random_param(be, "embedding", {V, D}, 31);
  Tensor tokens = be.alloc({5}, DType::i32);
  be.write(tokens, std::span<const int32_t>(std::vector<int32_t>{4, 1, 4, 0, 5}));
  Tensor out = be.alloc({5, D}, DType::f64), r = random_tensor(be, {5, D}, 32);
  auto loss = [&] {
    emb.forward(be, out, tokens);
    return weighted_sum(be, out, r);
  };
  loss();
  emb.backward(be, r, tokens);
  expect_gradient(be, emb.table.value, grad_of(emb.table), loss, "embedding");
}

void check_lm_head(Backend& be, bool tied) {
  const int64_t T = 7, D = 4, V = 9;
  Param table = random_param(be, "embedding", {V, D}, 41);
  LMHead head;
  head.chunk_rows = 3;  // several chunks, the last one short
  if (tied)
    head.tied_table = &table;
  else
    head.weight = random_param(be, "lm_head", {D, V}, 42);
  Param& w = tied ? table : head.weight;
  Tensor x = random_tensor(be, {T, D}, 43);
  Tensor targets = be.alloc({T}, DType::i32);
  be.write(targets, std::span<const int32_t>(std::vector<int32_t>{0, 8, 3, 3, 5, 1, 7}));
  const double scale = 0.37;
  auto loss = [&] { return scale * head.forward_backward(be, x, targets, false, scale); };
  be.fill(w.grad, 0.0);
  head.forward_backward(be, x, targets, true, scale);
  expect_gradient(be, x, be.read(head.dx), loss, tied ? "lm_head tied x" : "lm_head x");
  expect_gradient(be, w.value, be.read(w.grad), loss, tied ? "tied table" : "lm_head");
}

TEST_F(LayerGrad, LMHeadTied) { check_lm_head(be, true); }
TEST_F(LayerGrad, LMHeadUntied) { check_lm_head(be, false); }

// MoE layer: loss = sum(out .* r) + d_aux * aux + d_z * z, through route, permute, dispatch,
// experts, combine and unpermute.
// `balancing` sets the score, drop policy and overflow; with `bias`, an expert bias steers the
// selection (the loss does not depend on it smoothly, so it is held fixed).
void check_moe(Backend& be, int64_t K, double capacity_factor, bool normalize,
               RouterSettings balancing = {}, bool bias = false) {
  const int64_t T = 12, D = 6, E = 4, F = 5;
  LocalExchange exchange(be, E);
  MoELayer moe;
  moe.exchange = &exchange;
  // Large router weights: well-separated logits, so the finite differences never flip a top-k.
  moe.router.weight = random_param(be, "router", {D, E}, 51, 1.5);
  moe.router.settings = balancing;
  moe.router.settings.num_experts = E;
  moe.router.settings.top_k = K;
  moe.router.settings.normalize_topk = normalize ? TopkNormalize::on : TopkNormalize::off;
  moe.router.settings.capacity_factor = capacity_factor;
  if (bias) {
    moe.router.expert_bias = be.alloc({E}, DType::f64);
    be.write(moe.router.expert_bias, std::span<const double>(std::vector<double>{0.4, -0.3, 0.9, 0.0}));
  }
  moe.experts.w1 = random_param(be, "w1", {E, D, F}, 52, 0.5);
  moe.experts.w3 = random_param(be, "w3", {E, D, F}, 53, 0.5);
  moe.experts.w2 = random_param(be, "w2", {E, F, D}, 54, 0.5);
  Tensor u = random_tensor(be, {T, D}, 55), r = random_tensor(be, {T, D}, 56);
  const double d_aux = 0.7, d_z = 0.3;
  auto loss = [&] {
    const double sum = weighted_sum(be, moe.forward(be, u), r);
    return sum + d_aux * moe.router.aux_loss + d_z * moe.router.z_loss;
  };
  loss();
  if (capacity_factor > 0 && balancing.overflow == Overflow::drop) {
    EXPECT_GT(moe.router.dropped, 0) << "the test wants drops";
  }
  if (balancing.overflow == Overflow::reroute) {
    EXPECT_GT(moe.router.rerouted, 0) << "the test wants reroutes";
  }
  const std::vector<double> du = be.read(moe.backward(be, r, u, d_aux, d_z));
  expect_gradient(be, u, du, loss, "moe u", 40);
  for (Param* p : {&moe.router.weight, &moe.experts.w1, &moe.experts.w3, &moe.experts.w2})
    expect_gradient(be, p->value, be.read(p->grad), loss, "moe " + p->path, 40);
}

TEST_F(LayerGrad, MoETop2Dropless) { check_moe(be, 2, 0.0, true); }
TEST_F(LayerGrad, MoETop2CapacityDrops) { check_moe(be, 2, 0.75, true); }
TEST_F(LayerGrad, MoETop1Unnormalised) { check_moe(be, 1, 0.0, false); }
TEST_F(LayerGrad, MoETop3CapacityDropsUnnormalised) { check_moe(be, 3, 0.8, false); }

RouterSettings balancing(RouterScore score, DropPolicy policy, Overflow overflow) {
  RouterSettings settings;
  settings.score = score;
  settings.drop_policy = policy;
  settings.overflow = overflow;
  return settings;
}
TEST_F(LayerGrad, MoESigmoidTop2Drops) {
  check_moe(be, 2, 0.75, true, balancing(RouterScore::sigmoid, DropPolicy::position, Overflow::drop));
}
TEST_F(LayerGrad, MoESigmoidTop1Unnormalised) {
  check_moe(be, 1, 0.0, false, balancing(RouterScore::sigmoid, DropPolicy::position, Overflow::drop));
}
TEST_F(LayerGrad, MoEProbabilityDrops) {
  check_moe(be, 2, 0.75, true,
            balancing(RouterScore::softmax, DropPolicy::probability, Overflow::drop));
}
TEST_F(LayerGrad, MoERerouteWithBias) {
  check_moe(be, 2, 1.0, true,
            balancing(RouterScore::softmax, DropPolicy::probability, Overflow::reroute), true);
}
TEST_F(LayerGrad, MoESigmoidRerouteWithBias) {
  check_moe(be, 1, 1.0, true, balancing(RouterScore::sigmoid, DropPolicy::position, Overflow::reroute),
            true);
}

// The whole model: loss = lm + aux_coef * aux + z_coef * z, gradients of every parameter.
void check_model(Backend& be, const std::string& layers, bool tie, double capacity_factor,
                 int64_t shared_expert_hidden = 0) {
  TransformerOptions options;
  options.model = {32, 6, 8, 3, 2, 12, tie};  // V, S, D, L, H, F, tie
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 2;
  options.moe.expert_hidden = 6;
  options.moe.shared_expert_hidden = shared_expert_hidden;
  options.moe.capacity_factor = capacity_factor;
  options.moe.aux_loss_coef = 0.5;
  options.moe.z_loss_coef = 0.2;
  options.moe_layers = layers == "all"    ? std::vector<bool>{true, true, true}
                       : layers == "dense" ? std::vector<bool>{false, false, false}
                                           : std::vector<bool>{false, true, false};
  options.dtype = DType::f64;
  LocalExchange exchange(be, options.moe.num_experts);
  Transformer model(be, options, &exchange);
  model.init_parameters(7);
  // Scale up the weights so that gradients are not tiny and routing is well separated.
  for (Param* p : model.params()) {
    if (p->value.ndim() == 1) continue;
    const bool router = p->path.find("router") != std::string::npos;
    be.scale(p->value, router ? 60.0 : 15.0);
  }
  const int64_t B = 2, T = B * options.model.seq_len;
  std::vector<int32_t> inputs(T), targets(T);
  for (int64_t t = 0; t < T; ++t) {
    inputs[t] = static_cast<int32_t>((t * 7 + 3) % 32);
    targets[t] = static_cast<int32_t>((t * 5 + 1) % 32);
  }
  const double scale = 0.5;  // as if one of two routing groups
  model.zero_grads();
  const GroupStats stats = model.forward_backward(inputs, targets, B, true, scale);
  if (layers != "dense") {
    EXPECT_GT(stats.aux_loss, 0.0);
  }
  if (capacity_factor > 0) {
    EXPECT_GT(stats.dropped, 0) << "the test wants drops";
  }
  auto loss = [&] { return scale * model.forward_backward(inputs, targets, B, false, 0).loss; };
  for (Param* p : model.params())
    expect_gradient(be, p->value, be.read(p->grad), loss, "model " + p->path, 12);
}

TEST_F(LayerGrad, ModelAllMoEDropless) { check_model(be, "all", true, 0.0); }
TEST_F(LayerGrad, ModelAllMoECapacityDrops) { check_model(be, "all", true, 0.75); }
TEST_F(LayerGrad, ModelMixedUntied) { check_model(be, "middle", false, 1.0); }
TEST_F(LayerGrad, ModelDense) { check_model(be, "dense", true, 0.0); }
// A shared expert beside the routed ones (moe.shared_expert_hidden) in the MoE layer of a mixed
// model, with drops, so that some tokens reach only the shared expert.
TEST_F(LayerGrad, ModelSharedExpert) { check_model(be, "middle", true, 0.75, 5); }

}  // namespace
}  // namespace sy
