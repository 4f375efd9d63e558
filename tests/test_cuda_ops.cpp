// Every op of the CUDA backend, forward and backward, against the CPU reference on fresh random
// inputs, in f32 and bf16 (the router and the optimizer in f32, as they run in training).
// Outputs are poisoned (NaN, or -7777 for indices) before each run, so that an element the
// device did not write fails. Errors are relative L2 norms ||gpu - cpu|| / ||cpu||; for bf16 the
// CPU gets the same bf16-rounded inputs in f32, so the error measures the op's own arithmetic
// and the rounding of its bf16 outputs. The tolerances are documented in docs/cuda.md.
// Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/rng.h"
#include "tests/cuda_test_util.h"

namespace sy {
namespace {

using test::bf16_round;
using test::kNaN;
using test::rel_error;

// Tolerances on the relative L2 error, per op, for f32 and for bf16 data (docs/cuda.md).
struct Tol {
  double f32, bf16;
};

class CudaTest : public test::CpuGpuTest {
 protected:
  // Fresh normal values, as `dtype` holds them (bf16-rounded for bf16).
  static std::vector<double> values(int64_t n, DType dtype, double scale = 1.0) {
    CounterRng rng(next_seed_++);
    std::vector<double> v(n);
    for (double& x : v) {
      x = scale * rng.normal();
      if (dtype == DType::bf16) x = bf16_round(x);
      else if (dtype == DType::f32) x = static_cast<float>(x);
    }
    return v;
  }

  Tensor ints_cpu(const std::vector<int32_t>& v) {
    Tensor t = cpu().alloc({static_cast<int64_t>(v.size())}, DType::i32);
    cpu().write(t, std::span<const int32_t>(v));
    return t;
  }
  Tensor ints_gpu(const std::vector<int32_t>& v) {
    Tensor t = gpu().alloc({static_cast<int64_t>(v.size())}, DType::i32);
    gpu().write(t, std::span<const int32_t>(v));
    return t;
  }
  void expect_close(const Tensor& g, const Tensor& c, double tol, const std::string& what,
                    DType dtype) {
    const double e = rel_error(gpu().read(g), cpu().read(c));
    std::printf("[ rel err  ] %-44s %-5s %.3e (tol %.1e)\n", what.c_str(), dtype_name(dtype), e,
                tol);
    EXPECT_LE(e, tol) << what << " in " << dtype_name(dtype);
  }
  void expect_close(const Tensor& g, const Tensor& c, Tol tol, const std::string& what,
                    DType dtype) {
    expect_close(g, c, dtype == DType::bf16 ? tol.bf16 : tol.f32, what, dtype);
  }
  void expect_bitwise(const Tensor& a, const Tensor& b, const std::string& what) {
    const std::vector<double> x = gpu().read(a), y = gpu().read(b);
    ASSERT_EQ(x.size(), y.size()) << what;
    int64_t differ = 0, first = -1;
    for (size_t i = 0; i < x.size(); ++i)
      if (std::memcmp(&x[i], &y[i], sizeof(double)) != 0 && differ++ == 0) first = int64_t(i);
    EXPECT_EQ(differ, 0) << what << ": " << differ << " elements differ, first at " << first << " ("
                         << x[first < 0 ? 0 : first] << " vs " << y[first < 0 ? 0 : first] << ")";
  }
  void expect_equal_ints(const Tensor& g, const Tensor& c, int64_t n, const std::string& what) {
    const std::vector<int32_t> a = gpu().read_i32(g), b = cpu().read_i32(c);
    ASSERT_GE(static_cast<int64_t>(a.size()), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a[i], b[i]) << what << "[" << i << "]";
  }

  static inline uint64_t next_seed_ = 0xC0DA'0000;
};

class CudaOps : public CudaTest, public ::testing::WithParamInterface<DType> {
 protected:
  DType dt() const { return GetParam(); }
  DType st() const { return stat_dtype(GetParam()); }
};

// ---- memory ---------------------------------------------------------------------------------
TEST_P(CudaOps, FillWriteReadCopy) {
  const int64_t n = 1001;
  Tensor x = poisoned({n}, dt());
  for (double v : gpu().read(x)) ASSERT_TRUE(std::isnan(v));
  gpu().fill(x, 1.5);
  for (double v : gpu().read(x)) ASSERT_EQ(v, 1.5);
  const std::vector<double> v = values(n, DType::f32);
  gpu().write(x, std::span<const double>(v));
  const std::vector<double> back = gpu().read(x);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(back[i], dt() == DType::bf16 ? bf16_round(v[i]) : static_cast<float>(v[i])) << i;
  // Converting copies in both directions, and a same-dtype copy.
  Tensor wide = poisoned({n}, DType::f64), again = poisoned({n}, dt());
  gpu().copy(wide, x);
  gpu().copy(again, wide);
  EXPECT_EQ(gpu().read(again), back);
  Tensor f32 = gpu().alloc({n}, DType::f32);
  gpu().write(f32, std::span<const double>(v));
  Tensor narrow = poisoned({n}, dt());
  gpu().copy(narrow, f32);
  EXPECT_EQ(gpu().read(narrow), back);
  // Integers, raw bytes.
  std::vector<int32_t> ints(n);
  std::iota(ints.begin(), ints.end(), -500);
  Tensor idx = poisoned({n}, DType::i32);
  gpu().write(idx, std::span<const int32_t>(ints));
  EXPECT_EQ(gpu().read_i32(idx), ints);
  std::vector<char> bytes(x.nbytes());
  gpu().copy_to_host(bytes.data(), x);
  Tensor y = poisoned({n}, dt());
  gpu().copy_from_host(y, bytes.data());
  EXPECT_EQ(gpu().read(y), back);
}

TEST_P(CudaOps, AddScaleSumSquares) {
  const int64_t n = 3000;
  const std::vector<double> a = values(n, dt()), b = values(n, dt());
  Tensor yc = on_cpu({n}, a), xc = on_cpu({n}, b);
  Tensor yg = on_gpu({n}, a, dt()), xg = on_gpu({n}, b, dt());
  cpu().add(yc, xc, -0.75);
  gpu().add(yg, xg, -0.75);
  expect_close(yg, yc, Tol{1e-6, 4e-3}, "add", dt());
  cpu().scale(yc, 1.3);
  gpu().scale(yg, 1.3);
  expect_close(yg, yc, Tol{1e-6, 4e-3}, "scale", dt());
  // Mixed: data += f32 (the router's input gradient into a bf16 du).
  const std::vector<double> c = values(n, DType::f32);
  Tensor xw = on_gpu({n}, c, DType::f32), zc = on_cpu({n}, a), zg = on_gpu({n}, a, dt());
  cpu().add(zc, on_cpu({n}, c), 0.5);
  gpu().add(zg, xw, 0.5);
  expect_close(zg, zc, Tol{1e-6, 4e-3}, "add (data += f32)", dt());
  // Sums of squares accumulate in double: the same values give the same sum to rounding.
  const double sc = cpu().sum_squares(on_cpu({n}, a)), sg = gpu().sum_squares(on_gpu({n}, a, dt()));
  EXPECT_NEAR(sg, sc, 1e-12 * sc);
  std::vector<Tensor> many{on_gpu({n}, a, dt()), on_gpu({7}, values(7, dt()), dt()),
                           gpu().zeros({0}, dt())};
  std::vector<double> sums(3);
  gpu().sum_squares_many(many, sums);
  EXPECT_NEAR(sums[0], sc, 1e-12 * sc);
  EXPECT_NEAR(sums[1], gpu().sum_squares(many[1]), 1e-12 * sums[1]);
  EXPECT_EQ(sums[2], 0.0);
}

// ---- GEMM -----------------------------------------------------------------------------------
TEST_P(CudaOps, Gemm) {
  const int64_t M = 37, N = 53, K = 29;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const Shape sa = ta ? Shape{K, M} : Shape{M, K}, sb = tb ? Shape{N, K} : Shape{K, N};
      const std::vector<double> a = values(M * K, dt()), b = values(K * N, dt());
      const std::vector<double> c0 = values(M * N, dt());
      const std::string name = std::string("gemm ") + (ta ? "T" : "N") + (tb ? "T" : "N");
      Tensor ac = on_cpu(sa, a), bc = on_cpu(sb, b), ag = on_gpu(sa, a, dt()), bg = on_gpu(sb, b, dt());
      // beta != 0: C is read.
      Tensor cc = on_cpu({M, N}, c0), cg = on_gpu({M, N}, c0, dt());
      cpu().gemm(cc, ac, ta, bc, tb, 0.7, 0.3);
      gpu().gemm(cg, ag, ta, bg, tb, 0.7, 0.3);
      expect_close(cg, cc, Tol{1e-6, 4e-3}, name + " beta 0.3", dt());
      // beta = 0: C is not read (poisoned).
      Tensor cc0 = cpu().alloc({M, N}, DType::f32), cg0 = poisoned({M, N}, dt());
      cpu().gemm(cc0, ac, ta, bc, tb, 1.0, 0.0);
      gpu().gemm(cg0, ag, ta, bg, tb, 1.0, 0.0);
      expect_close(cg0, cc0, Tol{1e-6, 4e-3}, name + " beta 0", dt());
      if (dt() == DType::bf16) {  // bf16 inputs, fp32 C accumulating (parameter gradients)
        Tensor cw = on_gpu({M, N}, c0, DType::f32);
        gpu().gemm(cw, ag, ta, bg, tb, 0.7, 0.3);
        expect_close(cw, cc, 1e-6, name + " bf16 -> f32 C", dt());
      }
    }
  }
  // K = 0 with beta 0 clears C, NaN included.
  Tensor c = poisoned({3, 4}, dt());
  gpu().gemm(c, gpu().alloc({3, 0}, dt()), false, gpu().alloc({0, 4}, dt()), false, 1.0, 0.0);
  for (double v : gpu().read(c)) EXPECT_EQ(v, 0.0);
}

TEST_F(CudaTest, ErrorsNameTheOpRankAndDevice) {
  Tensor a = gpu().alloc({3, 4}, DType::f32), b = gpu().alloc({5, 6}, DType::f32);
  Tensor c = gpu().alloc({3, 6}, DType::f32);
  try {
    gpu().gemm(c, a, false, b, false, 1.0, 0.0);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda gemm (rank "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("device 0)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gpu().add(c, cpu().alloc({3, 6}, DType::f32), 1.0), std::runtime_error);
}

// ---- embedding, RMSNorm, rotary, attention, SwiGLU ------------------------------------------
TEST_P(CudaOps, Embedding) {
  const int64_t V = 20, D = 24, N = 50;
  std::vector<int32_t> tokens(N);
  for (int64_t t = 0; t < N; ++t) tokens[t] = static_cast<int32_t>((t * 7 + t * t) % V);
  const std::vector<double> table = values(V * D, dt());
  Tensor oc = cpu().alloc({N, D}, DType::f32), og = poisoned({N, D}, dt());
  cpu().embedding_forward(oc, ints_cpu(tokens), on_cpu({V, D}, table));
  gpu().embedding_forward(og, ints_gpu(tokens), on_gpu({V, D}, table, dt()));
  expect_close(og, oc, Tol{0, 0}, "embedding_forward", dt());
  // The table gradient is a master-side (stat) tensor; repeated tokens accumulate.
  const std::vector<double> g0 = values(V * D, st()), dout = values(N * D, dt());
  Tensor gc = on_cpu({V, D}, g0), gg = on_gpu({V, D}, g0, st());
  cpu().embedding_backward(gc, on_cpu({N, D}, dout), ints_cpu(tokens));
  gpu().embedding_backward(gg, on_gpu({N, D}, dout, dt()), ints_gpu(tokens));
  expect_close(gg, gc, Tol{1e-6, 1e-6}, "embedding_backward", dt());
}

