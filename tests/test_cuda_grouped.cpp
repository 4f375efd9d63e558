// The grouped expert GEMMs (Backend::grouped_gemm, grouped_gemm_wgrad, grouped_gemm_pair;
// model/cuda/grouped_gemm*)
// and the grouped expert FFN (moe.expert_kernel).
//
// On the GPU, once per kernel that SY_GROUPED_GEMM can force (cublas: the per-segment gemm loop;
// mma: the portable mma.sync kernel; sm90: the Hopper wgmma kernel), each against the CPU
// reference on ragged segments: empty experts, sizes 1, 7, 127, 129, 300 (no multiple of a
// tile), one expert holding every row, G = 1, 8 and 64; trans_b both ways, accumulate both
// ways, bf16 data with f32 and bf16 C. Outputs are poisoned (NaN) first, guard rows after C must
// stay untouched, and a second run must give the same bits. A kernel that declines every case
// (not built for this device, or a placeholder) is reported and its test skipped. Then whole
// bf16 MoE models (dropless, and a capacity factor that drops) with expert_kernel grouped
// against cublas and the CPU, within the bounds of tests/test_cuda_model.cpp.
//
// On the CPU (no GPU needed): the default grouped ops are the per-segment GEMMs bit for bit, a
// model with expert_kernel grouped computes the same bits as cublas, and the config key
// validates. Tolerances are in docs/cuda.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <string>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/rng.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "tests/cuda_test_util.h"
#include "trainer/config.h"

