// Tensor views and the CPU backend's ops against naive re-implementations, in f32 and f64, plus
// finite-difference checks (f64) of every backward op.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "model/backend.h"

namespace sy {
namespace {

using Vec = std::vector<double>;
constexpr DType kFloatTypes[] = {DType::f32, DType::f64};

Vec randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

// Values exactly representable in f32, so that f32 and f64 runs start from the same numbers.
Vec randn_f32(size_t n, uint64_t seed, double scale = 1.0) {
  Vec v = randn(n, seed, scale);
  for (double& x : v) x = static_cast<float>(x);
  return v;
}

double tolerance(DType dtype) { return dtype == DType::f32 ? 2e-5 : 1e-12; }

// |a - b| <= rtol * max|b| elementwise (norm-relative: robust to small entries).
void expect_close(const Vec& actual, const Vec& expected, double rtol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double scale = 0;
  for (double x : expected) scale = std::max(scale, std::abs(x));
  scale = std::max(scale, 1e-30);
  for (size_t i = 0; i < actual.size(); ++i)
    ASSERT_NEAR(actual[i], expected[i], rtol * scale) << what << " at " << i;
}

class CpuBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();

  Tensor tensor(const Shape& shape, DType dtype, const Vec& values) {
    Tensor t = be->alloc(shape, dtype);
    be->write(t, std::span<const double>(values));
    return t;
  }
  Tensor index(const Shape& shape, const std::vector<int32_t>& values) {
    Tensor t = be->alloc(shape, DType::i32);
    be->write(t, std::span<const int32_t>(values));
    return t;
  }
  // Outputs start as NaN, so that an op that leaves part of its output unwritten fails.
  Tensor nans(const Shape& shape, DType dtype) {
    Tensor t = be->alloc(shape, dtype);
    be->fill(t, std::numeric_limits<double>::quiet_NaN());
    return t;
  }
};

// Central differences of f at x, eps 1e-6.
Vec numeric_grad(const Vec& x0, const std::function<double(const Vec&)>& f) {
  constexpr double eps = 1e-6;
  Vec x = x0, grad(x0.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = x0[i] + eps;
    const double up = f(x);
    x[i] = x0[i] - eps;
    const double down = f(x);
    x[i] = x0[i];
    grad[i] = (up - down) / (2 * eps);
  }
  return grad;
}

// Relative tolerance 1e-6 per entry; the 1e-8 floor is the finite-difference rounding noise
// (1e-16 * |loss| / eps) for entries near zero.
void expect_grad(const Vec& analytic, const Vec& numeric, const std::string& what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  for (size_t i = 0; i < analytic.size(); ++i)
    ASSERT_NEAR(analytic[i], numeric[i],
                1e-6 * std::max(std::abs(analytic[i]), std::abs(numeric[i])) + 1e-8)
        << what << " at " << i;
}

double dot(const Vec& a, const Vec& b) { return std::inner_product(a.begin(), a.end(), b.begin(), 0.0); }

// ---- tensor views ---------------------------------------------------------------------------
TEST_F(CpuBackendTest, RowsReshapePrefixViews) {
  Tensor t = be->alloc({4, 3}, DType::f32);
  Vec v(12);
  std::iota(v.begin(), v.end(), 0.0);
  be->write(t, std::span<const double>(v));

  Tensor r = t.rows(1, 3);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_EQ(r.data(), static_cast<void*>(t.ptr<float>() + 3));
  EXPECT_EQ(be->read(r), (Vec{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(t.rows(4, 4).numel(), 0);
  EXPECT_THROW(t.rows(2, 5), std::runtime_error);
  EXPECT_THROW(t.rows(3, 2), std::runtime_error);

  be->fill(r.rows(1, 2), -1.0);  // writes through the view land in the parent
  EXPECT_EQ(be->read(t), (Vec{0, 1, 2, 3, 4, 5, -1, -1, -1, 9, 10, 11}));

  Tensor flat = t.reshape({12});
  EXPECT_EQ(flat.data(), t.data());
  EXPECT_EQ(flat.shape(), (Shape{12}));
  EXPECT_EQ(t.reshape({2, 2, 3}).dim(-1), 3);
  EXPECT_THROW(t.reshape({5, 2}), std::runtime_error);

  Tensor p = t.prefix({2, 2});
  EXPECT_EQ(be->read(p), (Vec{0, 1, 2, 3}));
  EXPECT_THROW(t.prefix({13}), std::runtime_error);

  Tensor t3 = be->alloc({3, 2, 2}, DType::f64);
  EXPECT_EQ(t3.rows(1, 2).data(), static_cast<void*>(t3.ptr<double>() + 4));
}

// ---- memory ---------------------------------------------------------------------------------
TEST_F(CpuBackendTest, AllocFillCopyReadWrite) {
  EXPECT_EQ(be->device(), Device::cpu);
  for (DType dt : {DType::f32, DType::f64, DType::i32}) {
    Tensor t = be->alloc({3, 5}, dt);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
    EXPECT_EQ(t.device(), Device::cpu);
    EXPECT_EQ(t.dtype(), dt);
    EXPECT_EQ(be->read(be->zeros({3, 5}, dt)), Vec(15, 0.0));
  }
  EXPECT_THROW(be->alloc({2}, DType::bf16), std::runtime_error);
  EXPECT_NO_THROW(be->alloc({0, 4}, DType::f32));

  Tensor a = tensor({4}, DType::f64, {1.5, -2.25, 3, 4});
  Tensor b = be->alloc({2, 2}, DType::f32);
  be->copy(b, a);
  EXPECT_EQ(be->read(b), (Vec{1.5, -2.25, 3, 4}));
  Tensor i = be->alloc({4}, DType::i32);
  be->copy(i, a);
  EXPECT_EQ(be->read_i32(i), (std::vector<int32_t>{1, -2, 3, 4}));
  be->copy(a, i);
  EXPECT_EQ(be->read(a), (Vec{1, -2, 3, 4}));
  EXPECT_THROW(be->copy(be->alloc({3}, DType::f32), a), std::runtime_error);

  std::vector<float> host_f{1.f, 2.f};
  Tensor f = be->alloc({2}, DType::f64);
  be->write(f, std::span<const float>(host_f));
  EXPECT_EQ(be->read(f), (Vec{1, 2}));
  EXPECT_THROW(be->write(f, std::span<const double>(Vec{1, 2, 3})), std::runtime_error);
  EXPECT_THROW(be->read_i32(f), std::runtime_error);
}

TEST_F(CpuBackendTest, AddScaleSumSquares) {
  for (DType dt : kFloatTypes) {
    Tensor y = tensor({3}, dt, {1, 2, 3});
    be->add(y, tensor({3}, dt, {1, 1, 2}), 0.5);
    EXPECT_EQ(be->read(y), (Vec{1.5, 2.5, 4}));
    be->scale(y, 2.0);
    EXPECT_EQ(be->read(y), (Vec{3, 5, 8}));
    EXPECT_EQ(be->sum_squares(y), 9.0 + 25.0 + 64.0);
  }
  EXPECT_THROW(be->add(be->alloc({3}, DType::f32), be->alloc({3}, DType::f64), 1.0),
               std::runtime_error);
  EXPECT_THROW(be->add(be->alloc({3}, DType::f32), be->alloc({4}, DType::f32), 1.0),
               std::runtime_error);
}

TEST_F(CpuBackendTest, Bf16IsRejected) {
  // A bf16 tensor made by hand (the CPU cannot allocate one): every float op rejects it.
  auto buffer = std::shared_ptr<void>(std::malloc(64), std::free);
  Tensor x(buffer, buffer.get(), {4}, DType::bf16, Device::cpu);
  try {
    be->scale(x, 2.0);
    FAIL() << "no throw";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "cpu backend: bf16 not supported");
  }
}

TEST_F(CpuBackendTest, SplitMastersAreTheCudaBackendsOnly) {
  EXPECT_FALSE(be->splits_bf16_masters());
  try {
    be->alloc({4}, DType::f32_split);
    FAIL() << "no throw";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "cpu backend: f32_split not supported");
  }
}

// ---- gemm -----------------------------------------------------------------------------------
// C = alpha op(A) op(B) + beta C, naive, on row-major host arrays.
Vec naive_gemm(const Vec& C, const Vec& A, bool ta, const Vec& B, bool tb, int64_t M, int64_t N,
               int64_t K, double alpha, double beta) {
  Vec out(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
      out[i * N + j] = alpha * s + beta * C[i * N + j];
    }
  return out;
}

TEST_F(CpuBackendTest, GemmAllTransposesWithViewsAndBeta) {
  const int64_t M = 5, N = 7, K = 3;
  for (DType dt : kFloatTypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const std::string what = std::string(dtype_name(dt)) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B");
        const Shape a_shape = ta ? Shape{K, M} : Shape{M, K};
        const Shape b_shape = tb ? Shape{N, K} : Shape{K, N};
        // Operands are row views at an offset into larger tensors.
        const Vec a_all = randn_f32((a_shape[0] + 3) * a_shape[1], 1);
        const Vec b_all = randn_f32((b_shape[0] + 2) * b_shape[1], 2);
        const Vec c_all = randn_f32((M + 1) * N, 3);
        Tensor A = tensor({a_shape[0] + 3, a_shape[1]}, dt, a_all).rows(2, 2 + a_shape[0]);
        Tensor B = tensor({b_shape[0] + 2, b_shape[1]}, dt, b_all).rows(1, 1 + b_shape[0]);
        Tensor C = tensor({M + 1, N}, dt, c_all).rows(1, M + 1);
        const Vec a(a_all.begin() + 2 * a_shape[1], a_all.begin() + (2 + a_shape[0]) * a_shape[1]);
        const Vec b(b_all.begin() + b_shape[1], b_all.begin() + (1 + b_shape[0]) * b_shape[1]);
        const Vec c(c_all.begin() + N, c_all.end());

        be->gemm(C, A, ta, B, tb, 0.75, 0.5);
        expect_close(be->read(C), naive_gemm(c, a, ta, b, tb, M, N, K, 0.75, 0.5), tolerance(dt), what);

        Tensor C0 = nans({M, N}, dt);  // beta 0 ignores C, even NaN
        be->gemm(C0, A, ta, B, tb, 1.0, 0.0);
        expect_close(be->read(C0), naive_gemm(Vec(M * N, 0.0), a, ta, b, tb, M, N, K, 1.0, 0.0),
                     tolerance(dt), what + " beta=0");
      }
}

TEST_F(CpuBackendTest, GemmEdgeCases) {
  for (DType dt : kFloatTypes) {
    // K = 0: C = beta * C.
    Tensor C = tensor({2, 2}, dt, {1, 2, 3, 4});
    be->gemm(C, be->alloc({2, 0}, dt), false, be->alloc({0, 2}, dt), false, 1.0, 0.5);
    EXPECT_EQ(be->read(C), (Vec{0.5, 1, 1.5, 2}));
    Tensor C0 = nans({2, 2}, dt);
    be->gemm(C0, be->alloc({0, 2}, dt), true, be->alloc({2, 0}, dt), true, 1.0, 0.0);
    EXPECT_EQ(be->read(C0), Vec(4, 0.0));
    // M = 0 and N = 0: nothing to do.
    EXPECT_NO_THROW(be->gemm(be->alloc({0, 2}, dt), be->alloc({0, 3}, dt), false,
                             be->alloc({3, 2}, dt), false, 1.0, 0.0));
    EXPECT_NO_THROW(be->gemm(be->alloc({2, 0}, dt), be->alloc({2, 3}, dt), false,
                             be->alloc({3, 0}, dt), false, 1.0, 0.0));
    // Mismatched shapes, dtypes.
    EXPECT_THROW(be->gemm(be->alloc({2, 2}, dt), be->alloc({2, 3}, dt), false,
                          be->alloc({2, 2}, dt), false, 1.0, 0.0),
                 std::runtime_error);
    EXPECT_THROW(be->gemm(be->alloc({2, 2}, dt), be->alloc({2, 3}, dt), true,
                          be->alloc({3, 2}, dt), false, 1.0, 0.0),
                 std::runtime_error);
  }
  EXPECT_THROW(be->gemm(be->alloc({2, 2}, DType::f32), be->alloc({2, 3}, DType::f64), false,
                        be->alloc({3, 2}, DType::f32), false, 1.0, 0.0),
               std::runtime_error);
}

// ---- embedding ------------------------------------------------------------------------------
TEST_F(CpuBackendTest, Embedding) {
  for (DType dt : kFloatTypes) {
    const Vec table = randn_f32(5 * 3, 4);
    Tensor out = nans({4, 3}, dt);
    Tensor tokens = index({4}, {2, 0, 2, 4});
    be->embedding_forward(out, tokens, tensor({5, 3}, dt, table));
    Vec expected;
    for (int tok : {2, 0, 2, 4}) expected.insert(expected.end(), table.begin() + tok * 3, table.begin() + tok * 3 + 3);
    EXPECT_EQ(be->read(out), expected);

    Tensor dtable = tensor({5, 3}, dt, Vec(15, 1.0));
    be->embedding_backward(dtable, tensor({4, 3}, dt, Vec(12, 0.5)), tokens);
    EXPECT_EQ(be->read(dtable), (Vec{1.5, 1.5, 1.5, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1.5, 1.5, 1.5}));
    EXPECT_THROW(be->embedding_forward(out, index({4}, {0, 1, 5, 0}), tensor({5, 3}, dt, table)),
                 std::runtime_error);
  }
}

// ---- RMSNorm --------------------------------------------------------------------------------
// The default epsilon (1e-5), and model.norm_eps's others on rows small enough to feel them.
TEST_F(CpuBackendTest, RmsnormForward) {
  const int64_t N = 6, D = 8;
  const Vec g = randn_f32(D, 6);
  for (const double eps : {1e-5, 1e-6, 0.5}) {
    Vec x = randn_f32(N * D, 5);
    if (eps != 1e-5)
      for (double& v : x) v = static_cast<float>(v * 1e-3);
    Vec expected(N * D), expected_rstd(N);
    for (int64_t t = 0; t < N; ++t) {
      double ms = 0;
      for (int64_t j = 0; j < D; ++j) ms += x[t * D + j] * x[t * D + j] / D;
      expected_rstd[t] = 1.0 / std::sqrt(ms + eps);
      for (int64_t j = 0; j < D; ++j) expected[t * D + j] = x[t * D + j] * expected_rstd[t] * g[j];
    }
    for (DType dt : kFloatTypes) {
      Tensor out = nans({2, 3, D}, dt), rstd = nans({6}, dt);
      if (eps == 1e-5)  // the default argument
        be->rmsnorm_forward(out, rstd, tensor({2, 3, D}, dt, x), tensor({D}, dt, g));
      else be->rmsnorm_forward(out, rstd, tensor({2, 3, D}, dt, x), tensor({D}, dt, g), eps);
      expect_close(be->read(out), expected, tolerance(dt), "rmsnorm out");
      expect_close(be->read(rstd), expected_rstd, tolerance(dt), "rmsnorm rstd");
    }
  }
  EXPECT_THROW(be->rmsnorm_forward(be->alloc({6, D}, DType::f32), be->alloc({6}, DType::f32),
                                   be->alloc({6, D}, DType::f32), be->alloc({D}, DType::f32), 0.0),
               std::runtime_error);
  EXPECT_THROW(be->rmsnorm_forward(be->alloc({6, D}, DType::f32), be->alloc({6}, DType::f32),
                                   be->alloc({6, D}, DType::f32), be->alloc({D + 1}, DType::f32)),
               std::runtime_error);
}

TEST_F(CpuBackendTest, RmsnormBackwardFiniteDifference) {
  const DType dt = DType::f64;
  const int64_t N = 3, D = 5;
  const Vec x0 = randn(N * D, 7), g0 = randn(D, 8), w = randn(N * D, 9), dgain0 = randn(D, 10);
  auto loss = [&](const Vec& x, const Vec& g) {
    Tensor out = be->alloc({N, D}, dt), rstd = be->alloc({N}, dt);
    be->rmsnorm_forward(out, rstd, tensor({N, D}, dt, x), tensor({D}, dt, g));
    return dot(w, be->read(out));
  };
  Tensor x = tensor({N, D}, dt, x0), g = tensor({D}, dt, g0);
  Tensor out = be->alloc({N, D}, dt), rstd = be->alloc({N}, dt);
  be->rmsnorm_forward(out, rstd, x, g);
  Tensor dx = nans({N, D}, dt), dgain = tensor({D}, dt, dgain0);
  be->rmsnorm_backward(dx, dgain, tensor({N, D}, dt, w), x, g, rstd);

  expect_grad(be->read(dx), numeric_grad(x0, [&](const Vec& xv) { return loss(xv, g0); }), "dx");
  Vec dg = be->read(dgain);
  for (int64_t j = 0; j < D; ++j) dg[j] -= dgain0[j];  // accumulated onto the old value
  expect_grad(dg, numeric_grad(g0, [&](const Vec& gv) { return loss(x0, gv); }), "dgain");
}

// The residual stream's two fused forms are, on the CPU, bitwise their unfused sequences:
// add_rmsnorm_forward is add_into then rmsnorm_forward, and the accumulating backward is the
// plain backward followed by add().
TEST_F(CpuBackendTest, RmsnormResidualFusionsAreTheirSequences) {
  const int64_t N = 4, D = 6;
  const Vec a = randn(N * D, 11), b = randn(N * D, 12), g = randn(D, 13), dy = randn(N * D, 14);
  const Vec res = randn(N * D, 15), dgain0 = randn(D, 16);
  for (DType dt : kFloatTypes) {
    Tensor sum = nans({N, D}, dt), out = nans({N, D}, dt), rstd = nans({N}, dt);
    be->add_rmsnorm_forward(sum, out, rstd, tensor({N, D}, dt, a), tensor({N, D}, dt, b),
                            tensor({D}, dt, g));
    Tensor sum_ref = nans({N, D}, dt), out_ref = nans({N, D}, dt), rstd_ref = nans({N}, dt);
    be->add_into(sum_ref, tensor({N, D}, dt, a), tensor({N, D}, dt, b));
    be->rmsnorm_forward(out_ref, rstd_ref, sum_ref, tensor({D}, dt, g));
    EXPECT_EQ(be->read(sum), be->read(sum_ref)) << dtype_name(dt);
    EXPECT_EQ(be->read(out), be->read(out_ref)) << dtype_name(dt);
    EXPECT_EQ(be->read(rstd), be->read(rstd_ref)) << dtype_name(dt);

    Tensor dres = tensor({N, D}, dt, res), dgain = tensor({D}, dt, dgain0);
    be->rmsnorm_backward(dres, dgain, tensor({N, D}, dt, dy), sum, tensor({D}, dt, g), rstd, true);
    Tensor dx = nans({N, D}, dt), dres_ref = tensor({N, D}, dt, res);
    Tensor dgain_ref = tensor({D}, dt, dgain0);
    be->rmsnorm_backward(dx, dgain_ref, tensor({N, D}, dt, dy), sum, tensor({D}, dt, g), rstd);
    be->add(dres_ref, dx, 1.0);
    EXPECT_EQ(be->read(dres), be->read(dres_ref)) << dtype_name(dt);
    EXPECT_EQ(be->read(dgain), be->read(dgain_ref)) << dtype_name(dt);
  }
  // The sum may be written over a (in place) but not over b.
  {
    Tensor x = tensor({N, D}, DType::f32, a), y = tensor({N, D}, DType::f32, b);
    Tensor out = nans({N, D}, DType::f32), rstd = nans({N}, DType::f32);
    const Tensor g32 = tensor({D}, DType::f32, g);
    Tensor want = nans({N, D}, DType::f32), want_out = nans({N, D}, DType::f32);
    be->add_into(want, x, y);
    be->rmsnorm_forward(want_out, rstd, want, g32);
    be->add_rmsnorm_forward(x, out, rstd, x, y, g32);
    EXPECT_EQ(be->read(x), be->read(want));
    EXPECT_EQ(be->read(out), be->read(want_out));
    EXPECT_THROW(be->add_rmsnorm_forward(y, out, rstd, x, y, g32), std::runtime_error);
  }
  // dx may not be one of the inputs it is computed from.
  Tensor x = tensor({N, D}, DType::f32, a), dgain = tensor({D}, DType::f32, dgain0);
  Tensor rstd = be->alloc({N}, DType::f32);
  EXPECT_THROW(be->rmsnorm_backward(x, dgain, tensor({N, D}, DType::f32, dy), x,
                                    tensor({D}, DType::f32, g), rstd, true),
               std::runtime_error);
}

// ---- rotary embedding -----------------------------------------------------------------------
// The default theta (10000) and model.rope_theta's others, each with its own cached tables.
TEST_F(CpuBackendTest, RopeMatchesSpecFormula) {
  const int64_t B = 2, S = 5, H = 3, Dh = 6, D = H * Dh;
  const Vec x = randn_f32(B * S * D, 11);
  for (const double theta : {10000.0, 1e6, 7.5}) {
    Vec expected = x;
    for (int64_t t = 0; t < B * S; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Dh / 2; ++i) {
          const double a = static_cast<double>(t % S) * std::pow(theta, -2.0 * i / Dh);
          const double lo = x[t * D + h * Dh + i], hi = x[t * D + h * Dh + i + Dh / 2];
          expected[t * D + h * Dh + i] = lo * std::cos(a) - hi * std::sin(a);
          expected[t * D + h * Dh + i + Dh / 2] = hi * std::cos(a) + lo * std::sin(a);
        }
    const std::string name = "rope theta " + std::to_string(theta);
    for (DType dt : kFloatTypes) {
      Tensor xt = tensor({B * S, D}, dt, x);
      be->rope_forward(xt, B, S, H, theta);
      expect_close(be->read(xt), expected, tolerance(dt), name);
      be->rope_forward(xt, B, S, H, theta);  // the cached tables give the same answer again
      be->rope_backward(xt, B, S, H, theta);
      expect_close(be->read(xt), expected, tolerance(dt), name + " cached");
      be->rope_backward(xt, B, S, H, theta);  // the inverse rotation
      expect_close(be->read(xt), x, tolerance(dt), name + " inverse");
    }
  }
  EXPECT_THROW(be->rope_forward(be->alloc({B * S, D}, DType::f32), B, S, H, -1.0),
               std::runtime_error);
  EXPECT_THROW(be->rope_forward(be->alloc({B * S, D}, DType::f32), B, S, 4), std::runtime_error);
  EXPECT_THROW(be->rope_forward(be->alloc({B * S, D}, DType::f32), B, S + 1, H), std::runtime_error);
}

// Scaled rotary (model.rope_scaling): the frequencies of Llama 3.1's rule at three wavelengths
// (theta 5e5, Dh 64, factor 32, L 8192: i <= 14 kept, i = 16 blended, i >= 20 divided; values
// from the rule written out in Python), linear's f / factor, and the op rotating by them.
TEST_F(CpuBackendTest, RopeScalingFrequencies) {
  Rotary llama3(500000.0);
  llama3.scaling = RopeScaling::llama3;
  llama3.factor = 32.0;
  const std::vector<double> f = rope_frequencies(64, llama3);
  ASSERT_EQ(f.size(), 32u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_DOUBLE_EQ(f[14], 0.003211445994752591);
  EXPECT_DOUBLE_EQ(f[16], 0.00042955679655936815);
  EXPECT_DOUBLE_EQ(f[20], 8.570255489881478e-06);
  EXPECT_DOUBLE_EQ(f[31], 9.41830672543491e-08);
  Rotary linear(10000.0);
  linear.scaling = RopeScaling::linear;
  linear.factor = 4.0;
  EXPECT_DOUBLE_EQ(rope_frequencies(8, linear)[1], std::pow(10000.0, -0.25) / 4.0);

  const int64_t B = 1, S = 7, H = 2, Dh = 64, D = H * Dh;
  const Vec x = randn_f32(B * S * D, 14);
  Vec expected = x;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Dh / 2; ++i) {
        const double a = static_cast<double>(s) * f[i];
        const double lo = x[s * D + h * Dh + i], hi = x[s * D + h * Dh + i + Dh / 2];
        expected[s * D + h * Dh + i] = lo * std::cos(a) - hi * std::sin(a);
        expected[s * D + h * Dh + i + Dh / 2] = hi * std::cos(a) + lo * std::sin(a);
      }
  Tensor xt = tensor({B * S, D}, DType::f64, x);
  be->rope_forward(xt, B, S, H, llama3);
  expect_close(be->read(xt), expected, tolerance(DType::f64), "rope llama3");
  Rotary broken = llama3;
  broken.high_freq_factor = 0.5;  // below low_freq_factor
  EXPECT_THROW(be->rope_forward(xt, B, S, H, broken), std::runtime_error);
}

TEST_F(CpuBackendTest, RopeBackwardFiniteDifference) {
  const DType dt = DType::f64;
  const int64_t B = 2, S = 3, H = 2, Dh = 4, D = H * Dh;
  const Vec x0 = randn(B * S * D, 12), w = randn(B * S * D, 13);
  auto loss = [&](const Vec& x) {
    Tensor t = tensor({B * S, D}, dt, x);
    be->rope_forward(t, B, S, H);
    return dot(w, be->read(t));
  };
  Tensor dx = tensor({B * S, D}, dt, w);
  be->rope_backward(dx, B, S, H);
  expect_grad(be->read(dx), numeric_grad(x0, loss), "rope dx");
}

// ---- attention ------------------------------------------------------------------------------
struct AttentionRef {
  Vec out, probs;
};

AttentionRef naive_attention(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t S,
                             int64_t H, int64_t Dh) {
  const int64_t D = H * Dh;
  AttentionRef r{Vec(B * S * D, 0.0), Vec(B * H * S * S, 0.0)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        Vec s(i + 1);
        double m = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t c = 0; c < Dh; ++c) d += q[(b * S + i) * D + h * Dh + c] * k[(b * S + j) * D + h * Dh + c];
          s[j] = d / std::sqrt(static_cast<double>(Dh));
          m = std::max(m, s[j]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - m));
        for (int64_t j = 0; j <= i; ++j) {
          const double p = s[j] / sum;
          r.probs[((b * H + h) * S + i) * S + j] = p;
          for (int64_t c = 0; c < Dh; ++c) r.out[(b * S + i) * D + h * Dh + c] += p * v[(b * S + j) * D + h * Dh + c];
        }
      }
  return r;
}