// The table gradient without atomics (embedding.cu): each element is the sum of its positions'
// rows in position order, as on the CPU, so it must equal the CPU's bit for bit and repeat
// exactly. Heavy repetition: 60% of the positions hit one row, and token ids reach the top of a
// vocabulary that needs a multi-pass sort; D crosses a tile of columns. The initial gradient is
// random (it accumulates) and rows no position hits must keep it.
TEST_P(CudaOps, EmbeddingBackwardIsExactAndRepeatable) {
  struct Size {
    int64_t V, D, N;
  };
  for (const Size size : {Size{300, 200, 5000}, Size{70001, 72, 20000}, Size{256, 768, 32768}}) {
    const int64_t V = size.V, D = size.D, N = size.N;
    CounterRng rng(next_seed_++);
    std::vector<int32_t> tokens(N);
    for (int64_t t = 0; t < N; ++t) {
      const double u = std::abs(rng.normal());
      tokens[t] = u < 0.84 ? 3 : static_cast<int32_t>(std::min<double>(V - 1, (u - 0.84) * V));
    }
    tokens[N / 2] = static_cast<int32_t>(V - 1);
    const std::vector<double> g0 = values(V * D, st()), dout = values(N * D, dt());
    Tensor gc = on_cpu({V, D}, g0);
    cpu().embedding_backward(gc, on_cpu({N, D}, dout), ints_cpu(tokens));
    const std::vector<double> want = cpu().read(gc);
    Tensor dout_gpu = on_gpu({N, D}, dout, dt()), tokens_gpu = ints_gpu(tokens);
    std::vector<double> first;
    for (int repeat = 0; repeat < 2; ++repeat) {
      Tensor gg = on_gpu({V, D}, g0, st());
      gpu().synchronize();
      const auto start = std::chrono::steady_clock::now();
      gpu().embedding_backward(gg, dout_gpu, tokens_gpu);
      gpu().synchronize();
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      const std::vector<double> got = gpu().read(gg);
      int64_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += !(got[i] == want[i]);
      std::printf("[ embed    ] backward %-5s V=%lld D=%lld N=%lld (%.0f%% on one row): %lld of "
                  "%zu elements differ from the cpu; %.3f ms (run %d)\n",
                  dtype_name(dt()), static_cast<long long>(V), static_cast<long long>(D),
                  static_cast<long long>(N),
                  100.0 * std::count(tokens.begin(), tokens.end(), 3) / N,
                  static_cast<long long>(differ), got.size(), ms, repeat + 1);
      EXPECT_LE(rel_error(got, want), 1e-6) << "embedding_backward V=" << V;  // docs/cuda.md
      EXPECT_EQ(differ, 0) << "embedding_backward V=" << V << ": not the cpu's sums bit for bit";
      if (repeat == 0) first = got;
      else EXPECT_TRUE(std::memcmp(first.data(), got.data(), got.size() * sizeof(double)) == 0)
          << "embedding_backward V=" << V << ": two runs differ";
    }
  }
}

TEST_P(CudaOps, RMSNorm) {
  const int64_t N = 137, D = 96;
  const std::vector<double> x = values(N * D, dt(), 2.0), dout = values(N * D, dt());
  std::vector<double> gain = values(D, st(), 0.1), dg0 = values(D, st());
  for (double& g : gain) g += 1.0;
  Tensor xc = on_cpu({N, D}, x), xg = on_gpu({N, D}, x, dt());
  Tensor gc = on_cpu({D}, gain), gg = on_gpu({D}, gain, st());
  Tensor oc = cpu().alloc({N, D}, DType::f32), rc = cpu().alloc({N}, DType::f32);
  Tensor og = poisoned({N, D}, dt()), rg = poisoned({N}, st());
  cpu().rmsnorm_forward(oc, rc, xc, gc);
  gpu().rmsnorm_forward(og, rg, xg, gg);
  expect_close(og, oc, Tol{1e-6, 4e-3}, "rmsnorm_forward out", dt());
  expect_close(rg, rc, Tol{1e-6, 1e-6}, "rmsnorm_forward rstd", dt());
  Tensor dxc = cpu().alloc({N, D}, DType::f32), dxg = poisoned({N, D}, dt());
  Tensor dgc = on_cpu({D}, dg0), dgg = on_gpu({D}, dg0, st());
  cpu().rmsnorm_backward(dxc, dgc, on_cpu({N, D}, dout), xc, gc, rc);
  gpu().rmsnorm_backward(dxg, dgg, on_gpu({N, D}, dout, dt()), xg, gg, rg);
  expect_close(dxg, dxc, Tol{1e-5, 4e-3}, "rmsnorm_backward dx", dt());
  expect_close(dgg, dgc, Tol{1e-5, 1e-5}, "rmsnorm_backward dgain", dt());
  // model.norm_eps: another epsilon, on rows small enough to feel it.
  std::vector<double> small = x;
  for (double& v : small) v *= 1e-3;
  // The CPU reads the values the device holds (bf16: rounded), so that rstd compares the norms.
  Tensor sg = on_gpu({N, D}, small, dt()), sc = on_cpu({N, D}, gpu().read(sg));
  cpu().rmsnorm_forward(oc, rc, sc, gc, 1e-6);
  gpu().rmsnorm_forward(og, rg, sg, gg, 1e-6);
  expect_close(og, oc, Tol{1e-6, 4e-3}, "rmsnorm_forward out eps 1e-6", dt());
  expect_close(rg, rc, Tol{1e-6, 1e-6}, "rmsnorm_forward rstd eps 1e-6", dt());
}

TEST_P(CudaOps, Rope) {
  const int64_t B = 2, S = 19, H = 3, Dh = 8, T = B * S, D = H * Dh;
  const std::vector<double> x = values(T * D, dt());
  Tensor xc = on_cpu({T, D}, x), xg = on_gpu({T, D}, x, dt());
  cpu().rope_forward(xc, B, S, H);
  gpu().rope_forward(xg, B, S, H);
  expect_close(xg, xc, Tol{1e-6, 4e-3}, "rope_forward", dt());
  const std::vector<double> d = values(T * D, dt());
  Tensor dc = on_cpu({T, D}, d), dg = on_gpu({T, D}, d, dt());
  cpu().rope_backward(dc, B, S, H);
  gpu().rope_backward(dg, B, S, H);
  expect_close(dg, dc, Tol{1e-6, 4e-3}, "rope_backward", dt());
  // model.rope_theta: another base, its own tables.
  Tensor tc = on_cpu({T, D}, x), tg = on_gpu({T, D}, x, dt());
  cpu().rope_forward(tc, B, S, H, 5e5);
  gpu().rope_forward(tg, B, S, H, 5e5);
  expect_close(tg, tc, Tol{1e-6, 4e-3}, "rope_forward theta 5e5", dt());
  // model.rope_scaling llama3 (at Dh 8 and L 16, pair 0 blended, the others divided): its tables.
  Rotary llama3(5e5);
  llama3.scaling = RopeScaling::llama3;
  llama3.factor = 8.0;
  llama3.original_max_position = 16;
  Tensor lc = on_cpu({T, D}, x), lg = on_gpu({T, D}, x, dt());
  cpu().rope_forward(lc, B, S, H, llama3);
  gpu().rope_forward(lg, B, S, H, llama3);
  expect_close(lg, lc, Tol{1e-6, 4e-3}, "rope_forward llama3", dt());
}

// Grouped-query heads: the repeat is a copy (exact), its backward a sum over each group; the
// outputs are poisoned first, so an element left unwritten shows.
TEST_P(CudaOps, RepeatKvHeads) {
  const int64_t T = 37, kv_heads = 3, G = 4, Dh = 8, kv_width = kv_heads * Dh, D = kv_width * G;
  const std::vector<double> x = values(T * kv_width, dt());
  Tensor xc = on_cpu({T, kv_width}, x, DType::f64), xg = on_gpu({T, kv_width}, x, dt());
  Tensor outc = cpu().alloc({T, D}, DType::f64), outg = gpu().alloc({T, D}, dt());
  gpu().fill(outg, kNaN);
  cpu().repeat_kv_heads(outc, xc, kv_heads);
  gpu().repeat_kv_heads(outg, xg, kv_heads);
  expect_close(outg, outc, Tol{0.0, 0.0}, "repeat_kv_heads", dt());
  const std::vector<double> d = values(T * D, dt());
  Tensor dc = on_cpu({T, D}, d, DType::f64), dg = on_gpu({T, D}, d, dt());
  Tensor dxc = cpu().alloc({T, kv_width}, DType::f64), dxg = gpu().alloc({T, kv_width}, dt());
  gpu().fill(dxg, kNaN);
  cpu().repeat_kv_heads_backward(dxc, dc, kv_heads);
  gpu().repeat_kv_heads_backward(dxg, dg, kv_heads);
  expect_close(dxg, dxc, Tol{1e-6, 4e-3}, "repeat_kv_heads_backward", dt());
}

TEST_P(CudaOps, Attention) {
  const int64_t B = 2, S = 45, H = 2, Dh = 16, T = B * S, D = H * Dh;
  const std::vector<double> q = values(T * D, dt()), k = values(T * D, dt()), v = values(T * D, dt());
  Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k), vc = on_cpu({T, D}, v);
  Tensor qg = on_gpu({T, D}, q, dt()), kg = on_gpu({T, D}, k, dt()), vg = on_gpu({T, D}, v, dt());
  Tensor oc = cpu().alloc({T, D}, DType::f32), pc = cpu().alloc({B, H, S, S}, DType::f32);
  Tensor og = poisoned({T, D}, dt()), pg = poisoned({B, H, S, S}, dt());
  cpu().attention_forward(oc, pc, qc, kc, vc, B, S, H);
  gpu().attention_forward(og, pg, qg, kg, vg, B, S, H);
  expect_close(pg, pc, Tol{1e-6, 4e-3}, "attention_forward probs", dt());
  expect_close(og, oc, Tol{1e-6, 1e-2}, "attention_forward out", dt());
  const std::vector<double> dout = values(T * D, dt());
  Tensor dq = cpu().alloc({T, D}, DType::f32), dk = cpu().alloc({T, D}, DType::f32),
         dv = cpu().alloc({T, D}, DType::f32);
  Tensor dqg = poisoned({T, D}, dt()), dkg = poisoned({T, D}, dt()), dvg = poisoned({T, D}, dt());
  cpu().attention_backward(dq, dk, dv, on_cpu({T, D}, dout), qc, kc, vc, pc, B, S, H);
  gpu().attention_backward(dqg, dkg, dvg, on_gpu({T, D}, dout, dt()), qg, kg, vg, pg, B, S, H);
  expect_close(dqg, dq, Tol{1e-5, 2e-2}, "attention_backward dq", dt());
  expect_close(dkg, dk, Tol{1e-5, 2e-2}, "attention_backward dk", dt());
  expect_close(dvg, dv, Tol{1e-5, 1e-2}, "attention_backward dv", dt());
}

// Flash attention (flash_attention.cu) against the CPU flash reference, which matches the probs
// path to 1e-12 in f64 (test_flash_attention.cpp). bf16 with Dh 64 and 128 runs the tensor-core
// kernels (tiles of 128 queries or keys, streamed tiles of 64 or 32), so S covers one row, a
// tail inside one tile, exact tiles and tails after several; Dh 16 runs the plain kernel.
// Also: the causal mask (changing the k and v of tokens >= c leaves out and dq of tokens < c
// bitwise as they were) and determinism (a second backward gives the same bits).
TEST_P(CudaOps, FlashAttention) {
  const int64_t B = 2, H = 3;
  std::vector<std::pair<int64_t, int64_t>> cases;  // (Dh, S)
  for (int64_t Dh : {64, 128})
    for (int64_t S : {1, 7, 64, 100, 257, 1024}) cases.emplace_back(Dh, S);
  cases.emplace_back(16, 45);
  for (auto [Dh, S] : cases) {
    const std::string at = " Dh=" + std::to_string(Dh) + " S=" + std::to_string(S);
    SCOPED_TRACE(at);
    const int64_t T = B * S, D = H * Dh;
    const std::vector<double> q = values(T * D, dt()), k = values(T * D, dt()),
                              v = values(T * D, dt()), dout = values(T * D, dt());
    Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k), vc = on_cpu({T, D}, v);
    Tensor qg = on_gpu({T, D}, q, dt()), kg = on_gpu({T, D}, k, dt()), vg = on_gpu({T, D}, v, dt());
    Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
    Tensor og = poisoned({T, D}, dt()), lg = poisoned({B, H, S}, st());
    cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H);
    gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
    expect_close(og, oc, Tol{1e-6, 1e-2}, "flash_attention_forward out" + at, dt());
    expect_close(lg, lc, Tol{1e-6, 1e-5}, "flash_attention_forward lse" + at, dt());

    Tensor dq = cpu().alloc({T, D}, DType::f32), dk = cpu().alloc({T, D}, DType::f32),
           dv = cpu().alloc({T, D}, DType::f32);
    cpu().flash_attention_backward(dq, dk, dv, on_cpu({T, D}, dout), qc, kc, vc, oc, lc, B, S, H);
    Tensor doutg = on_gpu({T, D}, dout, dt());
    auto backward = [&](const Tensor& o, const Tensor& l, const Tensor& kk, const Tensor& vv) {
      std::array<Tensor, 3> grads{poisoned({T, D}, dt()), poisoned({T, D}, dt()),
                                  poisoned({T, D}, dt())};
      gpu().flash_attention_backward(grads[0], grads[1], grads[2], doutg, qg, kk, vv, o, l, B, S,
                                     H);
      return grads;
    };
    const auto grads = backward(og, lg, kg, vg);
    expect_close(grads[0], dq, Tol{1e-5, 2e-2}, "flash_attention_backward dq" + at, dt());
    expect_close(grads[1], dk, Tol{1e-5, 2e-2}, "flash_attention_backward dk" + at, dt());
    expect_close(grads[2], dv, Tol{1e-5, 1e-2}, "flash_attention_backward dv" + at, dt());

    const auto again = backward(og, lg, kg, vg);
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(gpu().read(again[i]), gpu().read(grads[i])) << "backward not repeatable, grad " << i;

    if (S < 2) continue;
    const std::vector<double> fresh_k = values(T * D, dt()), fresh_v = values(T * D, dt());
    expect_causal(qg, k, v, fresh_k, fresh_v, og, grads[0], B, S, H, backward);
  }
}

