// cuDNN's fused attention (model/cuda/cudnn_attention.cu), reached as the attention layer reaches
// it: the CUDA backend's flash_attention ops after Backend::prefer_cudnn_attention(true). Against
// the CPU flash reference in f32 on the same bf16-rounded inputs, bf16 data, S in {64, 100, 257,
// 1024, 2048} and Dh in {64, 128}; outputs poisoned with NaN first. Also: the causal mask (new k
// and v for tokens >= c leave out and dq of tokens < c bitwise as they were), determinism (a
// second backward gives the same bits; chunks of sequences or heads give the bits of one
// call), the nondeterministic backward (run.deterministic false) against the same reference,
// and the decline path (a case cuDNN is not asked to run goes to the flash kernels, with the
// reason).
// When cuDNN declines a case it should take, the test skips visibly with cuDNN's reason
// (cuda_attention_kernel). Tolerances: docs/cuda.md.
// Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/rng.h"
#include "tests/cuda_test_util.h"

namespace sy {
namespace {

using test::bf16_round;
using test::EnvironmentRestored;
using test::rel_error;

class CudnnAttention : public test::CpuGpuTest {
 protected:
  void SetUp() override {
    CpuGpuTest::SetUp();
    if (IsSkipped()) return;
    gpu().prefer_cudnn_attention(true);
  }
  void TearDown() override {
    if (gpu_) gpu().prefer_cudnn_attention(false);
  }

  static std::vector<double> values(int64_t n) {
    CounterRng rng(next_seed_++);
    std::vector<double> v(n);
    for (double& x : v) x = bf16_round(rng.normal());
    return v;
  }
  // dq, dk, dv (bf16, poisoned first) from the GPU backend's flash_attention_backward.
  std::array<Tensor, 3> backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& out, const Tensor& lse, int64_t B,
                                 int64_t S, int64_t H) {
    std::array<Tensor, 3> grads{poisoned(q.shape(), DType::bf16), poisoned(q.shape(), DType::bf16),
                                poisoned(q.shape(), DType::bf16)};
    gpu().flash_attention_backward(grads[0], grads[1], grads[2], dout, q, k, v, out, lse, B, S, H);
    return grads;
  }
  // The backward's bounds against the CPU reference: dq, dk 2e-2, dv 1e-2 (docs/cuda.md).
  void expect_grads_close(const std::array<Tensor, 3>& grads, const Tensor& dq, const Tensor& dk,
                          const Tensor& dv, const std::string& what) {
    expect_close(grads[0], dq, 2e-2, what + " dq");
    expect_close(grads[1], dk, 2e-2, what + " dk");
    expect_close(grads[2], dv, 1e-2, what + " dv");
  }
  void expect_close(const Tensor& g, const Tensor& c, double tol, const std::string& what) {
    const double e = rel_error(gpu().read(g), cpu().read(c));
    std::printf("[ rel err  ] %-48s %.3e (tol %.1e)\n", what.c_str(), e, tol);
    EXPECT_LE(e, tol) << what;
  }

  static inline uint64_t next_seed_ = 0xC0D0'0000;
};

TEST_F(CudnnAttention, MatchesCpuFlashCausalAndDeterministic) {
  const int64_t B = 2, H = 2;
  for (int64_t Dh : {64, 128}) {
    for (int64_t S : {64, 100, 257, 1024, 2048}) {
      const std::string at = " Dh=" + std::to_string(Dh) + " S=" + std::to_string(S);
      SCOPED_TRACE(at);
      const int64_t T = B * S, D = H * Dh;
      const std::vector<double> q = values(T * D), k = values(T * D), v = values(T * D),
                                dout = values(T * D);
      Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k), vc = on_cpu({T, D}, v);
      Tensor qg = on_gpu({T, D}, q), kg = on_gpu({T, D}, k), vg = on_gpu({T, D}, v);
      Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
      Tensor og = poisoned({T, D}, DType::bf16), lg = poisoned({B, H, S}, DType::f32);
      gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
      const std::string fwd_kernel = cuda_attention_kernel(gpu());
      std::printf("[ kernel   ] forward%s: %s\n", at.c_str(), fwd_kernel.c_str());
      if (fwd_kernel != "cudnn") GTEST_SKIP() << "cuDNN declined the forward" << at << ": " << fwd_kernel;
      cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H);
      expect_close(og, oc, 1e-2, "cudnn forward out" + at);
      expect_close(lg, lc, 1e-5, "cudnn forward lse" + at);

      Tensor dq = cpu().alloc({T, D}, DType::f32), dk = cpu().alloc({T, D}, DType::f32),
             dv = cpu().alloc({T, D}, DType::f32);
      cpu().flash_attention_backward(dq, dk, dv, on_cpu({T, D}, dout), qc, kc, vc, oc, lc, B, S,
                                     H);
      Tensor doutg = on_gpu({T, D}, dout);
      auto backward_of = [&](const Tensor& o, const Tensor& l, const Tensor& kk, const Tensor& vv) {
        return backward(doutg, qg, kk, vv, o, l, B, S, H);
      };
      const auto grads = backward_of(og, lg, kg, vg);
      const std::string bwd_kernel = cuda_attention_kernel(gpu());
      std::printf("[ kernel   ] backward%s: %s\n", at.c_str(), bwd_kernel.c_str());
      if (bwd_kernel != "cudnn")
        GTEST_SKIP() << "cuDNN declined the backward" << at << ": " << bwd_kernel;
      expect_grads_close(grads, dq, dk, dv, "cudnn backward" + at);

      const auto again = backward_of(og, lg, kg, vg);
      for (int i = 0; i < 3; ++i)
        EXPECT_EQ(gpu().read(again[i]), gpu().read(grads[i])) << "backward not repeatable, grad " << i;

      const std::vector<double> fresh_k = values(T * D), fresh_v = values(T * D);
      expect_causal(qg, k, v, fresh_k, fresh_v, og, grads[0], B, S, H, backward_of);
    }
  }
}

