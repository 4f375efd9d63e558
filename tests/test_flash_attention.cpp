// The CPU flash attention ops (model/cpu/flash_attention.cpp) against the BLAS attention
// (attention_forward/backward with probs) in f64 and f32, an fp64 gradient check of the ops and
// of the Attention layer with `flash`, the `auto` rule on the CPU, and the config key. The CUDA
// kernels are checked against these ops in test_cuda_ops.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "model/attention.h"
#include "tests/grad_check.h"
#include "trainer/config.h"

namespace sy {
namespace {

using test::expect_gradient;
using test::random_param;
using test::random_tensor;
using test::weighted_sum;

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    norm = std::max(norm, std::abs(b[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

class FlashCpu : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Backend& be = *backend;

  Tensor random(const Shape& shape, uint64_t seed, DType dtype) {
    Tensor t = be.alloc(shape, dtype);
    be.write(t, std::span<const double>(test::random_values(shape_numel(shape), seed)));
    return t;
  }

  // Flash against the probs path on the same inputs: out, dq, dk, dv within `tol` (relative to
  // each tensor's largest entry), and lse against a direct logsumexp of the scores.
  void compare(int64_t B, int64_t S, int64_t H, int64_t Dh, DType dtype, double tol) {
    SCOPED_TRACE("B=" + std::to_string(B) + " S=" + std::to_string(S) + " H=" +
                 std::to_string(H) + " Dh=" + std::to_string(Dh) + " " + dtype_name(dtype));
    const int64_t T = B * S, D = H * Dh;
    const uint64_t seed = 100 * S + Dh;
    Tensor q = random({T, D}, seed, dtype), k = random({T, D}, seed + 1, dtype),
           v = random({T, D}, seed + 2, dtype), dout = random({T, D}, seed + 3, dtype);
    Tensor out_ref = be.alloc({T, D}, dtype), probs = be.alloc({B, H, S, S}, dtype);
    Tensor out = be.alloc({T, D}, dtype), lse = be.alloc({B, H, S}, dtype);
    be.attention_forward(out_ref, probs, q, k, v, B, S, H);
    be.flash_attention_forward(out, lse, q, k, v, B, S, H);
    EXPECT_LE(max_rel_diff(be.read(out), be.read(out_ref)), tol) << "out";

    const std::vector<double> qh = be.read(q), kh = be.read(k), lse_h = be.read(lse);
    double lse_err = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < S; ++i) {
          std::vector<double> scores;
          for (int64_t j = 0; j <= i; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < Dh; ++d)
              dot += qh[(b * S + i) * D + h * Dh + d] * kh[(b * S + j) * D + h * Dh + d];
            scores.push_back(dot / std::sqrt(static_cast<double>(Dh)));
          }
          const double m = *std::max_element(scores.begin(), scores.end());
          double sum = 0;
          for (double s : scores) sum += std::exp(s - m);
          lse_err = std::max(lse_err, std::abs(lse_h[(b * H + h) * S + i] - (m + std::log(sum))));
        }
    EXPECT_LE(lse_err, tol) << "lse";

    Tensor dq_ref = be.alloc({T, D}, dtype), dk_ref = be.alloc({T, D}, dtype),
           dv_ref = be.alloc({T, D}, dtype);
    Tensor dq = be.alloc({T, D}, dtype), dk = be.alloc({T, D}, dtype), dv = be.alloc({T, D}, dtype);
    be.attention_backward(dq_ref, dk_ref, dv_ref, dout, q, k, v, probs, B, S, H);
    be.flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, S, H);
    EXPECT_LE(max_rel_diff(be.read(dq), be.read(dq_ref)), tol) << "dq";
    EXPECT_LE(max_rel_diff(be.read(dk), be.read(dk_ref)), tol) << "dk";
    EXPECT_LE(max_rel_diff(be.read(dv), be.read(dv_ref)), tol) << "dv";
  }
};

TEST_F(FlashCpu, MatchesTheProbsPathF64) {
  for (int64_t S : {1, 7, 33})
    for (int64_t Dh : {2, 16}) compare(2, S, 3, Dh, DType::f64, 1e-12);
}

TEST_F(FlashCpu, MatchesTheProbsPathF32) {
  for (int64_t S : {1, 7, 64})
    for (int64_t Dh : {16, 64}) compare(2, S, 3, Dh, DType::f32, 2e-5);
}

// Generation's ops: queries at positions p .. p+n-1 over the keys of positions 0 .. L-1
// (attention_decode) are the rows p .. of the flash forward over the whole sequence, bitwise
// (the same sums in the same order); rotary from first_position p turns rows as the whole
// sequence's rotary turns its rows p ..; keys past p+n-1 are not read.
TEST_F(FlashCpu, DecodeIsTheFlashRowsOfItsPositions) {
  const int64_t H = 3, S = 21;
  for (const DType dtype : {DType::f32, DType::f64})
    for (const int64_t Dh : {2, 16})
      for (const auto [p, n] : {std::pair<int64_t, int64_t>{0, 5}, {7, 1}, {12, 9}, {20, 1}}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " Dh=" + std::to_string(Dh) +
                     " p=" + std::to_string(p) + " n=" + std::to_string(n));
        const int64_t D = H * Dh;
        Tensor q = random({S, D}, 7 * Dh + p, dtype), k = random({S, D}, 8 * Dh + p, dtype),
               v = random({S, D}, 9 * Dh + p, dtype);
        Tensor out = be.alloc({S, D}, dtype), lse = be.alloc({1, H, S}, dtype);
        be.flash_attention_forward(out, lse, q, k, v, 1, S, H);
        Tensor decoded = be.alloc({n, D}, dtype);
        be.fill(decoded, NAN);
        const Tensor keys = k.rows(0, p + n), values = v.rows(0, p + n);
        be.attention_decode(decoded, q.rows(p, p + n), keys, values, H, p);
        EXPECT_EQ(be.read(decoded), be.read(out.rows(p, p + n)));
        // Keys and values after the last query's position change nothing.
        be.attention_decode(decoded, q.rows(p, p + n), k, v, H, p);
        EXPECT_EQ(be.read(decoded), be.read(out.rows(p, p + n)));

        Tensor whole = random({S, D}, 10 * Dh + p, dtype), part = be.alloc({n, D}, dtype);
        be.copy(part, whole.rows(p, p + n));
        be.rope_forward(whole, 1, S, H, 5e5);
        be.rope_forward(part, 1, n, H, 5e5, {}, p);
        EXPECT_EQ(be.read(part), be.read(whole.rows(p, p + n)));
      }
  Tensor q = random({2, 4}, 1, DType::f32), k = random({5, 4}, 2, DType::f32);
  Tensor out = be.alloc({2, 4}, DType::f32);
  EXPECT_THROW(be.attention_decode(out, q, k, k, 2, 4), std::runtime_error);  // past the keys
  EXPECT_THROW(be.attention_decode(out, q, k, k, 2, -1), std::runtime_error);
  EXPECT_THROW(be.rope_forward(q, 1, 2, 2, {}, be.alloc({2}, DType::i32), 3), std::runtime_error);
}