// Generation's ops: attention_decode (queries at positions p .. p+n-1 over a cache of L keys,
// those past p+n-1 poisoned: never read) against the rows p .. of the CPU's flash forward over
// the whole sequence, repeatable to the bit; rotary from first_position p against the CPU's
// rotary of the whole sequence, rows p .. (bf16: through the vector kernel at Dh 64 and 128).
TEST_P(CudaOps, AttentionDecode) {
  const int64_t H = 3;
  for (const int64_t Dh : {16, 64, 128})
    for (const auto [S, p, n] : {std::array<int64_t, 3>{9, 0, 9}, {40, 39, 1}, {700, 650, 3}}) {
      const std::string at =
          " Dh=" + std::to_string(Dh) + " S=" + std::to_string(S) + " p=" + std::to_string(p);
      SCOPED_TRACE(at);
      const int64_t D = H * Dh, L = S + 5;
      const std::vector<double> q = values(S * D, dt()), k = values(S * D, dt()),
                                v = values(S * D, dt());
      Tensor oc = cpu().alloc({S, D}, DType::f32), lc = cpu().alloc({1, H, S}, DType::f32);
      cpu().flash_attention_forward(oc, lc, on_cpu({S, D}, q), on_cpu({S, D}, k), on_cpu({S, D}, v),
                                    1, S, H);
      Tensor kg = poisoned({L, D}, dt()), vg = poisoned({L, D}, dt());
      gpu().copy(kg.rows(0, S), on_gpu({S, D}, k, dt()));
      gpu().copy(vg.rows(0, S), on_gpu({S, D}, v, dt()));
      const Tensor qg = on_gpu({S, D}, q, dt()).rows(p, p + n);
      Tensor og = poisoned({n, D}, dt()), again = poisoned({n, D}, dt());
      gpu().attention_decode(og, qg, kg, vg, H, p);
      expect_close(og, oc.rows(p, p + n), Tol{1e-6, 1e-2}, "attention_decode" + at, dt());
      gpu().attention_decode(again, qg, kg, vg, H, p);
      expect_bitwise(again, og, "attention_decode repeated" + at);

      const std::vector<double> x = values(S * D, dt());
      Tensor xc = on_cpu({S, D}, x);
      cpu().rope_forward(xc, 1, S, H, 5e5);
      Tensor xg = on_gpu({S, D}, x, dt()).rows(p, p + n),
             qk = on_gpu({S, D}, x, dt()).rows(p, p + n);
      Tensor kk = on_gpu({S, D}, x, dt()).rows(p, p + n);
      gpu().rope_forward(xg, 1, n, H, 5e5, {}, p);
      expect_close(xg, xc.rows(p, p + n), Tol{1e-6, 4e-3}, "rope_forward from p" + at, dt());
      gpu().rope_forward_qk(qk, kk, 1, n, H, 5e5, {}, p);
      expect_bitwise(qk, xg, "rope_forward_qk from p, q" + at);
      expect_bitwise(kk, xg, "rope_forward_qk from p, k" + at);
    }
}

TEST_F(CudaTest, FlashAttentionRejectsWideHeads) {
  const int64_t B = 1, S = 4, H = 1, D = 512;
  Tensor q = gpu().zeros({B * S, D}, DType::bf16), out = gpu().alloc({B * S, D}, DType::bf16);
  Tensor lse = gpu().alloc({B, H, S}, DType::f32);
  try {
    gpu().flash_attention_forward(out, lse, q, q, q, B, S, H);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("head width 512"), std::string::npos) << e.what();
  }
}

TEST_P(CudaOps, SwiGLU) {
  const int64_t n = 2049;
  const std::vector<double> a = values(n, dt(), 2.0), b = values(n, dt()), d = values(n, dt());
  Tensor ac = on_cpu({n}, a), bc = on_cpu({n}, b), ag = on_gpu({n}, a, dt()), bg = on_gpu({n}, b, dt());
  Tensor oc = cpu().alloc({n}, DType::f32), og = poisoned({n}, dt());
  cpu().swiglu_forward(oc, ac, bc);
  gpu().swiglu_forward(og, ag, bg);
  expect_close(og, oc, Tol{1e-6, 4e-3}, "swiglu_forward", dt());
  Tensor dac = cpu().alloc({n}, DType::f32), dbc = cpu().alloc({n}, DType::f32);
  Tensor dag = poisoned({n}, dt()), dbg = poisoned({n}, dt());
  cpu().swiglu_backward(dac, dbc, on_cpu({n}, d), ac, bc);
  gpu().swiglu_backward(dag, dbg, on_gpu({n}, d, dt()), ag, bg);
  expect_close(dag, dac, Tol{1e-6, 4e-3}, "swiglu_backward da", dt());
  expect_close(dbg, dbc, Tol{1e-6, 4e-3}, "swiglu_backward db", dt());
}

// ---- cross-entropy --------------------------------------------------------------------------
// Rows whose target is kIgnoreTarget: loss exactly 0 and, when `dlogits` is given, a row of
// exact zeros (the outputs were poisoned first).
void expect_ignored_rows(Backend& gpu, const Tensor& losses, const Tensor& dlogits,
                         const std::vector<int32_t>& targets, int64_t V, const std::string& what) {
  const std::vector<double> loss = gpu.read(losses);
  const std::vector<double> grad = dlogits.defined() ? gpu.read(dlogits) : std::vector<double>();
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] != kIgnoreTarget) continue;
    EXPECT_EQ(loss[t], 0.0) << what << ": ignored row " << t << "'s loss";
    if (grad.empty()) continue;
    int64_t nonzero = 0;
    for (int64_t j = 0; j < V; ++j) nonzero += grad[t * V + j] != 0.0;
    EXPECT_EQ(nonzero, 0) << what << ": ignored row " << t << "'s gradient";
  }
}

TEST_P(CudaOps, CrossEntropy) {
  const int64_t N = 17, V = 300;
  const std::vector<double> logits = values(N * V, dt(), 3.0);
  std::vector<int32_t> targets(N);
  for (int64_t t = 0; t < N; ++t) targets[t] = static_cast<int32_t>((t * 37 + 5) % V);
  targets[0] = targets[6] = targets[N - 1] = kIgnoreTarget;  // not trained (docs/data.md)
  for (bool grad : {false, true}) {
    Tensor lc = on_cpu({N, V}, logits), lg = on_gpu({N, V}, logits, dt());
    Tensor sc = cpu().alloc({N}, DType::f32), sg = poisoned({N}, st());
    cpu().cross_entropy(sc, lc, ints_cpu(targets), grad, 0.37);
    gpu().cross_entropy(sg, lg, ints_gpu(targets), grad, 0.37);
    expect_close(sg, sc, Tol{1e-6, 1e-6}, grad ? "cross_entropy losses (grad)" : "cross_entropy losses", dt());
    expect_close(lg, lc, Tol{1e-6, 4e-3}, grad ? "cross_entropy dlogits" : "cross_entropy logits kept", dt());
    expect_ignored_rows(gpu(), sg, grad ? lg : Tensor(), targets, V, "cross_entropy");
  }
}

// ---- vector kernels (bf16, 16-byte accesses) --------------------------------------------------
// bf16 data at 16-byte aligned addresses takes the vector kernels; a view one element into a
// buffer is misaligned and takes the element-wise kernels. Where docs/cuda.md says a vector
// kernel keeps the element-wise float expressions, the two must agree bitwise; the others are
// held to the CPU tolerances above on shapes that take the vector paths (docs/cuda.md).
class CudaVec : public CudaTest {
 protected:
  // bf16 `shape` holding v, one element into a larger buffer: not 16-byte aligned.
  Tensor misaligned(const Shape& shape, const std::vector<double>& v) {
    const int64_t n = shape_numel(shape);
    Tensor t = gpu().alloc({n + 1}, DType::bf16).rows(1, n + 1).reshape(shape);
    gpu().write(t, std::span<const double>(v));
    return t;
  }
  Tensor misaligned_poisoned(const Shape& shape) {
    Tensor t = misaligned(shape, std::vector<double>(shape_numel(shape), 0.0));
    gpu().fill(t, kNaN);
    return t;
  }
  // The MoE gathers' vector kernels (aligned) against the scalar ones (misaligned) bitwise, and
  // the CPU, with every 7th assignment dropped.
  void check_permute_and_combine_vectors(int64_t N, int64_t K, int64_t D);
  static constexpr DType bf = DType::bf16;
};

TEST_F(CudaVec, ElementwiseVectorKernelsAreBitwiseTheScalarOnes) {
  const int64_t n = 4099;  // 512 vectors and a tail of 3
  const std::vector<double> a = values(n, bf, 2.0), b = values(n, bf), d = values(n, bf);
  Tensor av = on_gpu({n}, a, bf), bv = on_gpu({n}, b, bf), dv = on_gpu({n}, d, bf);
  Tensor as = misaligned({n}, a), bs = misaligned({n}, b), ds = misaligned({n}, d);
  Tensor ov = poisoned({n}, bf), os = misaligned_poisoned({n});
  gpu().swiglu_forward(ov, av, bv);
  gpu().swiglu_forward(os, as, bs);
  expect_bitwise(ov, os, "swiglu_forward");
  Tensor dav = poisoned({n}, bf), dbv = poisoned({n}, bf);
  Tensor das = misaligned_poisoned({n}), dbs = misaligned_poisoned({n});
  gpu().swiglu_backward(dav, dbv, dv, av, bv);
  gpu().swiglu_backward(das, dbs, ds, as, bs);
  expect_bitwise(dav, das, "swiglu_backward da");
  expect_bitwise(dbv, dbs, "swiglu_backward db");
  // Training's form: the forward's product rebuilt, and everything in place (da over a, db over
  // b, hidden over dout), on both paths: bitwise the out-of-place results and the forward's.
  for (const bool vector : {true, false}) {
    const std::string path = vector ? " (vector, in place)" : " (scalar, in place)";
    Tensor a_io = vector ? on_gpu({n}, a, bf) : misaligned({n}, a);
    Tensor b_io = vector ? on_gpu({n}, b, bf) : misaligned({n}, b);
    Tensor d_io = vector ? on_gpu({n}, d, bf) : misaligned({n}, d);
    gpu().swiglu_backward(a_io, b_io, d_io, a_io, b_io, d_io);
    expect_bitwise(d_io, ov, "swiglu_backward hidden" + path);
    expect_bitwise(a_io, dav, "swiglu_backward da" + path);
    expect_bitwise(b_io, dbv, "swiglu_backward db" + path);
  }
  // And the residual sum: add_into is bitwise copy + add.
  Tensor sum_fused = poisoned({n}, bf), sum_ref = poisoned({n}, bf);
  gpu().add_into(sum_fused, av, bv);
  gpu().copy(sum_ref, av);
  gpu().add(sum_ref, bv, 1.0);
  expect_bitwise(sum_fused, sum_ref, "add_into");
  gpu().add(av, bv, -0.75);
  gpu().add(as, bs, -0.75);
  expect_bitwise(av, as, "add");
  // The same through the CPU reference, at the CudaOps tolerances.
  Tensor oc = cpu().alloc({n}, DType::f32);
  cpu().swiglu_forward(oc, on_cpu({n}, a), on_cpu({n}, b));
  expect_close(ov, oc, 4e-3, "swiglu_forward (vector)", bf);
}