namespace sy {
namespace {

using test::bf16_round;
using test::build;
using test::Built;
using test::filled;
using test::kNaN;
using test::min_topk_margin;
using test::rel_error;
using test::small_model;
using test::tokens;

constexpr double kGuard = 776.0;  // the rows after C, which no kernel may write (exact in bf16)
// Relative L2 error against the CPU (docs/cuda.md): f32 C is fp32 accumulation in another
// order; bf16 C adds the rounding of the output (about 1.7e-3 in this measure).
constexpr double kF32CTol = 1e-5, kBf16CTol = 4e-3;

std::vector<double> values(int64_t n, uint64_t seed, bool bf16) {
  CounterRng rng(seed);
  std::vector<double> v(n);
  for (double& x : v) {
    x = rng.normal();
    x = bf16 ? bf16_round(x) : static_cast<float>(x);
  }
  return v;
}

int64_t total(const std::vector<int64_t>& rows) {
  int64_t sum = 0;
  for (int64_t r : rows) sum += r;
  return sum;
}

// ---- the segment layouts --------------------------------------------------------------------
struct Segments {
  std::string name;
  std::vector<int64_t> rows;
};

std::vector<Segments> segment_cases() {
  std::vector<int64_t> many(64);
  for (int64_t g = 0; g < 64; ++g) many[g] = g % 9 == 0 ? 0 : (g * 37) % 41;  // 0..40, some empty
  return {
      {"ragged G=8", {1, 0, 7, 127, 129, 300, 0, 64}},
      {"one expert holds all", {0, 0, 0, 517, 0, 0, 0, 0}},
      {"G=1", {300}},
      {"G=64", many},
  };
}

// (K, N): neither a multiple of the mma kernel's 64 x 256 steps; the second spans several.
const std::vector<std::pair<int64_t, int64_t>> kDims = {{200, 136}, {264, 520}};

// ---- CPU: the defaults are the per-segment GEMMs ----------------------------------------------
TEST(GroupedCpu, DefaultsAreThePerSegmentGemmsBitwise) {
  auto cpu = make_cpu_backend();
  const std::vector<int64_t> rows = {5, 0, 17, 3};
  const int64_t G = 4, M = total(rows), K = 12, N = 9;
  uint64_t seed = 1;
  const Tensor A = filled(*cpu, {M, K}, DType::f32, values(M * K, seed++, false));
  const Tensor B = filled(*cpu, {G, K, N}, DType::f32, values(G * K * N, seed++, false));
  const Tensor Bt = filled(*cpu, {G, N, K}, DType::f32, values(G * K * N, seed++, false));
  const Tensor Bm = filled(*cpu, {M, N}, DType::f32, values(M * N, seed++, false));
  const std::vector<double> c0 = values(M * N, seed++, false);
  const std::vector<double> w0 = values(G * K * N, seed++, false);
  for (bool accumulate : {false, true}) {
    for (bool trans_b : {false, true}) {
      const Tensor& b = trans_b ? Bt : B;
      Tensor grouped = filled(*cpu, {M, N}, DType::f32, c0);
      Tensor loop = filled(*cpu, {M, N}, DType::f32, c0);
      cpu->grouped_gemm(grouped, A, b, trans_b, rows, accumulate);
      for (int64_t g = 0, begin = 0; g < G; begin += rows[g], ++g)
        if (rows[g] > 0)
          cpu->gemm(loop.rows(begin, begin + rows[g]), A.rows(begin, begin + rows[g]), false,
                    b.rows(g, g + 1).reshape({b.dim(1), b.dim(2)}), trans_b, 1.0,
                    accumulate ? 1.0 : 0.0);
      EXPECT_EQ(cpu->read(grouped), cpu->read(loop)) << "trans_b " << trans_b;
    }
    Tensor grouped = filled(*cpu, {G, K, N}, DType::f32, w0);
    Tensor loop = filled(*cpu, {G, K, N}, DType::f32, w0);
    cpu->grouped_gemm_wgrad(grouped, A, Bm, rows, accumulate);
    for (int64_t g = 0, begin = 0; g < G; begin += rows[g], ++g) {
      const Tensor c = loop.rows(g, g + 1).reshape({K, N});
      if (rows[g] > 0)
        cpu->gemm(c, A.rows(begin, begin + rows[g]), true, Bm.rows(begin, begin + rows[g]), false,
                  1.0, accumulate ? 1.0 : 0.0);
      else if (!accumulate)
        cpu->fill(c, 0.0);
    }
    EXPECT_EQ(cpu->read(grouped), cpu->read(loop)) << "wgrad, accumulate " << accumulate;
  }
  // The pair: the first product written, the second added, exactly as two grouped calls.
  const int64_t K2 = 7;
  const Tensor A2 = filled(*cpu, {M, K2}, DType::f32, values(M * K2, seed++, false));
  const Tensor B2 = filled(*cpu, {G, K2, N}, DType::f32, values(G * K2 * N, seed++, false));
  const Tensor B2t = filled(*cpu, {G, N, K2}, DType::f32, values(G * K2 * N, seed++, false));
  for (bool trans_b : {false, true}) {
    Tensor pair = filled(*cpu, {M, N}, DType::f32, c0);
    Tensor twice = filled(*cpu, {M, N}, DType::f32, c0);
    cpu->grouped_gemm_pair(pair, A, trans_b ? Bt : B, A2, trans_b ? B2t : B2, trans_b, rows);
    cpu->grouped_gemm(twice, A, trans_b ? Bt : B, trans_b, rows, false);
    cpu->grouped_gemm(twice, A2, trans_b ? B2t : B2, trans_b, rows, true);
    EXPECT_EQ(cpu->read(pair), cpu->read(twice)) << "pair, trans_b " << trans_b;
  }
  EXPECT_THROW(cpu->grouped_gemm_pair(filled(*cpu, {M, N}, DType::f32, c0), A, B, A2, Bt, false,
                                      rows),
               std::runtime_error);  // B2 [G, N, K2] where [G, K2, N] is due
  // The empty expert's wgrad block: zero, or untouched with accumulate.
  Tensor w = filled(*cpu, {G, K, N}, DType::f32, w0);
  cpu->grouped_gemm_wgrad(w, A, Bm, rows, false);
  for (double v : cpu->read(w.rows(1, 2))) ASSERT_EQ(v, 0.0);
  EXPECT_THROW(cpu->grouped_gemm(filled(*cpu, {M, N}, DType::f32, c0), A, B, false,
                                 std::vector<int64_t>{5, 0, 17, 2}, false),
               std::runtime_error);
}

// ---- models ---------------------------------------------------------------------------------
// On the CPU the grouped FFN runs the default grouped ops: the same GEMMs on the same rows.
TEST(GroupedCpu, ModelWithGroupedExpertsIsBitwiseCublas) {
  auto cpu = make_cpu_backend();
  for (double capacity_factor : {0.0, 0.5}) {
    const TransformerOptions options = small_model(false, {true, false, true}, capacity_factor);
    const int64_t B = 2, T = B * options.model.seq_len;
    const std::vector<int32_t> inputs = tokens(T, options.model.vocab_size, 1);
    const std::vector<int32_t> targets = tokens(T, options.model.vocab_size, 2);
    Built loop = build(*cpu, options, DType::f32, 7, 1.0, ExpertKernel::cublas);
    Built grouped = build(*cpu, options, DType::f32, 7, 1.0, ExpertKernel::grouped);
    loop.model->zero_grads();
    grouped.model->zero_grads();
    const GroupStats a = loop.model->forward_backward(inputs, targets, B, true, 0.5);
    const GroupStats b = grouped.model->forward_backward(inputs, targets, B, true, 0.5);
    EXPECT_EQ(a.loss, b.loss) << "capacity factor " << capacity_factor;
    EXPECT_EQ(a.dropped, b.dropped);
    if (capacity_factor > 0) {
      EXPECT_GT(a.dropped, 0) << "the capacity config must drop";
    }
    std::vector<Param*> pa = loop.model->params(), pb = grouped.model->params();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i)
      EXPECT_EQ(cpu->read(pa[i]->grad), cpu->read(pb[i]->grad)) << pa[i]->path;
  }
}

TEST(GroupedCpu, ConfigKeyValidates) {
  EXPECT_EQ(Config{}.moe.expert_kernel, ExpertKernel::automatic);
  const std::pair<const char*, ExpertKernel> kernels[] = {{"auto", ExpertKernel::automatic},
                                                          {"grouped", ExpertKernel::grouped},
                                                          {"cublas", ExpertKernel::cublas}};
  for (const auto& [name, kernel] : kernels) {
    const Config config = load_config_text("", "<test>", {std::string("moe.expert_kernel=") + name});
    EXPECT_EQ(config.moe.expert_kernel, kernel) << name;
    EXPECT_NE(config_to_yaml(config).find("expert_kernel: \"" + std::string(name) + "\""),
              std::string::npos) << name;
  }
  std::vector<std::string> problems;
  EXPECT_THROW(load_config_text("", "<test>", {"moe.expert_kernel=fast"}, &problems), ConfigError);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("moe.expert_kernel"), std::string::npos) << problems[0];
}