TEST_F(CpuBackendTest, AttentionForwardMatchesNaive) {
  const int64_t B = 2, S = 7, H = 3, Dh = 4, D = H * Dh;
  const Vec q = randn_f32(B * S * D, 14), k = randn_f32(B * S * D, 15), v = randn_f32(B * S * D, 16);
  const AttentionRef ref = naive_attention(q, k, v, B, S, H, Dh);
  for (DType dt : kFloatTypes) {
    Tensor out = nans({B * S, D}, dt), probs = nans({B, H, S, S}, dt);
    be->attention_forward(out, probs, tensor({B * S, D}, dt, q), tensor({B * S, D}, dt, k),
                          tensor({B * S, D}, dt, v), B, S, H);
    expect_close(be->read(out), ref.out, tolerance(dt), "attention out");
    const Vec p = be->read(probs);
    expect_close(p, ref.probs, tolerance(dt), "attention probs");
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = i + 1; j < S; ++j) ASSERT_EQ(p[(bh * S + i) * S + j], 0.0);
  }
}

// Attention spreads its (batch, head) pairs over OpenBLAS's thread count: the results must not
// depend on it, bit for bit.
TEST_F(CpuBackendTest, AttentionIsBitwiseIndependentOfThreadCount) {
  const int64_t B = 3, S = 16, H = 2, Dh = 8, D = H * Dh, n = B * S * D;
  const DType dt = DType::f32;
  Tensor q = tensor({B * S, D}, dt, randn(n, 50)), k = tensor({B * S, D}, dt, randn(n, 51));
  Tensor v = tensor({B * S, D}, dt, randn(n, 52)), w = tensor({B * S, D}, dt, randn(n, 53));
  auto run = [&](int threads) {
    const int saved = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    Tensor out = be->alloc({B * S, D}, dt), probs = be->alloc({B, H, S, S}, dt);
    Tensor dq = be->alloc({B * S, D}, dt), dk = be->alloc({B * S, D}, dt), dv = be->alloc({B * S, D}, dt);
    be->attention_forward(out, probs, q, k, v, B, S, H);
    be->attention_backward(dq, dk, dv, w, q, k, v, probs, B, S, H);
    EXPECT_EQ(openblas_get_num_threads(), threads);  // restored after the op
    openblas_set_num_threads(saved);
    std::vector<Vec> result;
    for (const Tensor& t : {out, probs, dq, dk, dv}) result.push_back(be->read(t));
    return result;
  };
  EXPECT_EQ(run(1), run(2));
}