TEST_F(CudaVec, RopeOnQAndKInOneLaunch) {
  const int64_t B = 2, S = 19, H = 3, Dh = 32, T = B * S, D = H * Dh;  // Dh / 2 = 16: 2 vectors
  const std::vector<double> q = values(T * D, bf), k = values(T * D, bf);
  Tensor qv = on_gpu({T, D}, q, bf), kv = on_gpu({T, D}, k, bf);
  Tensor qs = misaligned({T, D}, q), ks = misaligned({T, D}, k);
  Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k);
  gpu().rope_forward_qk(qv, kv, B, S, H);
  gpu().rope_forward(qs, B, S, H);
  gpu().rope_forward(ks, B, S, H);
  cpu().rope_forward_qk(qc, kc, B, S, H);
  expect_bitwise(qv, qs, "rope_forward_qk q");
  expect_bitwise(kv, ks, "rope_forward_qk k");
  expect_close(qv, qc, 4e-3, "rope_forward_qk q", bf);
  expect_close(kv, kc, 4e-3, "rope_forward_qk k", bf);
  gpu().rope_backward_qk(qv, kv, B, S, H);
  gpu().rope_backward(qs, B, S, H);
  gpu().rope_backward(ks, B, S, H);
  cpu().rope_backward_qk(qc, kc, B, S, H);
  expect_bitwise(qv, qs, "rope_backward_qk q");
  expect_bitwise(kv, ks, "rope_backward_qk k");
  expect_close(qv, qc, 4e-3, "rope_backward_qk q", bf);
  expect_close(kv, kc, 4e-3, "rope_backward_qk k", bf);
  // f32 takes the element-wise kernel for both tensors.
  Tensor qf = on_gpu({T, D}, q, DType::f32), kf = on_gpu({T, D}, k, DType::f32);
  Tensor qfc = on_cpu({T, D}, q), kfc = on_cpu({T, D}, k);
  gpu().rope_forward_qk(qf, kf, B, S, H);
  cpu().rope_forward_qk(qfc, kfc, B, S, H);
  expect_close(qf, qfc, 1e-6, "rope_forward_qk q", DType::f32);
  expect_close(kf, kfc, 1e-6, "rope_forward_qk k", DType::f32);
}

TEST_F(CudaVec, RMSNormWideRows) {
  for (const int64_t D : {2048, 4096}) {  // backward: one vector a thread at 2048, two at 4096
    // Chunks of 32 rows and a partial one of 19: the vector backward takes rows 2 at a time, so
    // the partial chunk ends with a partial group (its last prefetch loads nothing).
    const int64_t N = 83;
    const std::string at = " D=" + std::to_string(D);
    const std::vector<double> x = values(N * D, bf, 2.0), dout = values(N * D, bf);
    std::vector<double> gain = values(D, DType::f32, 0.1), dg0 = values(D, DType::f32);
    for (double& g : gain) g += 1.0;
    Tensor xc = on_cpu({N, D}, x), xg = on_gpu({N, D}, x, bf);
    Tensor gc = on_cpu({D}, gain), gg = on_gpu({D}, gain, DType::f32);
    Tensor oc = cpu().alloc({N, D}, DType::f32), rc = cpu().alloc({N}, DType::f32);
    Tensor og = poisoned({N, D}, bf), rg = poisoned({N}, DType::f32);
    cpu().rmsnorm_forward(oc, rc, xc, gc);
    gpu().rmsnorm_forward(og, rg, xg, gg);
    expect_close(og, oc, 4e-3, "rmsnorm_forward out" + at, bf);
    expect_close(rg, rc, 1e-6, "rmsnorm_forward rstd" + at, bf);
    Tensor dxc = cpu().alloc({N, D}, DType::f32), dgc = on_cpu({D}, dg0);
    Tensor doutg = on_gpu({N, D}, dout, bf);
    cpu().rmsnorm_backward(dxc, dgc, on_cpu({N, D}, dout), xc, gc, rc);
    Tensor dxg[2] = {poisoned({N, D}, bf), poisoned({N, D}, bf)};
    Tensor dgg[2] = {on_gpu({D}, dg0, DType::f32), on_gpu({D}, dg0, DType::f32)};
    for (int run = 0; run < 2; ++run)
      gpu().rmsnorm_backward(dxg[run], dgg[run], doutg, xg, gg, rg);
    expect_close(dxg[0], dxc, 4e-3, "rmsnorm_backward dx" + at, bf);
    expect_close(dgg[0], dgc, 1e-5, "rmsnorm_backward dgain" + at, bf);
    expect_bitwise(dxg[0], dxg[1], "rmsnorm_backward dx, twice" + at);
    expect_bitwise(dgg[0], dgg[1], "rmsnorm_backward dgain, twice" + at);
  }
}

// The residual stream's fused forms on the device (docs/cuda.md): add_rmsnorm_forward is
// bitwise add_into then rmsnorm_forward; the accumulating backward rounds dx + dres once, so it
// is held to the CPU's sequence (norm, then add) at the bf16 bound, and its dgain is bitwise the
// plain backward's. Vector rows (D 2048, 512, and 520: a warp of the backward's block only part
// used; N with a partial chunk) and the element path (an odd D).
TEST_F(CudaVec, RMSNormResidualFusions) {
  for (const int64_t D : {2048, 512, 520, 100}) {
    const int64_t N = 84;
    const std::string at = " D=" + std::to_string(D);
    const std::vector<double> a = values(N * D, bf, 2.0), b = values(N * D, bf);
    const std::vector<double> dy = values(N * D, bf), res = values(N * D, bf);
    std::vector<double> gain = values(D, DType::f32, 0.1), dg0 = values(D, DType::f32);
    for (double& g : gain) g += 1.0;
    Tensor ag = on_gpu({N, D}, a, bf), bg = on_gpu({N, D}, b, bf),
           gg = on_gpu({D}, gain, DType::f32);
    Tensor sum = poisoned({N, D}, bf), out = poisoned({N, D}, bf), rstd = poisoned({N}, DType::f32);
    gpu().add_rmsnorm_forward(sum, out, rstd, ag, bg, gg);
    Tensor sum_ref = poisoned({N, D}, bf), out_ref = poisoned({N, D}, bf);
    Tensor rstd_ref = poisoned({N}, DType::f32);
    gpu().add_into(sum_ref, ag, bg);
    gpu().rmsnorm_forward(out_ref, rstd_ref, sum_ref, gg);
    expect_bitwise(sum, sum_ref, "add_rmsnorm_forward sum" + at);
    expect_bitwise(out, out_ref, "add_rmsnorm_forward out" + at);
    expect_bitwise(rstd, rstd_ref, "add_rmsnorm_forward rstd" + at);
    // model.norm_eps reaches the fused form too (into tensors of its own: the backward below
    // reads sum and rstd at the default epsilon).
    {
      Tensor sum_eps = poisoned({N, D}, bf), out_eps = poisoned({N, D}, bf);
      Tensor rstd_eps = poisoned({N}, DType::f32), rstd_eps_ref = poisoned({N}, DType::f32);
      gpu().add_rmsnorm_forward(sum_eps, out_eps, rstd_eps, ag, bg, gg, 0.25);
      gpu().rmsnorm_forward(out_ref, rstd_eps_ref, sum_ref, gg, 0.25);
      expect_bitwise(out_eps, out_ref, "add_rmsnorm_forward out eps 0.25" + at);
      expect_bitwise(rstd_eps, rstd_eps_ref, "add_rmsnorm_forward rstd eps 0.25" + at);
    }

    const Tensor dyg = on_gpu({N, D}, dy, bf);
    Tensor dres[2] = {on_gpu({N, D}, res, bf), on_gpu({N, D}, res, bf)};
    Tensor dgg[2] = {on_gpu({D}, dg0, DType::f32), on_gpu({D}, dg0, DType::f32)};
    for (int run = 0; run < 2; ++run)
      gpu().rmsnorm_backward(dres[run], dgg[run], dyg, sum, gg, rstd, true);
    expect_bitwise(dres[0], dres[1], "rmsnorm_backward accumulate, twice" + at);
    expect_bitwise(dgg[0], dgg[1], "rmsnorm_backward accumulate dgain, twice" + at);
    Tensor dx = poisoned({N, D}, bf), dg_plain = on_gpu({D}, dg0, DType::f32);
    gpu().rmsnorm_backward(dx, dg_plain, dyg, sum, gg, rstd);
    expect_bitwise(dgg[0], dg_plain, "rmsnorm_backward accumulate dgain = plain" + at);
    // The CPU: the norm's dx added by add() to the residual gradient, all in f32, from the same
    // (bf16-rounded) residual sum.
    Tensor sc = on_cpu({N, D}, gpu().read(sum)), oc = cpu().alloc({N, D}, DType::f32);
    Tensor rc = cpu().alloc({N}, DType::f32), gc = on_cpu({D}, gain);
    cpu().rmsnorm_forward(oc, rc, sc, gc);
    Tensor dxc = cpu().alloc({N, D}, DType::f32), dgc = on_cpu({D}, dg0);
    Tensor dresc = on_cpu({N, D}, res);
    cpu().rmsnorm_backward(dxc, dgc, on_cpu({N, D}, dy), sc, gc, rc);
    cpu().add(dresc, dxc, 1.0);
    expect_close(dres[0], dresc, 4e-3, "rmsnorm_backward accumulate dx" + at, bf);
    expect_close(dgg[0], dgc, 1e-5, "rmsnorm_backward accumulate dgain" + at, bf);
  }
}

TEST_F(CudaVec, CrossEntropyVectorPaths) {
  // bf16 4096: the row in registers; bf16 33024 (> 32768): two passes; f32: two passes. The LM
  // head's form (cross_entropy_into) holds f32 rows up to 32768 in registers between its passes
  // and streams 33024, so its bitwise check against the in-place form below compares the held
  // kernel with the streaming one.
  struct Case {
    DType dtype;
    int64_t V;
  };
  for (const Case c : {Case{bf, 4096}, Case{bf, 33024}, Case{DType::f32, 4096},
                       Case{DType::f32, 32768}, Case{DType::f32, 33024}}) {
    const int64_t N = 9;
    const std::string at = std::string(" ") + dtype_name(c.dtype) + " V=" + std::to_string(c.V);
    const std::vector<double> logits = values(N * c.V, c.dtype, 3.0);
    std::vector<int32_t> targets(N);
    for (int64_t t = 0; t < N; ++t) targets[t] = static_cast<int32_t>((t * 977 + 5) % c.V);
    targets[0] = 0;
    targets[1] = static_cast<int32_t>(c.V - 1);
    targets[4] = targets[N - 1] = kIgnoreTarget;
    for (bool grad : {false, true}) {
      Tensor lc = on_cpu({N, c.V}, logits), lg = on_gpu({N, c.V}, logits, c.dtype);
      Tensor sc = cpu().alloc({N}, DType::f32), sg = poisoned({N}, DType::f32);
      cpu().cross_entropy(sc, lc, ints_cpu(targets), grad, 0.37);
      gpu().cross_entropy(sg, lg, ints_gpu(targets), grad, 0.37);
      expect_close(sg, sc, 1e-6, std::string("cross_entropy losses") + (grad ? " (grad)" : "") + at,
                   c.dtype);
      expect_close(lg, lc, c.dtype == bf ? 4e-3 : 1e-6,
                   std::string(grad ? "cross_entropy dlogits" : "cross_entropy logits kept") + at,
                   c.dtype);
      expect_ignored_rows(gpu(), sg, grad ? lg : Tensor(), targets, c.V, "cross_entropy" + at);
    }
    if (c.dtype != DType::f32) continue;
    // The LM head's form: f32 logits, the gradient straight into bf16: bitwise the in-place
    // gradient converted, and the same losses.
    Tensor lg = on_gpu({N, c.V}, logits, c.dtype), copy_src = on_gpu({N, c.V}, logits, c.dtype);
    Tensor sg = poisoned({N}, DType::f32), s_ref = poisoned({N}, DType::f32);
    Tensor dg = poisoned({N, c.V}, bf), d_ref = poisoned({N, c.V}, bf);
    gpu().cross_entropy_into(sg, lg, ints_gpu(targets), 0.37, dg);
    gpu().cross_entropy(s_ref, copy_src, ints_gpu(targets), true, 0.37);
    gpu().copy(d_ref, copy_src);
    expect_bitwise(sg, s_ref, "cross_entropy_into losses" + at);
    expect_bitwise(dg, d_ref, "cross_entropy_into bf16 dlogits" + at);
    expect_ignored_rows(gpu(), sg, dg, targets, c.V, "cross_entropy_into" + at);
  }
}