// ---- GPU, per forced kernel -----------------------------------------------------------------
class GroupedGemm : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    SY_SKIP_WITHOUT_GPU();
    cpu = make_cpu_backend();
    // The sm90 kernel on every shape here, whatever SY_GG_SM90_ROUTE the caller set.
    setenv("SY_GG_SM90_ROUTE", "0", 1);
    // The backend reads SY_GROUPED_GEMM once, when it is made.
    const char* before = std::getenv("SY_GROUPED_GEMM");
    const std::string saved = before ? before : "";
    setenv("SY_GROUPED_GEMM", GetParam().c_str(), 1);
    gpu = make_cuda_backend(0);
    if (before) setenv("SY_GROUPED_GEMM", saved.c_str(), 1);
    else unsetenv("SY_GROUPED_GEMM");
  }

  // After a grouped op: did the forced kernel take it? The loop and mma take every case here
  // (K and N are multiples of 8, the tensors aligned); sm90 may decline some (or all, where it
  // is not built or not written yet), and then the loop ran them.
  void note_kernel(const std::string& what) {
    const std::string ran = cuda_grouped_gemm_kernel(*gpu);
    ++cases;
    if (ran == GetParam()) {
      ++taken;
    } else {
      EXPECT_EQ(GetParam(), "sm90") << what << ": forced " << GetParam() << " but " << ran << " ran";
      EXPECT_EQ(ran, "cublas") << what;
    }
  }
  // The sums of squares of C that the Hopper kernel returns with a `=` wgrad (the gradient
  // norm's input, Param::grad_squares): only there, repeatable bit for bit, and equal to C's own
  // sum of squares (of the stored values, bf16 ones too) within f32 rounding of the 16-square
  // partial sums.
  void check_squares(const std::string& what, bool summable, const bool (&summed)[2],
                     const std::vector<double> (&squares)[2], const std::vector<double>& c) {
    const bool want = summable && cuda_grouped_gemm_kernel(*gpu) == "sm90";
    EXPECT_EQ(summed[0], want) << what << ": squares returned";
    EXPECT_EQ(summed[1], want) << what << ": squares returned";
    if (!want || !summed[0] || !summed[1]) return;
    EXPECT_EQ(squares[0], squares[1]) << what << ": squares not repeatable";
    double got = 0, expected = 0;
    for (double v : squares[0]) got += v;
    for (double v : c) expected += v * v;
    EXPECT_NEAR(got, expected, 1e-6 * expected) << what << ": sum of squares";
    ++squares_checked;
  }
  int squares_checked = 0;

  void report() {
    std::printf("[ kernel   ] %s took %d of %d cases\n", GetParam().c_str(), taken, cases);
    if (squares_checked > 0)
      std::printf("[ squares  ] %d wgrad calls returned C's sum of squares\n", squares_checked);
    if (taken == 0) GTEST_SKIP() << GetParam() << " declined every case (not available here)";
  }

  // C on the GPU: `rows` rows of a buffer with 16 guard rows after them, C poisoned (or c0).
  Tensor output(Tensor& buffer, int64_t rows, int64_t cols, DType dtype,
                const std::vector<double>* c0) {
    buffer = gpu->alloc({rows + 16, cols}, dtype);
    gpu->fill(buffer, kGuard);
    Tensor c = buffer.rows(0, rows);
    if (c0) gpu->write(c, std::span<const double>(*c0));
    else gpu->fill(c, kNaN);
    return c;
  }
  void expect_guard(const Tensor& buffer, int64_t rows, const std::string& what) {
    const std::vector<double> guard = gpu->read(buffer.rows(rows, rows + 16));
    for (double v : guard) ASSERT_EQ(v, kGuard) << what << ": a kernel wrote past C";
  }
  void check(const std::string& what, const std::vector<double>& got,
             const std::vector<double>& again, const std::vector<double>& want, DType c_dtype) {
    const double tol = c_dtype == DType::f32 ? kF32CTol : kBf16CTol;
    const double e = rel_error(got, want);
    worst[c_dtype] = std::max(worst[c_dtype], e);
    EXPECT_LE(e, tol) << what;
    EXPECT_TRUE(got == again) << what << ": a second run gave other bits";
  }

  std::unique_ptr<Backend> cpu, gpu;
  int cases = 0, taken = 0;
  std::map<DType, double> worst;
};