TEST_F(CpuBackendTest, AttentionBackwardFiniteDifference) {
  const DType dt = DType::f64;
  const int64_t B = 2, S = 4, H = 2, Dh = 4, D = H * Dh, n = B * S * D;
  const Vec q0 = randn(n, 17), k0 = randn(n, 18), v0 = randn(n, 19), w = randn(n, 20);
  auto loss = [&](const Vec& q, const Vec& k, const Vec& v) {
    Tensor out = be->alloc({B * S, D}, dt), probs = be->alloc({B, H, S, S}, dt);
    be->attention_forward(out, probs, tensor({B * S, D}, dt, q), tensor({B * S, D}, dt, k),
                          tensor({B * S, D}, dt, v), B, S, H);
    return dot(w, be->read(out));
  };
  Tensor q = tensor({B * S, D}, dt, q0), k = tensor({B * S, D}, dt, k0), v = tensor({B * S, D}, dt, v0);
  Tensor out = be->alloc({B * S, D}, dt), probs = be->alloc({B, H, S, S}, dt);
  be->attention_forward(out, probs, q, k, v, B, S, H);
  Tensor dq = nans({B * S, D}, dt), dk = nans({B * S, D}, dt), dv = nans({B * S, D}, dt);
  be->attention_backward(dq, dk, dv, tensor({B * S, D}, dt, w), q, k, v, probs, B, S, H);
  expect_grad(be->read(dq), numeric_grad(q0, [&](const Vec& x) { return loss(x, k0, v0); }), "dq");
  expect_grad(be->read(dk), numeric_grad(k0, [&](const Vec& x) { return loss(q0, x, v0); }), "dk");
  expect_grad(be->read(dv), numeric_grad(v0, [&](const Vec& x) { return loss(q0, k0, x); }), "dv");
}