void CudaVec::check_permute_and_combine_vectors(int64_t N, int64_t K, int64_t D) {
  // Assignment s goes to row R-1-(its rank among the kept); every 7th is dropped.
  std::vector<int32_t> slot_row(N * K, -1), row_slot;
  for (int64_t s = 0; s < N * K; ++s)
    if (s % 7 != 3) row_slot.push_back(static_cast<int32_t>(s));
  std::reverse(row_slot.begin(), row_slot.end());
  const int64_t R = static_cast<int64_t>(row_slot.size());
  for (int64_t r = 0; r < R; ++r) slot_row[row_slot[r]] = static_cast<int32_t>(r);
  Tensor src = ints_cpu(slot_row), srg = ints_gpu(slot_row);

  const std::vector<double> x = values(N * D, bf), dxp = values(R * D, bf), y = values(R * D, bf),
                            dout = values(N * D, bf), gates = values(N * K, DType::f32, 0.5);
  Tensor pv = poisoned({R, D}, bf), ps = misaligned_poisoned({R, D});
  gpu().permute_rows(pv, on_gpu({N, D}, x, bf), srg, K);
  gpu().permute_rows(ps, misaligned({N, D}, x), srg, K);
  expect_bitwise(pv, ps, "permute_rows");
  Tensor pc = cpu().alloc({R, D}, DType::f32);
  cpu().permute_rows(pc, on_cpu({N, D}, x), src, K);
  expect_close(pv, pc, 0.0, "permute_rows (vector)", bf);

  Tensor dxv = poisoned({N, D}, bf), dxs = misaligned_poisoned({N, D});
  gpu().permute_rows_backward(dxv, on_gpu({R, D}, dxp, bf), srg, K);
  gpu().permute_rows_backward(dxs, misaligned({R, D}, dxp), srg, K);
  expect_bitwise(dxv, dxs, "permute_rows_backward");

  Tensor gg = on_gpu({N, K}, gates, DType::f32);
  Tensor ov = poisoned({N, D}, bf), os = misaligned_poisoned({N, D});
  gpu().unpermute_combine(ov, on_gpu({R, D}, y, bf), gg, srg);
  gpu().unpermute_combine(os, misaligned({R, D}, y), gg, srg);
  expect_bitwise(ov, os, "unpermute_combine");

  Tensor dyv = poisoned({R, D}, bf), dys = misaligned_poisoned({R, D});
  Tensor dgv = poisoned({N, K}, DType::f32), dgs = poisoned({N, K}, DType::f32);
  gpu().unpermute_combine_backward(dyv, dgv, on_gpu({N, D}, dout, bf), on_gpu({R, D}, y, bf), gg,
                                   srg);
  gpu().unpermute_combine_backward(dys, dgs, misaligned({N, D}, dout), misaligned({R, D}, y), gg,
                                   srg);
  expect_bitwise(dyv, dys, "unpermute_combine_backward dy");
  Tensor dyc = cpu().alloc({R, D}, DType::f32), dgc = cpu().alloc({N, K}, DType::f32);
  cpu().unpermute_combine_backward(dyc, dgc, on_cpu({N, D}, dout), on_cpu({R, D}, y),
                                   on_cpu({N, K}, gates), src);
  expect_close(dgv, dgc, 1e-5, "unpermute_combine_backward dgates (vector)", bf);
}

TEST_F(CudaVec, PermuteAndCombineVectorKernels) {
  // D 64: 8 vectors a row; D 4104: 513, past the permute's 256 a pass and the gather's 128 (with
  // a remainder in each); K 3: an odd row in the gather's pairs; K 40: rows past a lane each.
  struct Case {
    int64_t N, K, D;
  };
  for (const Case& c : {Case{40, 2, 64}, Case{24, 3, 4104}, Case{10, 40, 72}}) {
    SCOPED_TRACE("N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " D " +
                 std::to_string(c.D));
    check_permute_and_combine_vectors(c.N, c.K, c.D);
  }
}

// ---- router (f32, as in training) -----------------------------------------------------------
// The router and the optimizer run in f32 (the router is fp32 everywhere; master weights fp32).
class CudaF32 : public CudaTest {
 protected:
  // One rule's name for failure messages.
  static std::string rule_name(const RoutingRule& r) {
    return std::string(r.score == RouterScore::sigmoid ? "sigmoid" : "softmax") +
           " K=" + std::to_string(r.top_k) + (r.normalize ? " norm" : "") +
           " cap=" + std::to_string(r.capacity) +
           (r.drop_policy == DropPolicy::probability ? " probability" : " position") +
           (r.overflow == Overflow::reroute ? " reroute" : " drop");
  }
};

// Logits skewed towards the low experts (so that capacity drops some), optionally on a coarse
// grid (multiples of 0.25) so that selection scores tie and the tie rule is exercised.
std::vector<double> router_logits(int64_t N, int64_t E, double skew, bool coarse, uint64_t seed) {
  CounterRng rng(seed);
  std::vector<double> v(N * E);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double x = 1.5 * rng.normal() - skew * static_cast<double>(e) / static_cast<double>(E);
      if (coarse) x = std::round(4.0 * x) / 4.0;
      v[t * E + e] = static_cast<float>(x);
    }
  return v;
}

// The CPU's routing of router_logits(N, E, 1, false, seed) under `rule`: scores, lse, top-k and
// gates, then the plan's outputs and counts.
struct CpuRouting {
  std::vector<double> logit_values;
  Tensor logits, scores, lse, topk, gates, slot_row, slot_expert, assignments;
  RouterPlanCounts counts;
};
CpuRouting route_on_cpu(Backend& cpu, int64_t N, int64_t E, const RoutingRule& rule,
                        uint64_t seed) {
  const int64_t K = rule.top_k;
  CpuRouting r;
  r.logit_values = router_logits(N, E, 1.0, false, seed);
  r.logits = cpu.alloc({N, E}, DType::f32);
  cpu.write(r.logits, std::span<const double>(r.logit_values));
  r.scores = cpu.alloc({N, E}, DType::f32), r.lse = cpu.alloc({N}, DType::f32);
  r.topk = cpu.alloc({N, K}, DType::i32), r.gates = cpu.alloc({N, K}, DType::f32);
  cpu.router_scores_topk(r.scores, r.lse, r.topk, r.gates, r.logits, Tensor(), rule);
  r.slot_row = cpu.alloc({N * K}, DType::i32), r.slot_expert = cpu.alloc({N * K}, DType::i32);
  r.assignments = cpu.alloc({E}, DType::i32);
  r.counts = cpu.router_plan(r.slot_row, r.slot_expert, r.assignments, r.topk, r.gates, r.logits,
                             Tensor(), rule);
  return r;
}

// Sizes: E = 8 with K of 1 to 3; E = 64, top-8 (the shared-memory tiles of router.cu, N not a
// multiple of their 32 tokens); E = 400, whose tile passes 48 KiB (the plain kernels).
TEST_F(CudaF32, ScoresTopkGates) {
  struct Size {
    int64_t N, E;
    std::vector<int64_t> Ks;
  };
  for (const Size& size : {Size{200, 8, {1, 2, 3}}, Size{1000, 64, {8}}, Size{100, 400, {2}}})
    for (RouterScore score : {RouterScore::softmax, RouterScore::sigmoid})
      for (bool with_bias : {false, true})
        for (bool normalize : {false, true})
          for (bool coarse : {false, true})
            for (int64_t K : size.Ks) {
              const int64_t N = size.N, E = size.E;
              RoutingRule rule;
              rule.top_k = K;
              rule.score = score;
              rule.normalize = normalize;
              const std::vector<double> logits = router_logits(N, E, 0.0, coarse, next_seed_++);
              std::vector<double> bias = values(E, DType::f32, 1.0);
              if (coarse)  // exact sums on the grid: ties in the selection scores
                for (double& b : bias) b = std::round(4.0 * b) / 4.0;
              Tensor bc = with_bias ? on_cpu({E}, bias) : Tensor();
              Tensor bg = with_bias ? on_gpu({E}, bias, DType::f32) : Tensor();
              Tensor sc = cpu().alloc({N, E}, DType::f32), lc = cpu().alloc({N}, DType::f32),
                     ic = cpu().alloc({N, K}, DType::i32), gc = cpu().alloc({N, K}, DType::f32);
              Tensor sg = poisoned({N, E}, DType::f32), lg = poisoned({N}, DType::f32),
                     ig = poisoned({N, K}, DType::i32), gg = poisoned({N, K}, DType::f32);
              cpu().router_scores_topk(sc, lc, ic, gc, on_cpu({N, E}, logits), bc, rule);
              gpu().router_scores_topk(sg, lg, ig, gg, on_gpu({N, E}, logits, DType::f32), bg,
                                       rule);
              const std::string name = std::string("router_scores_topk ") +
                                       (score == RouterScore::sigmoid ? "sigmoid" : "softmax") +
                                       " K=" + std::to_string(K) + " E=" + std::to_string(E) +
                                       (normalize ? " norm" : "") + (with_bias ? " bias" : "") +
                                       (coarse ? " ties" : "");
              expect_close(sg, sc, 1e-6, name + " scores", DType::f32);
              expect_close(lg, lc, 1e-6, name + " lse", DType::f32);
              expect_close(gg, gc, 1e-6, name + " gates", DType::f32);
              expect_equal_ints(ig, ic, N * K, name + " topk_idx");
            }
}

// Random top-k choices (distinct experts per token, skewed towards low experts so that
// capacity drops some).
std::vector<int32_t> random_topk(int64_t N, int64_t K, int64_t E, uint64_t seed) {
  CounterRng rng(seed);
  std::vector<int32_t> idx(N * K);
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      int32_t e;
      bool taken;
      do {
        const double u = std::abs(rng.normal()) / 2.5;
        e = static_cast<int32_t>(std::min<double>(E - 1, std::floor(u * E)));
        taken = false;
        for (int64_t c = 0; c < k; ++c) taken |= idx[t * K + c] == e;
      } while (taken);
      idx[t * K + k] = e;
    }
  }
  return idx;
}