TEST_P(GroupedGemm, ForwardMatchesTheCpu) {
  uint64_t seed = 100;
  for (const Segments& s : segment_cases()) {
    const int64_t G = static_cast<int64_t>(s.rows.size()), M = total(s.rows);
    for (auto [K, N] : kDims) {
      const std::vector<double> a = values(M * K, seed++, true);
      const std::vector<double> b = values(G * K * N, seed++, true);
      const Tensor a_cpu = filled(*cpu, {M, K}, DType::f32, a);
      const Tensor a_gpu = filled(*gpu, {M, K}, DType::bf16, a);
      for (bool trans_b : {false, true}) {
        const Shape b_shape = trans_b ? Shape{G, N, K} : Shape{G, K, N};
        const Tensor b_cpu = filled(*cpu, b_shape, DType::f32, b);
        const Tensor b_gpu = filled(*gpu, b_shape, DType::bf16, b);
        for (DType c_dtype : {DType::f32, DType::bf16}) {
          for (bool accumulate : {false, true}) {
            const std::string what = s.name + " K=" + std::to_string(K) + " N=" +
                                     std::to_string(N) + (trans_b ? " trans_b" : "") + " C " +
                                     dtype_name(c_dtype) + (accumulate ? " +=" : " =");
            const std::vector<double> c0 = values(M * N, seed++, c_dtype == DType::bf16);
            Tensor c_cpu = filled(*cpu, {M, N}, DType::f32, accumulate ? c0 : std::vector<double>(M * N, 0.0));
            cpu->grouped_gemm(c_cpu, a_cpu, b_cpu, trans_b, s.rows, accumulate);
            std::vector<double> runs[2];
            for (std::vector<double>& run : runs) {
              Tensor buffer;
              Tensor c = output(buffer, M, N, c_dtype, accumulate ? &c0 : nullptr);
              gpu->grouped_gemm(c, a_gpu, b_gpu, trans_b, s.rows, accumulate);
              note_kernel(what);
              run = gpu->read(c);
              expect_guard(buffer, M, what);
            }
            check(what, runs[0], runs[1], cpu->read(c_cpu), c_dtype);
          }
        }
      }
    }
  }
  std::printf("[ rel err  ] grouped_gemm %s: worst C f32 %.3e (tol %.0e), C bf16 %.3e (tol %.0e)\n",
              GetParam().c_str(), worst[DType::f32], kF32CTol, worst[DType::bf16], kBf16CTol);
  report();
}