// ---- SwiGLU ---------------------------------------------------------------------------------
TEST_F(CpuBackendTest, SwigluForwardBackward) {
  const Vec a = randn_f32(12, 21, 3.0), b = randn_f32(12, 22), w = randn_f32(12, 23);
  Vec expected(12), expected_da(12), expected_db(12);
  for (int i = 0; i < 12; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-a[i]));
    expected[i] = a[i] * s * b[i];
    expected_db[i] = w[i] * a[i] * s;
    expected_da[i] = w[i] * b[i] * (s + a[i] * s * (1 - s));
  }
  for (DType dt : kFloatTypes) {
    Tensor at = tensor({3, 4}, dt, a), bt = tensor({3, 4}, dt, b);
    Tensor out = nans({3, 4}, dt), da = nans({3, 4}, dt), db = nans({3, 4}, dt);
    be->swiglu_forward(out, at, bt);
    expect_close(be->read(out), expected, tolerance(dt), "swiglu");
    be->swiglu_backward(da, db, tensor({3, 4}, dt, w), at, bt);
    expect_close(be->read(da), expected_da, tolerance(dt), "swiglu da");
    expect_close(be->read(db), expected_db, tolerance(dt), "swiglu db");
    // In place with the product rebuilt (training's form): da over a, db over b, hidden over
    // dout, bitwise the out-of-place results and the forward's output.
    Tensor a_io = tensor({3, 4}, dt, a), b_io = tensor({3, 4}, dt, b), d_io = tensor({3, 4}, dt, w);
    be->swiglu_backward(a_io, b_io, d_io, a_io, b_io, d_io);
    EXPECT_EQ(be->read(d_io), be->read(out)) << "swiglu hidden rebuilt " << dtype_name(dt);
    EXPECT_EQ(be->read(a_io), be->read(da)) << "swiglu da in place " << dtype_name(dt);
    EXPECT_EQ(be->read(b_io), be->read(db)) << "swiglu db in place " << dtype_name(dt);
  }
  // Finite differences in f64.
  const DType dt = DType::f64;
  auto loss = [&](const Vec& av, const Vec& bv) {
    Tensor out = be->alloc({3, 4}, dt);
    be->swiglu_forward(out, tensor({3, 4}, dt, av), tensor({3, 4}, dt, bv));
    return dot(w, be->read(out));
  };
  Tensor da = be->alloc({3, 4}, dt), db = be->alloc({3, 4}, dt);
  be->swiglu_backward(da, db, tensor({3, 4}, dt, w), tensor({3, 4}, dt, a), tensor({3, 4}, dt, b));
  expect_grad(be->read(da), numeric_grad(a, [&](const Vec& x) { return loss(x, b); }), "swiglu da fd");
  expect_grad(be->read(db), numeric_grad(b, [&](const Vec& x) { return loss(a, x); }), "swiglu db fd");
}