// sum(out .* r) through the flash forward; its gradient with respect to q, k, v comes from the
// flash backward (fed the forward's own out and lse).
TEST_F(FlashCpu, GradientCheckF64) {
  const int64_t B = 2, S = 6, H = 2, Dh = 4, T = B * S, D = H * Dh;
  Tensor q = random_tensor(be, {T, D}, 21), k = random_tensor(be, {T, D}, 22),
         v = random_tensor(be, {T, D}, 23), r = random_tensor(be, {T, D}, 24);
  Tensor out = be.alloc({T, D}, DType::f64), lse = be.alloc({B, H, S}, DType::f64);
  auto loss = [&] {
    be.flash_attention_forward(out, lse, q, k, v, B, S, H);
    return weighted_sum(be, out, r);
  };
  loss();
  Tensor dq = be.alloc({T, D}, DType::f64), dk = be.alloc({T, D}, DType::f64),
         dv = be.alloc({T, D}, DType::f64);
  be.flash_attention_backward(dq, dk, dv, r, q, k, v, out, lse, B, S, H);
  const std::vector<double> gq = be.read(dq), gk = be.read(dk), gv = be.read(dv);
  expect_gradient(be, q, gq, loss, "flash dq", 48);
  expect_gradient(be, k, gk, loss, "flash dk", 48);
  expect_gradient(be, v, gv, loss, "flash dv", 48);
}