// The backward runs over chunks of sequences whose dS fits a workspace budget
// (SY_CUDNN_BWD_WORKSPACE_MIB, else the allocator's largest free block), and over chunks of heads
// when one sequence's dS does not: every chunking gives the bits of one call, so the budget may
// follow the memory free at the time without touching the numbers. B 4, H 2, S 2048: 16 MiB of
// dS a sequence; budgets of 1 MiB (one head of one sequence a call), 16 MiB (one sequence),
// 32 MiB (two), 0 (one call) and unset.
TEST_F(CudnnAttention, ChunksOfSequencesGiveTheBitsOfOneCall) {
  const int64_t B = 4, H = 2, S = 2048, Dh = 128, T = B * S, D = H * Dh;
  const std::vector<double> q = values(T * D), k = values(T * D), v = values(T * D),
                            dout = values(T * D);
  Tensor qg = on_gpu({T, D}, q), kg = on_gpu({T, D}, k), vg = on_gpu({T, D}, v),
         doutg = on_gpu({T, D}, dout);
  Tensor og = poisoned({T, D}, DType::bf16), lg = poisoned({B, H, S}, DType::f32);
  gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
  if (cuda_attention_kernel(gpu()) != "cudnn")
    GTEST_SKIP() << "cuDNN declined the forward: " << cuda_attention_kernel(gpu());
  const EnvironmentRestored restored("SY_CUDNN_BWD_WORKSPACE_MIB");
  std::vector<std::vector<double>> first;
  for (const char* budget : {"0", "1", "16", "32", ""}) {
    SCOPED_TRACE(std::string("budget '") + budget + "' MiB");
    restored.set(budget);
    const std::array<Tensor, 3> grads = backward(doutg, qg, kg, vg, og, lg, B, S, H);
    if (cuda_attention_kernel(gpu()) != "cudnn")
      GTEST_SKIP() << "cuDNN declined the backward: " << cuda_attention_kernel(gpu());
    for (int i = 0; i < 3; ++i) {
      std::vector<double> got = gpu().read(grads[i]);
      if (first.size() < 3) first.push_back(std::move(got));
      else EXPECT_EQ(got, first[i]) << "grad " << i << " differs from one call's";
    }
  }
  // A budget that is not a whole number of MiB is an error naming the variable, not a guess.
  for (const char* bad : {"12x", "-1", "lots"}) {
    restored.set(bad);
    try {
      Tensor dq = gpu().alloc({T, D}, DType::bf16), dk = gpu().alloc({T, D}, DType::bf16),
             dv = gpu().alloc({T, D}, DType::bf16);
      gpu().flash_attention_backward(dq, dk, dv, doutg, qg, kg, vg, og, lg, B, S, H);
      ADD_FAILURE() << "budget '" << bad << "' was taken";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("SY_CUDNN_BWD_WORKSPACE_MIB"), std::string::npos)
          << e.what();
    }
  }
}