// dx = dh1 w1^T + dh3 w3^T in one op: the Hopper kernel sums both products in one accumulator
// (C rounded once), the other kernels run the default's two calls; each against the CPU.
TEST_P(GroupedGemm, PairMatchesTheCpu) {
  uint64_t seed = 300;
  for (const Segments& s : segment_cases()) {
    const int64_t G = static_cast<int64_t>(s.rows.size()), M = total(s.rows);
    for (auto [K, N] : kDims) {
      const int64_t K2 = K + 72;  // another reduction length, again no multiple of 64
      const std::vector<double> a = values(M * K, seed++, true), a2 = values(M * K2, seed++, true);
      const std::vector<double> b = values(G * K * N, seed++, true);
      const std::vector<double> b2 = values(G * K2 * N, seed++, true);
      for (bool trans_b : {false, true}) {
        const Shape b_shape = trans_b ? Shape{G, N, K} : Shape{G, K, N};
        const Shape b2_shape = trans_b ? Shape{G, N, K2} : Shape{G, K2, N};
        Tensor c_cpu = filled(*cpu, {M, N}, DType::f32, std::vector<double>(M * N, 0.0));
        cpu->grouped_gemm_pair(c_cpu, filled(*cpu, {M, K}, DType::f32, a),
                               filled(*cpu, b_shape, DType::f32, b),
                               filled(*cpu, {M, K2}, DType::f32, a2),
                               filled(*cpu, b2_shape, DType::f32, b2), trans_b, s.rows);
        const Tensor a_gpu = filled(*gpu, {M, K}, DType::bf16, a);
        const Tensor a2_gpu = filled(*gpu, {M, K2}, DType::bf16, a2);
        const Tensor b_gpu = filled(*gpu, b_shape, DType::bf16, b);
        const Tensor b2_gpu = filled(*gpu, b2_shape, DType::bf16, b2);
        for (DType c_dtype : {DType::f32, DType::bf16}) {
          const std::string what = "pair " + s.name + " K=" + std::to_string(K) + "+" +
                                   std::to_string(K2) + " N=" + std::to_string(N) +
                                   (trans_b ? " trans_b" : "") + " C " + dtype_name(c_dtype);
          std::vector<double> runs[2];
          for (std::vector<double>& run : runs) {
            Tensor buffer;
            Tensor c = output(buffer, M, N, c_dtype, nullptr);
            gpu->grouped_gemm_pair(c, a_gpu, b_gpu, a2_gpu, b2_gpu, trans_b, s.rows);
            note_kernel(what);
            run = gpu->read(c);
            expect_guard(buffer, M, what);
          }
          check(what, runs[0], runs[1], cpu->read(c_cpu), c_dtype);
        }
      }
    }
  }
  std::printf("[ rel err  ] grouped_gemm_pair %s: worst C f32 %.3e (tol %.0e), C bf16 %.3e (tol "
              "%.0e)\n",
              GetParam().c_str(), worst[DType::f32], kF32CTol, worst[DType::bf16], kBf16CTol);
  report();
}