// The plan on identical inputs (the CPU's top-k and gates, the same logits and bias) must be
// identical: slot_row, slot_expert, the counts and the reroute count.
// Sizes: small, and one past a block of 1024 assignments with E > 32 (several experts per lane
// in the reroute walk, several tiles in the probability ordering); E = 64, top-8 over 12 of the
// dropless plan's chunks; E = 1100, past the dropless plan's 1024 experts (the per-expert blocks).
// Gates as computed, and quantised to sixteenths (many equal gates: the (k, t) tie order).
TEST_F(CudaF32, PlanMatchesTheCpu) {
  struct Size {
    int64_t N, K, E;
  };
  int64_t cases_with_drops = 0, cases_with_reroutes = 0;
  for (const Size size :
       {Size{300, 2, 6}, Size{1500, 3, 40}, Size{3000, 8, 64}, Size{300, 2, 1100}}) {
    const int64_t N = size.N, K = size.K, E = size.E;
    for (bool with_bias : {false, true})
      for (bool quantised_gates : {false, true}) {
        RoutingRule scoring;
        scoring.top_k = K;
        scoring.score = quantised_gates ? RouterScore::softmax : RouterScore::sigmoid;
        scoring.normalize = true;
        const std::vector<double> logits = router_logits(N, E, 3.0, false, next_seed_++);
        const std::vector<double> bias = values(E, DType::f32, 0.5);
        Tensor lc = on_cpu({N, E}, logits), lg = on_gpu({N, E}, logits, DType::f32);
        Tensor bc = with_bias ? on_cpu({E}, bias) : Tensor();
        Tensor bg = with_bias ? on_gpu({E}, bias, DType::f32) : Tensor();
        Tensor sc = cpu().alloc({N, E}, DType::f32), lsc = cpu().alloc({N}, DType::f32),
               ic = cpu().alloc({N, K}, DType::i32), gc = cpu().alloc({N, K}, DType::f32);
        cpu().router_scores_topk(sc, lsc, ic, gc, lc, bc, scoring);
        std::vector<double> gates = cpu().read(gc);
        if (quantised_gates)
          for (double& g : gates) g = std::round(16.0 * g) / 16.0;
        gc = on_cpu({N, K}, gates);
        Tensor gg = on_gpu({N, K}, gates, DType::f32);
        Tensor ig = ints_gpu(cpu().read_i32(ic)).reshape({N, K});
        for (DropPolicy policy : {DropPolicy::position, DropPolicy::probability})
          for (Overflow overflow : {Overflow::drop, Overflow::reroute})
            for (double factor : {0.0, 1.0, 0.5, -1.0}) {  // dropless, tight, tighter, none kept
              RoutingRule rule = scoring;
              rule.drop_policy = policy;
              rule.overflow = overflow;
              rule.capacity = factor == 0.0   ? -1
                              : factor < 0.0 ? 0
                                             : static_cast<int64_t>(std::ceil(
                                                   factor * static_cast<double>(K * N) / E));
              const std::string name = rule_name(rule) + " N=" + std::to_string(N) +
                                       (with_bias ? " bias" : "") +
                                       (quantised_gates ? " quantised gates" : "");
              Tensor src = cpu().alloc({N * K}, DType::i32), sec = cpu().alloc({N * K}, DType::i32),
                     ac = cpu().alloc({E}, DType::i32);
              Tensor srg = poisoned({N * K}, DType::i32), seg = poisoned({N * K}, DType::i32),
                     ag = poisoned({E}, DType::i32);
              const RouterPlanCounts cc = cpu().router_plan(src, sec, ac, ic, gc, lc, bc, rule);
              const RouterPlanCounts cg = gpu().router_plan(srg, seg, ag, ig, gg, lg, bg, rule);
              EXPECT_EQ(cg.tokens_per_expert, cc.tokens_per_expert) << name;
              EXPECT_EQ(cg.rerouted, cc.rerouted) << name;
              // The choices' counts come back in the plan's one copy, equal to the tensor's.
              const std::vector<int32_t> ag_read = gpu().read_i32(ag);
              EXPECT_EQ(cg.assignments_per_expert,
                        std::vector<int64_t>(ag_read.begin(), ag_read.end()))
                  << name;
              EXPECT_EQ(cg.assignments_per_expert, cc.assignments_per_expert) << name;
              const int64_t kept = std::accumulate(cc.tokens_per_expert.begin(),
                                                   cc.tokens_per_expert.end(), int64_t{0});
              if (factor > 0) {
                EXPECT_LT(kept - cc.rerouted, N * K) << name << ": the test wants drops";
              }
              cases_with_drops += kept < N * K;
              cases_with_reroutes += cc.rerouted > 0;
              expect_equal_ints(srg, src, N * K, name + " slot_row");
              expect_equal_ints(seg, sec, N * K, name + " slot_expert");
              expect_equal_ints(ag, ac, E, name + " assignments_per_expert");
            }
      }
  }
  std::printf("[ plan     ] %lld cases with drops, %lld with reroutes: identical to the cpu\n",
              static_cast<long long>(cases_with_drops), static_cast<long long>(cases_with_reroutes));
  EXPECT_GT(cases_with_reroutes, 0);
}

// Many overflowing assignments for the chunked reroute walk (router.cu): E = 64, top-8,
// capacity factor 1.0, logits skewed towards the low experts, so that tens of thousands of
// assignments overflow and every expert fills up along the walk (each fill ends a chunk early).
// Both drop policies, with and without a bias, and with logits on a coarse grid (ties between
// selection scores: the lower index must win). Everything must equal the CPU exactly. The
// times printed are for information (no threshold): the plan with reroutes against the plan
// with plain drops on the same inputs.
TEST_F(CudaF32, RerouteManyOverflowsMatchesTheCpu) {
  const int64_t E = 64, K = 8;
  int64_t total_rerouted = 0;
  for (const int64_t N : {int64_t{700}, int64_t{8192}})
    for (bool coarse : {false, true})
      for (bool with_bias : {false, true}) {
        RoutingRule scoring;
        scoring.top_k = K;
        scoring.score = RouterScore::softmax;
        scoring.normalize = true;
        const std::vector<double> logits = router_logits(N, E, 6.0, coarse, next_seed_++);
        std::vector<double> bias = values(E, DType::f32, 0.5);
        for (double& b : bias) b = std::round(4.0 * b) / 4.0;  // keeps coarse sums on the grid
        Tensor lc = on_cpu({N, E}, logits), lg = on_gpu({N, E}, logits, DType::f32);
        Tensor bc = with_bias ? on_cpu({E}, bias) : Tensor();
        Tensor bg = with_bias ? on_gpu({E}, bias, DType::f32) : Tensor();
        Tensor sc = cpu().alloc({N, E}, DType::f32), lsc = cpu().alloc({N}, DType::f32),
               ic = cpu().alloc({N, K}, DType::i32), gc = cpu().alloc({N, K}, DType::f32);
        cpu().router_scores_topk(sc, lsc, ic, gc, lc, bc, scoring);
        Tensor gg = on_gpu({N, K}, cpu().read(gc), DType::f32);
        Tensor ig = ints_gpu(cpu().read_i32(ic)).reshape({N, K});
        for (DropPolicy policy : {DropPolicy::position, DropPolicy::probability}) {
          double ms[2] = {0, 0};
          for (Overflow overflow : {Overflow::drop, Overflow::reroute}) {
            RoutingRule rule = scoring;
            rule.drop_policy = policy;
            rule.overflow = overflow;
            rule.capacity = (K * N + E - 1) / E;  // factor 1.0
            const std::string name = rule_name(rule) + " E=64 N=" + std::to_string(N) +
                                     (with_bias ? " bias" : "") + (coarse ? " ties" : "");
            Tensor src = cpu().alloc({N * K}, DType::i32), sec = cpu().alloc({N * K}, DType::i32),
                   ac = cpu().alloc({E}, DType::i32);
            const RouterPlanCounts cc = cpu().router_plan(src, sec, ac, ic, gc, lc, bc, rule);
            RouterPlanCounts cg;
            Tensor srg, seg, ag;
            for (int repeat = 0; repeat < 2; ++repeat) {  // the first run warms up
              srg = poisoned({N * K}, DType::i32), seg = poisoned({N * K}, DType::i32),
              ag = poisoned({E}, DType::i32);
              gpu().synchronize();
              const auto start = std::chrono::steady_clock::now();
              cg = gpu().router_plan(srg, seg, ag, ig, gg, lg, bg, rule);  // synchronises
              ms[overflow == Overflow::reroute] =
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                            start)
                      .count();
            }
            const int64_t kept = std::accumulate(cc.tokens_per_expert.begin(),
                                                 cc.tokens_per_expert.end(), int64_t{0});
            EXPECT_EQ(cg.tokens_per_expert, cc.tokens_per_expert) << name;
            EXPECT_EQ(cg.rerouted, cc.rerouted) << name;
            expect_equal_ints(srg, src, N * K, name + " slot_row");
            expect_equal_ints(seg, sec, N * K, name + " slot_expert");
            expect_equal_ints(ag, ac, E, name + " assignments_per_expert");
            if (overflow == Overflow::reroute) {
              total_rerouted += cc.rerouted;
              if (N >= 8192) {
                EXPECT_GT(cc.rerouted, N * K / 4) << name << ": the test wants many reroutes";
              }
              std::printf("[ reroute  ] %-52s %6lld rerouted, %5lld left dropped: plan %.3f ms "
                          "(drops only: %.3f ms)\n",
                          name.c_str(), static_cast<long long>(cc.rerouted),
                          static_cast<long long>(N * K - kept), ms[1], ms[0]);
            }
          }
        }
      }
  EXPECT_GT(total_rerouted, 0);
}

// The plan in two calls, with work enqueued between them that overwrites the scratch the plan
// counted in and then reads what the plan wrote (a permute): the counts that finish returns are
// the plan's, and the permute sees the finished plan (stream order).
TEST_F(CudaF32, PlanInTwoCallsWithWorkBetween) {
  const int64_t N = 513, K = 2, E = 8, D = 64;
  RoutingRule rule;
  rule.top_k = K;
  const CpuRouting c = route_on_cpu(cpu(), N, E, rule, next_seed_++);
  const RouterPlanCounts& cc = c.counts;
  Tensor lg = on_gpu({N, E}, c.logit_values, DType::f32);
  Tensor gg = on_gpu({N, K}, cpu().read(c.gates), DType::f32);
  Tensor ig = ints_gpu(cpu().read_i32(c.topk)).reshape({N, K});
  Tensor srg = poisoned({N * K}, DType::i32), seg = poisoned({N * K}, DType::i32),
         ag = poisoned({E}, DType::i32);
  const std::vector<double> x = values(N * D, DType::f32);
  Tensor xg = on_gpu({N, D}, x, DType::f32), xc = on_cpu({N, D}, x);
  Tensor pg = poisoned({N * K, D}, DType::f32), pc = cpu().alloc({N * K, D}, DType::f32);
  for (int round = 0; round < 2; ++round) {
    gpu().router_plan_start(srg, seg, ag, ig, gg, lg, Tensor(), rule);
    gpu().router_scores_topk(poisoned({N, E}, DType::f32), poisoned({N}, DType::f32),
                             poisoned({N, K}, DType::i32), poisoned({N, K}, DType::f32), lg,
                             Tensor(), rule);  // more launches that use the scratch slots
    gpu().permute_rows(pg, xg, srg, K);
    const RouterPlanCounts cg = gpu().router_plan_finish();
    EXPECT_EQ(cg.tokens_per_expert, cc.tokens_per_expert) << round;
    EXPECT_EQ(cg.assignments_per_expert, cc.assignments_per_expert) << round;
    EXPECT_EQ(cg.rerouted, cc.rerouted) << round;
  }
  cpu().permute_rows(pc, xc, c.slot_row, K);
  EXPECT_EQ(gpu().read(pg), cpu().read(pc));  // a copy of f32 rows: exact
  expect_equal_ints(srg, c.slot_row, N * K, "slot_row");
  EXPECT_THROW(gpu().router_plan_finish(), std::runtime_error);
}

// The losses and the backward from the CPU's router outputs copied to the device, with f_e from
// this group's choices and from counts given from outside (aux_loss_scope global).
// Sizes: E = 6; E = 64, top-8 (the fine-grained benchmark's routing); E = 400.
TEST_F(CudaF32, LossesAndBackward) {
  struct Size {
    int64_t N, K, E;
  };
  for (const Size size : {Size{300, 2, 6}, Size{1000, 8, 64}, Size{100, 2, 400}})
    for (RouterScore score : {RouterScore::softmax, RouterScore::sigmoid}) {
      const int64_t N = size.N, K = size.K, E = size.E;
      RoutingRule rule;
      rule.top_k = K;
      rule.score = score;
      rule.normalize = true;
      const CpuRouting c = route_on_cpu(cpu(), N, E, rule, next_seed_++);
      const Tensor &lc = c.logits, &sc = c.scores, &lsc = c.lse, &ic = c.topk, &ac = c.assignments;
      Tensor lg = on_gpu({N, E}, c.logit_values, DType::f32);
      Tensor sg = on_gpu({N, E}, cpu().read(sc), DType::f32);
      Tensor lsg = on_gpu({N}, cpu().read(lsc), DType::f32);
      Tensor ig = ints_gpu(cpu().read_i32(ic)).reshape({N, K});
      CounterRng rng(next_seed_++);
      std::vector<int32_t> foreign(E);
      for (int32_t& n : foreign) n = static_cast<int32_t>(std::floor(std::abs(rng.normal()) * 200));
      for (bool global : {false, true}) {
        const std::vector<int32_t> counts = global ? foreign : cpu().read_i32(ac);
        Tensor cc = ints_cpu(counts), cg = ints_gpu(counts);
        const std::string name =
            std::string(score == RouterScore::sigmoid ? "sigmoid" : "softmax") +
            " E=" + std::to_string(E) + (global ? " foreign counts" : "");
        const RouterLossValues vc = cpu().router_losses(sc, lsc, cc, rule);
        const RouterLossValues vg = gpu().router_losses(sg, lsg, cg, rule);
        std::printf("[ rel err  ] router_losses %-22s aux %.3e z %.3e entropy %.3e\n", name.c_str(),
                    std::abs(vg.aux - vc.aux) / vc.aux, std::abs(vg.z - vc.z) / vc.z,
                    std::abs(vg.entropy - vc.entropy) / vc.entropy);
        EXPECT_NEAR(vg.aux, vc.aux, 1e-6 * vc.aux) << name;
        EXPECT_NEAR(vg.z, vc.z, 1e-6 * vc.z) << name;
        EXPECT_NEAR(vg.entropy, vc.entropy, 1e-6 * vc.entropy) << name;
        // Into a device tensor, read later: the same bits as the values returned at once.
        Tensor into = poisoned({3}, DType::f64);
        gpu().router_losses_into(into, sg, lsg, cg, rule);
        EXPECT_EQ(gpu().read(into), (std::vector<double>{vg.aux, vg.z, vg.entropy})) << name;
        // The backward, through the gates (normalised and not), aux and z.
        for (bool normalize : {false, true}) {
          RoutingRule backward_rule = rule;
          backward_rule.normalize = normalize;
          const std::vector<double> dgates = values(N * K, DType::f32);
          Tensor dc = cpu().alloc({N, E}, DType::f32), dg = poisoned({N, E}, DType::f32);
          cpu().router_backward(dc, on_cpu({N, K}, dgates), sc, lsc, lc, ic, cc, backward_rule, 0.7,
                                0.3);
          gpu().router_backward(dg, on_gpu({N, K}, dgates, DType::f32), sg, lsg, lg, ig, cg,
                                backward_rule, 0.7, 0.3);
          expect_close(dg, dc, 1e-6, "router_backward " + name + (normalize ? " norm" : ""),
                       DType::f32);
        }
      }
    }
}