// The measurement knobs that pick cuDNN's engine config (SY_CUDNN_FWD_PLAN, _BWD_PLAN,
// _FWD_KNOBS, _BWD_KNOBS, SY_CUDNN_PLANS; docs/cuda.md) are read when a shape's plans are built, so
// each case here takes a shape of its own. Listing every config and naming the first explicitly
// runs within the CPU bounds; a malformed value is an error naming the variable.
TEST_F(CudnnAttention, PlanKnobsListAndRefuseMalformedValues) {
  const int64_t B = 1, H = 2, Dh = 64, D = H * Dh;
  int64_t S = 136;
  auto inputs = [&] {
    const int64_t T = B * S;
    return std::array<std::vector<double>, 4>{values(T * D), values(T * D), values(T * D),
                                              values(T * D)};
  };
  {
    const EnvironmentRestored list("SY_CUDNN_PLANS"), fwd("SY_CUDNN_FWD_PLAN"),
        bwd("SY_CUDNN_BWD_PLAN");
    list.set("1");
    fwd.set("0");
    bwd.set("0");
    const int64_t T = B * S;
    const auto [q, k, v, dout] = inputs();
    Tensor qg = on_gpu({T, D}, q), kg = on_gpu({T, D}, k), vg = on_gpu({T, D}, v);
    Tensor og = poisoned({T, D}, DType::bf16), lg = poisoned({B, H, S}, DType::f32);
    gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
    if (cuda_attention_kernel(gpu()) != "cudnn")
      GTEST_SKIP() << "cuDNN declined the forward: " << cuda_attention_kernel(gpu());
    const auto grads = backward(on_gpu({T, D}, dout), qg, kg, vg, og, lg, B, S, H);
    ASSERT_EQ(cuda_attention_kernel(gpu()), "cudnn");
    Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k), vc = on_cpu({T, D}, v);
    Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
    cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H);
    expect_close(og, oc, 1e-2, "listed, plan 0: forward out");
    Tensor dq = cpu().alloc({T, D}, DType::f32), dk = cpu().alloc({T, D}, DType::f32),
           dv = cpu().alloc({T, D}, DType::f32);
    cpu().flash_attention_backward(dq, dk, dv, on_cpu({T, D}, dout), qc, kc, vc, oc, lc, B, S, H);
    expect_grads_close(grads, dq, dk, dv, "listed, plan 0: backward");
  }
  const struct {
    const char* name;
    const char* value;
  } cases[] = {{"SY_CUDNN_FWD_PLAN", "first"},  {"SY_CUDNN_FWD_PLAN", "-1"},
               {"SY_CUDNN_FWD_KNOBS", "7"},     {"SY_CUDNN_FWD_KNOBS", "24=x"},
               {"SY_CUDNN_FWD_KNOBS", "24=1,"}, {"SY_CUDNN_FWD_KNOBS", "99=1"},
               {"SY_CUDNN_BWD_PLAN", "1e3"},    {"SY_CUDNN_BWD_KNOBS", "=3"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.name) + "='" + c.value + "'");
    S += 8;
    const int64_t T = B * S;
    const auto [q, k, v, dout] = inputs();
    Tensor qg = on_gpu({T, D}, q), kg = on_gpu({T, D}, k), vg = on_gpu({T, D}, v);
    Tensor og = poisoned({T, D}, DType::bf16), lg = poisoned({B, H, S}, DType::f32);
    const EnvironmentRestored restored(c.name);
    const bool backward_knob = std::string(c.name).find("_BWD_") != std::string::npos;
    if (backward_knob) gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
    restored.set(c.value);
    try {
      if (backward_knob) backward(on_gpu({T, D}, dout), qg, kg, vg, og, lg, B, S, H);
      else gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
      ADD_FAILURE() << "the value was taken";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(c.name), std::string::npos) << e.what();
    }
  }
}