// ---- cross-entropy --------------------------------------------------------------------------
TEST_F(CpuBackendTest, CrossEntropyValuesAndGrads) {
  const int64_t N = 5, V = 9;
  const Vec logits = randn_f32(N * V, 24, 4.0);
  const std::vector<int32_t> targets{0, 8, 3, 3, 5};
  const double grad_scale = 0.25;
  Vec expected_loss(N), expected_grad(N * V);
  for (int64_t t = 0; t < N; ++t) {
    double m = -1e300, sum = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, logits[t * V + j]);
    for (int64_t j = 0; j < V; ++j) sum += std::exp(logits[t * V + j] - m);
    const double lse = m + std::log(sum);
    expected_loss[t] = lse - logits[t * V + targets[t]];
    for (int64_t j = 0; j < V; ++j)
      expected_grad[t * V + j] = (std::exp(logits[t * V + j] - lse) - (j == targets[t])) * grad_scale;
  }
  for (DType dt : kFloatTypes) {
    Tensor lg = tensor({N, V}, dt, logits), losses = nans({N}, dt);
    be->cross_entropy(losses, lg, index({N}, targets), false, grad_scale);
    expect_close(be->read(losses), expected_loss, tolerance(dt), "ce loss");
    EXPECT_EQ(be->read(lg), logits);  // untouched without compute_grad
    be->fill(losses, std::numeric_limits<double>::quiet_NaN());
    be->cross_entropy(losses, lg, index({N}, targets), true, grad_scale);
    expect_close(be->read(losses), expected_loss, tolerance(dt), "ce loss (grad)");
    expect_close(be->read(lg), expected_grad, tolerance(dt), "ce grad");
  }
  EXPECT_THROW(be->cross_entropy(be->alloc({N}, DType::f32), tensor({N, V}, DType::f32, logits),
                                 index({N}, {0, 1, 9, 2, 3}), false, 1.0),
               std::runtime_error);
  EXPECT_THROW(be->cross_entropy(be->alloc({N}, DType::f32), tensor({N, V}, DType::f32, logits),
                                 index({N}, {0, 1, -2, 2, 3}), false, 1.0),
               std::runtime_error);
  // Large logits stay finite (stable logsumexp).
  Tensor big = tensor({1, 3}, DType::f32, {1000, 0, -1000}), loss = be->alloc({1}, DType::f32);
  be->cross_entropy(loss, big, index({1}, {1}), false, 1.0);
  EXPECT_NEAR(be->read(loss)[0], 1000.0, 1e-3);
}