TEST_P(GroupedGemm, WgradMatchesTheCpu) {
  uint64_t seed = 200;
  for (const Segments& s : segment_cases()) {
    const int64_t G = static_cast<int64_t>(s.rows.size()), M = total(s.rows);
    for (auto [K, N] : kDims) {
      const std::vector<double> a = values(M * K, seed++, true);
      const std::vector<double> b = values(M * N, seed++, true);
      const Tensor a_cpu = filled(*cpu, {M, K}, DType::f32, a);
      const Tensor a_gpu = filled(*gpu, {M, K}, DType::bf16, a);
      const Tensor b_cpu = filled(*cpu, {M, N}, DType::f32, b);
      const Tensor b_gpu = filled(*gpu, {M, N}, DType::bf16, b);
      std::vector<double> f32_written;  // the f32 `=` C, which the bf16 `=` C rounds
      for (DType c_dtype : {DType::f32, DType::bf16}) {
        for (bool accumulate : {false, true}) {
          const std::string what = "wgrad " + s.name + " K=" + std::to_string(K) + " N=" +
                                   std::to_string(N) + " C " + dtype_name(c_dtype) +
                                   (accumulate ? " +=" : " =");
          const std::vector<double> c0 = values(G * K * N, seed++, c_dtype == DType::bf16);
          Tensor c_cpu = filled(*cpu, {G, K, N}, DType::f32,
                                accumulate ? c0 : std::vector<double>(G * K * N, 0.0));
          cpu->grouped_gemm_wgrad(c_cpu, a_cpu, b_cpu, s.rows, accumulate);
          std::vector<double> runs[2], squares[2];
          bool summed[2] = {false, false};
          for (int r = 0; r < 2; ++r) {
            Tensor buffer;  // [G * K + 16, N]: C[g] blocks, then the guard rows
            Tensor c = output(buffer, G * K, N, c_dtype, accumulate ? &c0 : nullptr)
                           .reshape({G, K, N});
            Tensor partials;
            summed[r] = gpu->grouped_gemm_wgrad(c, a_gpu, b_gpu, s.rows, accumulate, &partials);
            note_kernel(what);
            runs[r] = gpu->read(c);
            if (summed[r]) squares[r] = gpu->read(partials);
            expect_guard(buffer, G * K, what);
          }
          check(what, runs[0], runs[1], cpu->read(c_cpu), c_dtype);
          check_squares(what, !accumulate, summed, squares, runs[0]);
          if (!accumulate && c_dtype == DType::f32) f32_written = runs[0];
          // One kernel, one accumulation order: the bf16 C is the f32 C rounded once (a bf16
          // expert weight gradient, TransformerOptions::bf16_grads).
          if (!accumulate && c_dtype == DType::bf16 && GetParam() == "sm90" &&
              cuda_grouped_gemm_kernel(*gpu) == "sm90") {
            ASSERT_EQ(f32_written.size(), runs[0].size()) << what;
            for (size_t i = 0; i < runs[0].size(); ++i)
              ASSERT_EQ(runs[0][i], bf16_round(f32_written[i])) << what << ": element " << i;
          }
        }
      }
    }
  }
  std::printf("[ rel err  ] grouped_gemm_wgrad %s: worst C f32 %.3e (tol %.0e), C bf16 %.3e (tol "
              "%.0e)\n",
              GetParam().c_str(), worst[DType::f32], kF32CTol, worst[DType::bf16], kBf16CTol);
  report();
}