// The per-token kernels' two forms (router.cu: a group of lanes per token for E <= 256, a thread
// per token past it or with SY_ROUTER_TOKEN_KERNEL=thread) give the same bits: scores, lse,
// top-k, gates, the losses and the backward, over every lane layout (8, 16, 32 lanes; 1 to 8
// experts a lane), with E not a multiple of the lanes, N not of a block's tokens, bias, ties and
// sigmoid. The group form is also checked against the CPU.
TEST_F(CudaF32, RouterTokenFormsGiveTheSameBits) {
  struct Size {
    int64_t N, E, K;
  };
  const test::EnvironmentRestored restored("SY_ROUTER_TOKEN_KERNEL");
  int64_t cases = 0;
  for (const Size size : {Size{300, 6, 2}, Size{1000, 8, 2}, Size{257, 16, 3}, Size{500, 40, 4},
                          Size{1000, 64, 8}, Size{300, 100, 8}, Size{200, 256, 6}})
    for (RouterScore score : {RouterScore::softmax, RouterScore::sigmoid})
      for (bool ties : {false, true}) {
        const int64_t N = size.N, E = size.E, K = size.K;
        RoutingRule rule;
        rule.top_k = K;
        rule.score = score;
        rule.normalize = !ties;  // the gates both ways over the cases
        const std::string name =
            rule_name(rule) + " E=" + std::to_string(E) + (ties ? " ties, bias" : "");
        const std::vector<double> logits = router_logits(N, E, 0.5, ties, next_seed_++);
        std::vector<double> bias = values(E, DType::f32, 1.0);
        for (double& b : bias) b = std::round(4.0 * b) / 4.0;  // with the grid: tied selections
        Tensor bg = ties ? on_gpu({E}, bias, DType::f32) : Tensor();
        Tensor bc = ties ? on_cpu({E}, bias) : Tensor();
        Tensor lg = on_gpu({N, E}, logits, DType::f32);
        const std::vector<double> dgates = values(N * K, DType::f32);
        std::vector<int32_t> counts(E);
        for (int64_t e = 0; e < E; ++e) counts[e] = static_cast<int32_t>(3 * e % 7 + 1);
        struct Outputs {
          Tensor scores, lse, topk, gates, dlogits;
          RouterLossValues losses;
        };
        auto run = [&](const char* form) {
          restored.set(form);
          Outputs o{poisoned({N, E}, DType::f32), poisoned({N}, DType::f32),
                    poisoned({N, K}, DType::i32), poisoned({N, K}, DType::f32),
                    poisoned({N, E}, DType::f32), {}};
          gpu().router_scores_topk(o.scores, o.lse, o.topk, o.gates, lg, bg, rule);
          o.losses = gpu().router_losses(o.scores, o.lse, ints_gpu(counts), rule);
          gpu().router_backward(o.dlogits, on_gpu({N, K}, dgates, DType::f32), o.scores, o.lse, lg,
                                o.topk, ints_gpu(counts), rule, 0.7, 0.3);
          return o;
        };
        const Outputs group = run("group"), thread = run("thread");
        expect_bitwise(group.scores, thread.scores, name + " scores");
        expect_bitwise(group.lse, thread.lse, name + " lse");
        expect_bitwise(group.gates, thread.gates, name + " gates");
        EXPECT_EQ(gpu().read_i32(group.topk), gpu().read_i32(thread.topk)) << name << " top-k";
        EXPECT_EQ(std::memcmp(&group.losses, &thread.losses, sizeof(RouterLossValues)), 0)
            << name << " losses: aux " << group.losses.aux << " vs " << thread.losses.aux;
        expect_bitwise(group.dlogits, thread.dlogits, name + " dlogits");
        // And the group form against the CPU.
        Tensor sc = cpu().alloc({N, E}, DType::f32), lsc = cpu().alloc({N}, DType::f32),
               ic = cpu().alloc({N, K}, DType::i32), gc = cpu().alloc({N, K}, DType::f32);
        Tensor logits_cpu = on_cpu({N, E}, logits);
        cpu().router_scores_topk(sc, lsc, ic, gc, logits_cpu, bc, rule);
        expect_equal_ints(group.topk, ic, N * K, name + " top-k against the cpu");
        expect_close(group.scores, sc, 1e-6, name + " scores against the cpu", DType::f32);
        expect_close(group.gates, gc, 1e-6, name + " gates against the cpu", DType::f32);
        const RouterLossValues vc = cpu().router_losses(sc, lsc, ints_cpu(counts), rule);
        EXPECT_NEAR(group.losses.entropy, vc.entropy, 1e-6 * vc.entropy) << name;
        EXPECT_NEAR(group.losses.aux, vc.aux, 1e-6 * vc.aux) << name;
        Tensor dc = cpu().alloc({N, E}, DType::f32);
        cpu().router_backward(dc, on_cpu({N, K}, dgates), sc, lsc, logits_cpu, ic, ints_cpu(counts),
                              rule, 0.7, 0.3);
        expect_close(group.dlogits, dc, 1e-6, name + " dlogits against the cpu", DType::f32);
        ++cases;
      }
  EXPECT_EQ(cases, 28);
}

// ---- router projection (router_projection.cu) -----------------------------------------------
// logits = u @ w and its backward with f32 w and u in bf16 (the CPU gets the same bf16 values in
// f32) or f32: E from 1 to 64 (3: a partial expert chunk), T not a multiple of a block's 8 rows
// nor even (the forward takes rows in pairs), D a multiple of 8 (16-byte path) and not (element
// path), dw chunks longer than the 64 rows of dlogits staged at a time (T 4200, D 2048, E 64:
// the partials' budget allows 64 chunks, of 66 rows); dw written over NaN (dw_beta 0) and
// accumulated (1). A second run is bitwise the first, and a misaligned u and du (element path)
// give bitwise the aligned results.
TEST_F(CudaVec, RouterProjection) {
  struct Case {
    int64_t T, D, E;
  };
  const DType f32 = DType::f32;
  // `shape` holding v in `dtype`, one element into a larger buffer: not 16-byte aligned.
  auto misaligned_as = [&](const Shape& shape, const std::vector<double>& v, DType dtype) {
    const int64_t n = shape_numel(shape);
    Tensor t = gpu().alloc({n + 1}, dtype).rows(1, n + 1).reshape(shape);
    gpu().write(t, std::span<const double>(v));
    return t;
  };
  for (DType udt : {DType::bf16, f32})
    for (Case k : {Case{203, 96, 1}, Case{203, 96, 2}, Case{203, 96, 3}, Case{203, 96, 8},
                   Case{203, 96, 64}, Case{77, 45, 8}, Case{1000, 2048, 8},
                   Case{4200, 2048, 64}})
      for (double beta : {0.0, 1.0}) {
        const int64_t T = k.T, D = k.D, E = k.E;
        const std::string name = "router_logits T=" + std::to_string(T) + " D=" +
                                 std::to_string(D) + " E=" + std::to_string(E);
        const std::vector<double> u = values(T * D, udt), w = values(D * E, f32, 0.1),
                                  dlogits = values(T * E, f32), du0 = values(T * D, udt),
                                  dw0 = values(D * E, f32);
        const Tensor uc = on_cpu({T, D}, u), wc = on_cpu({D, E}, w), dlc = on_cpu({T, E}, dlogits);
        const Tensor ug = on_gpu({T, D}, u, udt), wg = on_gpu({D, E}, w, f32),
                     dlg = on_gpu({T, E}, dlogits, f32);
        // forward
        Tensor lc = cpu().alloc({T, E}, f32), lg = poisoned({T, E}, f32);
        cpu().router_logits(lc, uc, wc);
        gpu().router_logits(lg, ug, wg);
        if (beta == 0.0) expect_close(lg, lc, 1e-5, name, udt);
        // backward: dw over NaN (beta 0) or accumulated into dw0; du accumulated into du0.
        const auto run_backward = [&](const Tensor& u_dev, const Tensor& du_dev) {
          Tensor dw = beta == 0.0 ? poisoned({D, E}, f32) : on_gpu({D, E}, dw0, f32);
          gpu().router_logits_backward(dw, du_dev, dlg, u_dev, wg, beta);
          return dw;
        };
        Tensor dwc = on_cpu({D, E}, dw0), duc = on_cpu({T, D}, du0);
        cpu().router_logits_backward(dwc, duc, dlc, uc, wc, beta);
        Tensor dug = on_gpu({T, D}, du0, udt);
        const Tensor dwg = run_backward(ug, dug);
        const std::string back = name + (beta == 0.0 ? " bwd b0" : " bwd b1");
        expect_close(dwg, dwc, 1e-5, back + " dw", udt);
        expect_close(dug, duc, Tol{1e-5, 4e-3}, back + " du", udt);
        // Run to run: the same bits.
        Tensor lg2 = poisoned({T, E}, f32), dug2 = on_gpu({T, D}, du0, udt);
        gpu().router_logits(lg2, ug, wg);
        const Tensor dwg2 = run_backward(ug, dug2);
        expect_bitwise(lg2, lg, name + " run to run");
        expect_bitwise(dwg2, dwg, back + " dw run to run");
        expect_bitwise(dug2, dug, back + " du run to run");
        // Misaligned rows take the element path, with the same lanes and order: the same bits.
        const Tensor um = misaligned_as({T, D}, u, udt);
        Tensor lm = poisoned({T, E}, f32), dum = misaligned_as({T, D}, du0, udt);
        gpu().router_logits(lm, um, wg);
        const Tensor dwm = run_backward(um, dum);
        expect_bitwise(lm, lg, name + " misaligned");
        expect_bitwise(dwm, dwg, back + " dw misaligned");
        expect_bitwise(dum, dug, back + " du misaligned");
      }
}