// run.deterministic false (Backend::set_deterministic): the backward's dQ-accumulating form,
// within the same bounds of the CPU reference as the deterministic form, ragged S included;
// where cuDNN declines that form, the deterministic one runs instead (skipped visibly).
TEST_F(CudnnAttention, NondeterministicBackwardMatchesCpu) {
  const int64_t B = 2, H = 2, Dh = 128;
  gpu().set_deterministic(false);
  struct Restore {
    Backend& gpu;
    ~Restore() { gpu.set_deterministic(true); }
  } restore{gpu()};
  for (int64_t S : {100, 257, 2048}) {
    const std::string at = " S=" + std::to_string(S);
    SCOPED_TRACE(at);
    const int64_t T = B * S, D = H * Dh;
    const std::vector<double> q = values(T * D), k = values(T * D), v = values(T * D),
                              dout = values(T * D);
    Tensor qc = on_cpu({T, D}, q), kc = on_cpu({T, D}, k), vc = on_cpu({T, D}, v);
    Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
    cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H);
    Tensor dq = cpu().alloc({T, D}, DType::f32), dk = cpu().alloc({T, D}, DType::f32),
           dv = cpu().alloc({T, D}, DType::f32);
    cpu().flash_attention_backward(dq, dk, dv, on_cpu({T, D}, dout), qc, kc, vc, oc, lc, B, S, H);

    Tensor qg = on_gpu({T, D}, q), kg = on_gpu({T, D}, k), vg = on_gpu({T, D}, v);
    Tensor og = poisoned({T, D}, DType::bf16), lg = poisoned({B, H, S}, DType::f32);
    gpu().flash_attention_forward(og, lg, qg, kg, vg, B, S, H);
    if (cuda_attention_kernel(gpu()) != "cudnn")
      GTEST_SKIP() << "cuDNN declined the forward" << at << ": " << cuda_attention_kernel(gpu());
    const std::array<Tensor, 3> grads = backward(on_gpu({T, D}, dout), qg, kg, vg, og, lg, B, S, H);
    const std::string kernel = cuda_attention_kernel(gpu());
    std::printf("[ kernel   ] backward%s: %s\n", at.c_str(), kernel.c_str());
    if (kernel != "cudnn nondeterministic")
      GTEST_SKIP() << "cuDNN declined the dQ-accumulating backward" << at << ": " << kernel;
    expect_grads_close(grads, dq, dk, dv, "nondeterministic backward" + at);
  }
}

// Cases cuDNN is not asked to run (f32 data; bf16 with Dh 20) go to the flash kernels, and say so.
TEST_F(CudnnAttention, DeclinedCasesRunTheFlashKernels) {
  const int64_t B = 1, S = 37, H = 2;
  for (auto [dtype, Dh] : {std::pair{DType::f32, int64_t{64}}, {DType::bf16, int64_t{20}}}) {
    const std::string at = std::string(" ") + dtype_name(dtype) + " Dh=" + std::to_string(Dh);
    SCOPED_TRACE(at);
    const int64_t T = B * S, D = H * Dh;
    const std::vector<double> q = values(T * D), k = values(T * D), v = values(T * D);
    Tensor og = poisoned({T, D}, dtype), lg = poisoned({B, H, S}, stat_dtype(dtype));
    gpu().flash_attention_forward(og, lg, on_gpu({T, D}, q, dtype), on_gpu({T, D}, k, dtype),
                                  on_gpu({T, D}, v, dtype), B, S, H);
    const std::string kernel = cuda_attention_kernel(gpu());
    std::printf("[ kernel   ] forward%s: %s\n", at.c_str(), kernel.c_str());
    EXPECT_EQ(kernel.rfind("flash: ", 0), 0u) << kernel;
    Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
    cpu().flash_attention_forward(oc, lc, on_cpu({T, D}, q), on_cpu({T, D}, k),
                                  on_cpu({T, D}, v), B, S, H);
    expect_close(og, oc, 1e-2, "declined forward out" + at);
  }
}

// `auto` (the default) on CUDA asks for cuDNN; on the CPU it stays the reference kernel.
TEST_F(CudnnAttention, AutoRunsCudnnInTheLayer) {
  Attention attention;
  ASSERT_EQ(attention.kernel, AttentionKernel::automatic);
  EXPECT_TRUE(attention.prefers_cudnn(gpu()));
  EXPECT_FALSE(attention.prefers_cudnn(cpu()));
  EXPECT_FALSE(attention.uses_flash(cpu()));
  const int64_t B = 2, S = 128, H = 2, Dh = 64, T = B * S, D = H * Dh;
  for (Param* w : {&attention.wq, &attention.wk, &attention.wv, &attention.wo})
    w->value = on_gpu({D, D}, values(D * D));  // bf16: the compute copy is the value
  gpu().prefer_cudnn_attention(false);  // the layer must set it itself
  attention.forward(gpu(), on_gpu({T, D}, values(T * D)), {B, S, H});
  EXPECT_EQ(cuda_attention_kernel(gpu()), "cudnn");
}

TEST(CudnnAttentionKernel, IsTheFlashPathInTheLayer) {
  Attention attention;
  attention.kernel = AttentionKernel::cudnn;
  auto cpu = make_cpu_backend();
  EXPECT_TRUE(attention.uses_flash(*cpu));
}

}  // namespace
}  // namespace sy