// Whole bf16 models: expert_kernel grouped (on the forced kernel) against cublas and against the
// CPU in fp32, within the bf16 bounds of tests/test_cuda_model.cpp; routing must be identical
// (the seed is the first whose top-k choices win by 4% of the logit RMS, router weights x10).
void compare_models(Backend& cpu, Backend& gpu, const std::string& kernel,
                    const std::string& name, const TransformerOptions& options, int* taken) {
  constexpr double kLossTol = 1e-2, kGradTol = 6e-2, kMargin = 0.04, kRouterScale = 10.0;
  const int64_t B = 2, T = B * options.model.seq_len;
  const std::vector<int32_t> inputs = tokens(T, options.model.vocab_size, 1);
  const std::vector<int32_t> targets = tokens(T, options.model.vocab_size, 2);
  Built c;
  GroupStats sc;
  uint64_t seed = 0;
  double margin = 0;
  while (margin < kMargin && seed < 1000) {
    c = build(cpu, options, DType::f32, ++seed, kRouterScale, ExpertKernel::cublas);
    c.model->zero_grads();
    sc = c.model->forward_backward(inputs, targets, B, true, 0.5);
    margin = min_topk_margin(cpu, *c.model);
  }
  ASSERT_GE(margin, kMargin) << "no seed with well-separated routing";
  Built loop = build(gpu, options, DType::bf16, seed, kRouterScale, ExpertKernel::cublas);
  Built grouped = build(gpu, options, DType::bf16, seed, kRouterScale, ExpertKernel::grouped);
  loop.model->zero_grads();
  grouped.model->zero_grads();
  const GroupStats sl = loop.model->forward_backward(inputs, targets, B, true, 0.5);
  const GroupStats sg = grouped.model->forward_backward(inputs, targets, B, true, 0.5);
  const std::string ran = cuda_grouped_gemm_kernel(gpu);
  if (ran == kernel) ++*taken;
  else EXPECT_EQ(kernel, "sm90") << name << ": forced " << kernel << " but " << ran << " ran";
  EXPECT_EQ(sg.assignments_per_expert, sc.assignments_per_expert) << name << ": routing differs";
  EXPECT_EQ(sg.assignments_per_expert, sl.assignments_per_expert) << name << ": routing differs";
  EXPECT_EQ(sg.dropped, sc.dropped) << name;
  EXPECT_EQ(sg.dropped, sl.dropped) << name;
  if (options.moe.capacity_factor > 0) {
    EXPECT_GT(sg.dropped, 0) << name << ": the capacity config must drop";
  }
  const double vs_cpu = std::abs(sg.loss - sc.loss) / std::abs(sc.loss);
  const double vs_loop = std::abs(sg.loss - sl.loss) / std::abs(sl.loss);
  EXPECT_LE(vs_cpu, kLossTol) << name;
  EXPECT_LE(vs_loop, kLossTol) << name;
  std::vector<Param*> pc = c.model->params(), pl = loop.model->params(),
                      pg = grouped.model->params();
  double worst_cpu = 0, worst_loop = 0;
  std::string worst_path;
  for (size_t i = 0; i < pc.size(); ++i) {
    const std::vector<double> g = gpu.read(pg[i]->grad);
    const double e_cpu = rel_error(g, cpu.read(pc[i]->grad));
    const double e_loop = rel_error(g, gpu.read(pl[i]->grad));
    EXPECT_LE(e_cpu, kGradTol) << name << " grad " << pc[i]->path << " vs cpu";
    EXPECT_LE(e_loop, kGradTol) << name << " grad " << pc[i]->path << " vs cublas";
    worst_cpu = std::max(worst_cpu, e_cpu);
    if (e_loop > worst_loop) {
      worst_loop = e_loop;
      worst_path = pc[i]->path;
    }
  }
  std::printf("[ model    ] %s, grouped on %s: loss vs cpu %.3e, vs cublas %.3e (tol %.0e); "
              "gradients worst vs cpu %.3e, vs cublas %.3e (%s) (tol %.0e); dropped %lld\n",
              name.c_str(), ran.c_str(), vs_cpu, vs_loop, kLossTol, worst_cpu, worst_loop,
              worst_path.c_str(), kGradTol, static_cast<long long>(sg.dropped));
}