// kIgnoreTarget rows: loss 0 and a zero gradient row exactly; the other rows are bitwise those of
// a call where every target counts.
TEST_F(CpuBackendTest, CrossEntropyIgnoredTargets) {
  const int64_t N = 5, V = 9;
  const Vec logits = randn_f32(N * V, 26, 4.0);
  const std::vector<int32_t> counted{0, 8, 3, 3, 5},
      ignored{kIgnoreTarget, 8, kIgnoreTarget, 3, kIgnoreTarget};
  for (DType dt : kFloatTypes)
    for (bool grad : {false, true}) {
      Tensor all = tensor({N, V}, dt, logits), some = tensor({N, V}, dt, logits);
      Tensor all_losses = nans({N}, dt), some_losses = nans({N}, dt);
      be->cross_entropy(all_losses, all, index({N}, counted), grad, 0.25);
      be->cross_entropy(some_losses, some, index({N}, ignored), grad, 0.25);
      const Vec all_loss = be->read(all_losses), some_loss = be->read(some_losses);
      const Vec all_rows = be->read(all), some_rows = be->read(some);
      for (int64_t t = 0; t < N; ++t) {
        const bool skip = ignored[t] == kIgnoreTarget;
        EXPECT_EQ(some_loss[t], skip ? 0.0 : all_loss[t]) << "row " << t;
        for (int64_t j = 0; j < V; ++j)
          EXPECT_EQ(some_rows[t * V + j], skip && grad ? 0.0 : all_rows[t * V + j])
              << "row " << t << " column " << j << (grad ? " (grad)" : "");
      }
    }
}