// The layer with kernel = flash saves lse, not probs, and passes the same gradient check as the
// reference layer (test_layers_grad.cpp), with the same results to rounding.
TEST_F(FlashCpu, LayerWithFlashKernel) {
  const AttentionShape shape{2, 5, 2};
  const int64_t D = 8, T = shape.batch * shape.seq;
  Attention flash, reference;
  for (Attention* a : {&flash, &reference}) {
    a->wq = random_param(be, "wq", {D, D}, 11, 0.4);
    a->wk = random_param(be, "wk", {D, D}, 12, 0.4);
    a->wv = random_param(be, "wv", {D, D}, 13, 0.4);
    a->wo = random_param(be, "wo", {D, D}, 14, 0.4);
  }
  flash.kernel = AttentionKernel::flash;
  reference.kernel = AttentionKernel::reference;
  Tensor x = random_tensor(be, {T, D}, 15), r = random_tensor(be, {T, D}, 16);
  auto loss = [&] { return weighted_sum(be, flash.forward(be, x, shape), r); };
  loss();
  EXPECT_FALSE(flash.probs.defined());
  EXPECT_EQ(flash.lse.shape(), (Shape{shape.batch, shape.heads, shape.seq}));
  const std::vector<double> dx = be.read(flash.backward(be, r, x, shape));
  reference.forward(be, x, shape);
  EXPECT_LE(max_rel_diff(be.read(flash.out), be.read(reference.out)), 1e-12);
  EXPECT_LE(max_rel_diff(dx, be.read(reference.backward(be, r, x, shape))), 1e-12);
  expect_gradient(be, x, dx, loss, "flash layer x", 40);
  for (Param* p : {&flash.wq, &flash.wk, &flash.wv, &flash.wo})
    expect_gradient(be, p->value, be.read(p->grad), loss, "flash layer " + p->path);
}

// `auto` keeps the BLAS path on the CPU, bit for bit.
TEST_F(FlashCpu, AutoIsTheReferenceOnTheCpu) {
  Attention a;
  EXPECT_FALSE(a.uses_flash(be));
  a.kernel = AttentionKernel::flash;
  EXPECT_TRUE(a.uses_flash(be));
  a.kernel = AttentionKernel::reference;
  EXPECT_FALSE(a.uses_flash(be));
}

// The key parses into its enum and writes back the same name; an unknown name is one error
// naming the key, the value and the kernels.
TEST(FlashConfig, KernelKeyIsValidated) {
  EXPECT_EQ(Config{}.model.attention_kernel, AttentionKernel::automatic);
  const std::pair<const char*, AttentionKernel> kernels[] = {
      {"auto", AttentionKernel::automatic}, {"cudnn", AttentionKernel::cudnn},
      {"flash", AttentionKernel::flash}, {"reference", AttentionKernel::reference}};
  for (const auto& [name, kernel] : kernels) {
    const Config c = load_config_text("", "<test>", {std::string("model.attention_kernel=") + name});
    EXPECT_EQ(c.model.attention_kernel, kernel) << name;
    EXPECT_NE(config_to_yaml(c).find("attention_kernel: \"" + std::string(name) + "\""),
              std::string::npos) << name;
  }
  std::vector<std::string> errors;
  EXPECT_THROW(load_config_text("", "<test>", {"model.attention_kernel=fast"}, &errors), ConfigError);
  EXPECT_EQ(errors, (std::vector<std::string>{
                        "<test>: model.attention_kernel: unknown value \"fast\" (expected auto, "
                        "cudnn, flash or reference)"}));
}

}  // namespace
}  // namespace sy