TEST_P(GroupedGemm, Bf16ModelsMatchCublasAndTheCpu) {
  compare_models(*cpu, *gpu, GetParam(), "all-moe dropless",
                 small_model(true, {true, true}, 0.0), &taken);
  compare_models(*cpu, *gpu, GetParam(), "mixed untied capacity 0.5 (drops)",
                 small_model(false, {false, true, false}, 0.5), &taken);
  cases = 2;
  report();
}

// The gradient norm with the expert weight gradients' squares from the Hopper wgrad's epilogue
// (Param::grad_squares) against the norm that reads every gradient; the squares are used once,
// and a micro-batch that adds into the gradients leaves none.
TEST_P(GroupedGemm, GradNormFromTheWgradSquares) {
  const TransformerOptions options = small_model(false, {true, false, true}, 0.0);
  const int64_t B = 2, T = B * options.model.seq_len, V = options.model.vocab_size;
  Built m = build(*gpu, options, DType::bf16, 7, 1.0, ExpertKernel::grouped);
  const std::vector<Param*> params = m.model->params();
  m.model->zero_grads();
  m.model->forward_backward(tokens(T, V, 1), tokens(T, V, 2), B, true, 0.5);
  const bool sm90 = cuda_grouped_gemm_kernel(*gpu) == "sm90";
  int precomputed = 0;
  for (const Param* p : params) precomputed += p->grad_squares_valid ? 1 : 0;
  EXPECT_EQ(precomputed, sm90 ? 6 : 0) << "w1, w3, w2 of two MoE layers";
  double shared[2], expert[2];
  gpu->grad_norm_squares(params, shared[0], expert[0]);  // the squares, where there are some
  for (const Param* p : params) EXPECT_FALSE(p->grad_squares_valid) << p->path << ": used once";
  gpu->grad_norm_squares(params, shared[1], expert[1]);  // every gradient read
  EXPECT_EQ(shared[0], shared[1]);
  EXPECT_GT(expert[1], 0.0);
  EXPECT_NEAR(expert[0], expert[1], 1e-6 * expert[1]);
  std::printf("[ squares  ] %s: %d gradients' squares from the GEMM; expert share %.17g against "
              "%.17g read\n", GetParam().c_str(), precomputed, expert[0], expert[1]);
  m.model->forward_backward(tokens(T, V, 3), tokens(T, V, 4), B, true, 0.5);  // accumulates
  for (const Param* p : params) EXPECT_FALSE(p->grad_squares_valid) << p->path << ": accumulated";
  cases = taken = 1;
  report();
}

INSTANTIATE_TEST_SUITE_P(Kernels, GroupedGemm, ::testing::Values("cublas", "mma", "sm90"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sy