TEST_F(CpuBackendTest, CrossEntropyFiniteDifference) {
  const DType dt = DType::f64;
  const int64_t N = 3, V = 5;
  const Vec logits0 = randn(N * V, 25, 2.0);
  const std::vector<int32_t> targets{4, 0, 2};
  const double grad_scale = 1.0 / N;
  auto loss = [&](const Vec& l) {
    Tensor losses = be->alloc({N}, dt);
    be->cross_entropy(losses, tensor({N, V}, dt, l), index({N}, targets), false, 1.0);
    const Vec v = be->read(losses);
    return grad_scale * std::accumulate(v.begin(), v.end(), 0.0);
  };
  Tensor lg = tensor({N, V}, dt, logits0), losses = be->alloc({N}, dt);
  be->cross_entropy(losses, lg, index({N}, targets), true, grad_scale);
  expect_grad(be->read(lg), numeric_grad(logits0, loss), "ce dlogits");
}

// ---- router backward (finite differences through the whole router path) --------------------
// loss(logits) = sum(w .* gates) + d_aux * aux + d_z * z, for softmax and sigmoid scores, and
// with the aux loss's f_e from this group's choices or from counts given from outside (global
// scope).
TEST_F(CpuBackendTest, RouterBackwardFiniteDifference) {
  const DType dt = DType::f64;
  const int64_t N = 6, E = 5;
  // Logits whose top-K is well separated: a random permutation of 0, 0.5, 1, ... plus noise.
  std::mt19937_64 gen(26);
  Vec logits0(N * E);
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    for (int64_t e = 0; e < E; ++e) logits0[t * E + e] = 0.5 * perm[e] + 0.01 * randn(1, 100 + t * E + e)[0];
  }
  const double d_aux = 0.7, d_z = 0.3;
  Tensor foreign_counts = index({E}, {7, 0, 3, 12, 2});
  for (RouterScore score : {RouterScore::softmax, RouterScore::sigmoid})
    for (bool foreign : {false, true})
      for (int64_t K : {1, 2, 3})
        for (bool normalize : {false, true}) {
          const std::string what = std::string(score == RouterScore::sigmoid ? "sigmoid" : "softmax") +
                                   " K=" + std::to_string(K) + (normalize ? " normalized" : "") +
                                   (foreign ? " foreign counts" : "");
          RoutingRule rule;
          rule.top_k = K;
          rule.score = score;
          rule.normalize = normalize;
          const Vec w = randn(N * K, 27 + K);
          Tensor scores = be->alloc({N, E}, dt), lse = be->alloc({N}, dt);
          Tensor idx = be->alloc({N, K}, DType::i32), gates = be->alloc({N, K}, dt);
          Tensor slot_row = be->alloc({N * K}, DType::i32);
          Tensor slot_expert = be->alloc({N * K}, DType::i32);
          Tensor assignments = be->alloc({E}, DType::i32);
          Tensor logits = be->alloc({N, E}, dt);
          std::vector<int32_t> selected;
          auto forward = [&](const Vec& l) {
            be->write(logits, std::span<const double>(l));
            be->router_scores_topk(scores, lse, idx, gates, logits, Tensor(), rule);
            if (selected.empty()) selected = be->read_i32(idx);
            EXPECT_EQ(be->read_i32(idx), selected) << what << ": a perturbation changed the top-K";
            be->router_plan(slot_row, slot_expert, assignments, idx, gates, logits, Tensor(), rule);
            const RouterLossValues losses =
                be->router_losses(scores, lse, foreign ? foreign_counts : assignments, rule);
            return dot(w, be->read(gates)) + d_aux * losses.aux + d_z * losses.z;
          };
          forward(logits0);
          Tensor dlogits = nans({N, E}, dt);
          be->router_backward(dlogits, tensor({N, K}, dt, w), scores, lse, logits, idx,
                              foreign ? foreign_counts : assignments, rule, d_aux, d_z);
          const Vec numeric = numeric_grad(logits0, forward);
          expect_grad(be->read(dlogits), numeric, "router dlogits " + what);
        }
}