// The 1.81B MoE's router shape (T 8192, D 2048, E 8, bf16 u): the kernels against the reference
// path they replace (Backend's defaults: an f32 copy of u, cuBLAS, add), which also checks them
// at full size. Times are printed, not checked.
TEST_F(CudaVec, RouterProjectionAtModelSize) {
  const int64_t T = 8192, D = 2048, E = 8;
  const DType f32 = DType::f32;
  const Tensor u = on_gpu({T, D}, values(T * D, bf)), w = on_gpu({D, E}, values(D * E, f32, 0.02), f32);
  const Tensor dlogits = on_gpu({T, E}, values(T * E, f32), f32);
  const std::vector<double> du0 = values(T * D, bf);
  Tensor logits = poisoned({T, E}, f32), logits_ref = poisoned({T, E}, f32);
  Tensor dw = poisoned({D, E}, f32), dw_ref = poisoned({D, E}, f32);
  Tensor du = on_gpu({T, D}, du0), du_ref = on_gpu({T, D}, du0);
  gpu().router_logits(logits, u, w);
  gpu().Backend::router_logits(logits_ref, u, w);
  gpu().router_logits_backward(dw, du, dlogits, u, w, 0.0);
  gpu().Backend::router_logits_backward(dw_ref, du_ref, dlogits, u, w, 0.0);
  // Both sides are on the device here.
  const auto close = [&](const Tensor& got, const Tensor& want, double tol, const char* what) {
    const double e = rel_error(gpu().read(got), gpu().read(want));
    std::printf("[ rel err  ] %-44s %-5s %.3e (tol %.1e)\n", what, dtype_name(bf), e, tol);
    EXPECT_LE(e, tol) << what;
  };
  close(logits, logits_ref, 1e-5, "router_logits vs reference (model size)");
  close(dw, dw_ref, 1e-5, "router_logits_backward dw vs reference");
  // du: both round du + sum to bf16 once; sums in another order flip a rare last bit.
  close(du, du_ref, 1e-3, "router_logits_backward du vs reference");
  const auto ms = [&](auto&& op) {
    op();  // warm (scratch, module load)
    gpu().synchronize();
    const int reps = 50;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) op();
    gpu().synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
               .count() / reps;
  };
  // The MoE layer's whole input gradient (router_input_grad) against its reference (the gather,
  // then the du term through cuBLAS and add), with the gather of a dropless top-2 plan.
  const int64_t K = 2, R = T * K;
  std::vector<int32_t> slots(T * K);
  for (int64_t i = 0; i < T * K; ++i) slots[i] = static_cast<int32_t>((i * 7919) % R);
  const Tensor slot_row = ints_gpu(slots), rows = on_gpu({R, D}, values(R * D, bf));
  Tensor dx = poisoned({T, D}, bf), dx_ref = poisoned({T, D}, bf);
  gpu().router_input_grad(dx, rows, slot_row, K, dlogits, w);
  gpu().Backend::router_input_grad(dx_ref, rows, slot_row, K, dlogits, w);
  close(dx, dx_ref, 4e-3, "router_input_grad vs reference (model size)");
  const double input = ms([&] { gpu().router_input_grad(dx, rows, slot_row, K, dlogits, w); });
  const double input_split = ms([&] {
    gpu().permute_rows_backward(dx_ref, rows, slot_row, K);
    gpu().router_logits_backward(dw, dx_ref, dlogits, u, w, 1.0);
  });
  std::printf(
      "[ time     ] router_input_grad %.4f ms; permute_rows_backward then "
      "router_logits_backward (with dw) %.4f ms\n",
      input, input_split);

  const double fwd = ms([&] { gpu().router_logits(logits, u, w); });
  const double fwd_ref = ms([&] { gpu().Backend::router_logits(logits_ref, u, w); });
  const double bwd = ms([&] { gpu().router_logits_backward(dw, du, dlogits, u, w, 1.0); });
  const double bwd_ref =
      ms([&] { gpu().Backend::router_logits_backward(dw_ref, du_ref, dlogits, u, w, 1.0); });
  std::printf("[ time     ] router projection T=%lld D=%lld E=%lld bf16 u\n"
              "[ time     ]   forward   %.4f ms (reference %.4f ms; its bytes alone ~0.008)\n"
              "[ time     ]   backward  %.4f ms (reference %.4f ms; its bytes alone ~0.024)\n",
              static_cast<long long>(T), static_cast<long long>(D), static_cast<long long>(E), fwd,
              fwd_ref, bwd, bwd_ref);
}

// ---- profile regions ------------------------------------------------------------------------
// Work enqueued inside Backend::profile_region (a communicator's collectives in training) shows
// in the events table under the region's name; outside a profile the region is null.
TEST_F(CudaVec, ProfileRegionInTheEventsTable) {
  if (std::getenv("SY_CUDA_PROFILE") == nullptr) {
    EXPECT_EQ(gpu().profile_region("idle"), nullptr);
  }
  const Tensor x = gpu().alloc({1 << 20}, DType::f32);
  cuda_profile_begin(gpu());
  {
    const auto region = gpu().profile_region("test region");
    EXPECT_NE(region, nullptr);
    gpu().fill(x, 1.0);
  }
  const std::string table = cuda_profile_report(gpu(), 1);
  EXPECT_NE(table.find("test region"), std::string::npos) << table;
}

// The MoE layer's input gradient (router_input_grad) over the shapes its kernel splits: K past
// one batch of loaded rows (8, or 4 on the element path), dropped assignments, E = 64 (the
// fine-grained routing), D not a multiple of 8 (the element path), N not a multiple of a warp's
// 4 tokens; against the CPU, and the same bits run to run.
TEST_P(CudaOps, RouterInputGrad) {
  struct Size {
    int64_t N, K, E, D;
  };
  // K 1 and 2 on bf16 rows take the kernel that loads the rows before the router's sums (D 264:
  // a second, partial tile of d; N not a whole number of a block's tokens).
  for (const Size size : {Size{203, 10, 12, 40}, Size{77, 8, 64, 20}, Size{1001, 8, 64, 768},
                          Size{203, 2, 8, 264}, Size{77, 1, 8, 2048}}) {
    const int64_t N = size.N, K = size.K, E = size.E, D = size.D;
    // Every third assignment dropped; the kept ones in a scrambled order of rows.
    std::vector<int32_t> slots(N * K, -1);
    int64_t R = 0;
    for (int64_t i = 0; i < N * K; ++i)
      if (i % 3 != 1) slots[i] = static_cast<int32_t>(R++);
    for (int32_t& r : slots)
      if (r >= 0) r = static_cast<int32_t>((static_cast<int64_t>(r) * 7919) % R);
    const std::string name = "router_input_grad N=" + std::to_string(N) +
                             " K=" + std::to_string(K) + " E=" + std::to_string(E) +
                             " D=" + std::to_string(D);
    const std::vector<double> rows = values(R * D, dt()), w = values(D * E, DType::f32, 0.1),
                              dl = values(N * E, DType::f32);
    Tensor expected = cpu().alloc({N, D}, DType::f32);
    cpu().router_input_grad(expected, on_cpu({R, D}, rows), ints_cpu(slots), K, on_cpu({N, E}, dl),
                            on_cpu({D, E}, w));
    Tensor got[2] = {poisoned({N, D}, dt()), poisoned({N, D}, dt())};
    for (const Tensor& out : got)
      gpu().router_input_grad(out, on_gpu({R, D}, rows, dt()), ints_gpu(slots), K,
                              on_gpu({N, E}, dl, DType::f32), on_gpu({D, E}, w, DType::f32));
    expect_close(got[0], expected, Tol{1e-6, 4e-3}, name, dt());
    expect_bitwise(got[1], got[0], name + " run to run");
  }
}

// ---- permute / unpermute --------------------------------------------------------------------
TEST_P(CudaOps, PermuteAndCombine) {
  const int64_t N = 90, K = 2, E = 5, D = 24;
  const std::vector<int32_t> topk = random_topk(N, K, E, 91);
  Tensor sr = cpu().alloc({N * K}, DType::i32), se = cpu().alloc({N * K}, DType::i32),
         as = cpu().alloc({E}, DType::i32);
  RoutingRule rule;
  rule.top_k = K;
  rule.capacity = 30;
  const std::vector<int64_t> kept_per =
      cpu()
          .router_plan(sr, se, as, ints_cpu(topk).reshape({N, K}), cpu().zeros({N, K}, DType::f32),
                       cpu().zeros({N, E}, DType::f32), Tensor(), rule)
          .tokens_per_expert;
  const int64_t R = std::accumulate(kept_per.begin(), kept_per.end(), int64_t{0});
  ASSERT_LT(R, N * K) << "the test wants drops";
  Tensor srg = ints_gpu(cpu().read_i32(sr));

  const std::vector<double> x = values(N * D, dt());
  Tensor pc = cpu().alloc({R, D}, DType::f32), pg = poisoned({R, D}, dt());
  cpu().permute_rows(pc, on_cpu({N, D}, x), sr, K);
  gpu().permute_rows(pg, on_gpu({N, D}, x, dt()), srg, K);
  expect_close(pg, pc, Tol{0, 0}, "permute_rows", dt());

  const std::vector<double> dxp = values(R * D, dt());
  Tensor dxc = cpu().alloc({N, D}, DType::f32), dxg = poisoned({N, D}, dt());
  cpu().permute_rows_backward(dxc, on_cpu({R, D}, dxp), sr, K);
  gpu().permute_rows_backward(dxg, on_gpu({R, D}, dxp, dt()), srg, K);
  expect_close(dxg, dxc, Tol{1e-7, 4e-3}, "permute_rows_backward", dt());

  // The MoE layer's whole input gradient: the gather and the router projection's du term (f32
  // w, dlogits) in one op, against the CPU's two ops; run to run the same bits.
  const std::vector<double> w = values(D * E, DType::f32, 0.1), dl = values(N * E, DType::f32);
  const Tensor wg = on_gpu({D, E}, w, DType::f32), dlg = on_gpu({N, E}, dl, DType::f32);
  Tensor dic = cpu().alloc({N, D}, DType::f32);
  cpu().router_input_grad(dic, on_cpu({R, D}, dxp), sr, K, on_cpu({N, E}, dl), on_cpu({D, E}, w));
  Tensor dig[2] = {poisoned({N, D}, dt()), poisoned({N, D}, dt())};
  for (const Tensor& out : dig)
    gpu().router_input_grad(out, on_gpu({R, D}, dxp, dt()), srg, K, dlg, wg);
  expect_close(dig[0], dic, Tol{1e-6, 4e-3}, "router_input_grad", dt());
  expect_bitwise(dig[1], dig[0], "router_input_grad run to run");

  const std::vector<double> y = values(R * D, dt()), gates = values(N * K, st(), 0.5);
  Tensor yc = on_cpu({R, D}, y), yg = on_gpu({R, D}, y, dt());
  Tensor gc = on_cpu({N, K}, gates), gg = on_gpu({N, K}, gates, st());
  Tensor oc = cpu().alloc({N, D}, DType::f32), og = poisoned({N, D}, dt());
  cpu().unpermute_combine(oc, yc, gc, sr);
  gpu().unpermute_combine(og, yg, gg, srg);
  expect_close(og, oc, Tol{1e-6, 4e-3}, "unpermute_combine", dt());

  const std::vector<double> dout = values(N * D, dt());
  Tensor dyc = cpu().alloc({R, D}, DType::f32), dgc = cpu().alloc({N, K}, DType::f32);
  Tensor dyg = poisoned({R, D}, dt()), dgg = poisoned({N, K}, st());
  cpu().unpermute_combine_backward(dyc, dgc, on_cpu({N, D}, dout), yc, gc, sr);
  gpu().unpermute_combine_backward(dyg, dgg, on_gpu({N, D}, dout, dt()), yg, gg, srg);
  expect_close(dyg, dyc, Tol{1e-7, 4e-3}, "unpermute_combine_backward dy", dt());
  expect_close(dgg, dgc, Tol{1e-6, 1e-5}, "unpermute_combine_backward dgates", dt());
}

// ---- optimizer (fp32 master weights) --------------------------------------------------------
TEST_F(CudaF32, AdamWAndSgdMatchTheCpu) {
  const int64_t n = 4099;
  const std::vector<double> p0 = values(n, DType::f32), m0 = values(n, DType::f32, 0.01);
  std::vector<double> v0 = values(n, DType::f32, 0.01);
  for (double& v : v0) v = static_cast<float>(v * v);
  for (double wd : {0.0, 0.1}) {
    Tensor pc = on_cpu({n}, p0), mc = on_cpu({n}, m0), vc = on_cpu({n}, v0);
    Tensor pg = on_gpu({n}, p0, DType::f32), mg = on_gpu({n}, m0, DType::f32), vg = on_gpu({n}, v0, DType::f32);
    for (int64_t step = 1; step <= 3; ++step) {
      const std::vector<double> g = values(n, DType::f32, 0.1);
      cpu().adamw_update(pc, on_cpu({n}, g), mc, vc, 3e-3, 0.9, 0.95, 1e-8, wd, step);
      gpu().adamw_update(pg, on_gpu({n}, g, DType::f32), mg, vg, 3e-3, 0.9, 0.95, 1e-8, wd, step);
    }
    // Same operations, no contraction, IEEE sqrt and division: bit for bit.
    EXPECT_EQ(gpu().read(pg), cpu().read(pc)) << "adamw param, wd " << wd;
    EXPECT_EQ(gpu().read(mg), cpu().read(mc)) << "adamw exp_avg";
    EXPECT_EQ(gpu().read(vg), cpu().read(vc)) << "adamw exp_avg_sq";
  }
  const std::vector<double> g = values(n, DType::f32);
  Tensor pc = on_cpu({n}, p0), pg = on_gpu({n}, p0, DType::f32);
  cpu().sgd_update(pc, on_cpu({n}, g), 0.05);
  gpu().sgd_update(pg, on_gpu({n}, g, DType::f32), 0.05);
  EXPECT_EQ(gpu().read(pg), cpu().read(pc)) << "sgd";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::f32, DType::bf16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

}  // namespace
}  // namespace sy