// ---- permute / unpermute --------------------------------------------------------------------
TEST_F(CpuBackendTest, PermuteUnpermuteMatchNaive) {
  const int64_t N = 6, E = 3, K = 2, D = 4;
  // Expert choices per token; expert 0 is popular, so capacity 3 drops some assignments.
  const std::vector<int32_t> choice{0, 1, 0, 2, 1, 0, 0, 2, 0, 1, 2, 0};
  Tensor idx = index({N, K}, choice);
  Tensor slot_row = be->alloc({N * K}, DType::i32), slot_expert = be->alloc({N * K}, DType::i32);
  Tensor assignments = be->alloc({E}, DType::i32);
  RoutingRule rule;
  rule.top_k = K;
  rule.capacity = 3;
  const std::vector<int64_t> kept =
      be->router_plan(slot_row, slot_expert, assignments, idx, be->zeros({N, K}, DType::f32),
                      be->zeros({N, E}, DType::f32), Tensor(), rule)
          .tokens_per_expert;
  const int64_t R = std::accumulate(kept.begin(), kept.end(), int64_t{0});
  ASSERT_LT(R, N * K);  // something dropped
  const std::vector<int32_t> sr = be->read_i32(slot_row);

  const Vec x = randn_f32(N * D, 30), y = randn_f32(R * D, 31), gates = randn_f32(N * K, 32);
  const Vec dout = randn_f32(N * D, 33), dxp = randn_f32(R * D, 34);
  Vec x_perm(R * D, 0.0), dx(N * D, 0.0), out(N * D, 0.0), dy(R * D, 0.0), dgates(N * K, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = sr[t * K + k];
      if (r < 0) continue;
      for (int64_t j = 0; j < D; ++j) {
        x_perm[r * D + j] = x[t * D + j];
        dx[t * D + j] += dxp[r * D + j];
        out[t * D + j] += gates[t * K + k] * y[r * D + j];
        dy[r * D + j] = gates[t * K + k] * dout[t * D + j];
        dgates[t * K + k] += dout[t * D + j] * y[r * D + j];
      }
    }
  for (DType dt : kFloatTypes) {
    Tensor xp = nans({R, D}, dt);
    be->permute_rows(xp, tensor({N, D}, dt, x), slot_row, K);
    expect_close(be->read(xp), x_perm, tolerance(dt), "permute_rows");
    Tensor dxt = nans({N, D}, dt);
    be->permute_rows_backward(dxt, tensor({R, D}, dt, dxp), slot_row, K);
    expect_close(be->read(dxt), dx, tolerance(dt), "permute_rows_backward");
    Tensor o = nans({N, D}, dt);
    be->unpermute_combine(o, tensor({R, D}, dt, y), tensor({N, K}, dt, gates), slot_row);
    expect_close(be->read(o), out, tolerance(dt), "unpermute_combine");
    Tensor dyt = nans({R, D}, dt), dg = nans({N, K}, dt);
    be->unpermute_combine_backward(dyt, dg, tensor({N, D}, dt, dout), tensor({R, D}, dt, y),
                                   tensor({N, K}, dt, gates), slot_row);
    expect_close(be->read(dyt), dy, tolerance(dt), "unpermute_combine_backward dy");
    expect_close(be->read(dg), dgates, tolerance(dt), "unpermute_combine_backward dgates");
  }
  EXPECT_THROW(be->permute_rows(be->alloc({R, D}, DType::f32), be->alloc({N, D}, DType::f32),
                                be->zeros({N * K + 1}, DType::i32), K),
               std::runtime_error);
  // A slot that names a row past x_perm is an error, not a write out of bounds.
  EXPECT_THROW(be->permute_rows(be->alloc({R - 1, D}, DType::f32), be->alloc({N, D}, DType::f32),
                                slot_row, K),
               std::runtime_error);
  // The combine's backward writes every row of dy_perm: one that no kept assignment names is an
  // error, not a row left as it was.
  EXPECT_THROW(be->unpermute_combine_backward(
                   be->alloc({R + 1, D}, DType::f32), be->alloc({N, K}, DType::f32),
                   be->alloc({N, D}, DType::f32), be->alloc({R + 1, D}, DType::f32),
                   be->alloc({N, K}, DType::f32), slot_row),
               std::runtime_error);
}

// ---- optimizers -----------------------------------------------------------------------------
TEST_F(CpuBackendTest, AdamwMatchesTorchFormula) {
  const int64_t n = 10;
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8;
  for (double wd : {0.0, 0.1})
    for (DType dt : kFloatTypes) {
      const Vec p0 = randn_f32(n, 40);
      Vec p = p0, m(n, 0.0), v(n, 0.0);
      Tensor pt = tensor({2, 5}, dt, p0), mt = be->zeros({2, 5}, dt), vt = be->zeros({2, 5}, dt);
      for (int64_t step = 1; step <= 3; ++step) {
        const Vec g = randn_f32(n, 40 + step, step == 2 ? 1e-3 : 1.0);
        be->adamw_update(pt, tensor({2, 5}, dt, g), mt, vt, lr, b1, b2, eps, wd, step);
        const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
        for (int64_t i = 0; i < n; ++i) {
          p[i] *= 1 - lr * wd;
          m[i] = b1 * m[i] + (1 - b1) * g[i];
          v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
          const double denom = std::sqrt(v[i]) / std::sqrt(bc2) + eps;
          p[i] -= (lr / bc1) * m[i] / denom;
        }
        const double rtol = dt == DType::f32 ? 1e-6 : 1e-14;
        expect_close(be->read(pt), p, rtol, "adamw param step " + std::to_string(step));
        expect_close(be->read(mt), m, rtol, "adamw exp_avg");
        expect_close(be->read(vt), v, rtol, "adamw exp_avg_sq");
      }
    }
}

TEST_F(CpuBackendTest, Sgd) {
  for (DType dt : kFloatTypes) {
    Tensor p = tensor({3}, dt, {1, 2, 3});
    be->sgd_update(p, tensor({3}, dt, {1, -2, 0.5}), 0.5);
    EXPECT_EQ(be->read(p), (Vec{0.5, 3, 2.75}));
  }
}

}  // namespace
}  // namespace sy
