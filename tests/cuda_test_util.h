// Helpers shared by the GPU suites (tests/test_cuda_*.cpp), which check the CUDA backend against
// the CPU reference: the skip when no device is visible, a fixture holding both backends, NaN
// poisoning, bf16 rounding on the host, the relative L2 error every tolerance in docs/cuda.md is
// stated in, and the small MoE models the model-level suites compare.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"

// In a test or SetUp(): skip it, visibly, when no CUDA device is visible (a macro because
// GTEST_SKIP returns from the function it is written in).
#define SY_SKIP_WITHOUT_GPU() \
  if (::sy::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible"

namespace sy::test {

// What outputs are filled with before a device op runs, so that an element it does not write
// fails the comparison.
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int32_t kPoisonIndex = -7777;

// `value` rounded to bf16 (nearest even) and widened back: what a bf16 tensor holds of it.
inline double bf16_round(double value) {
  const float f = static_cast<float>(value);
  if (std::isnan(f)) return f;
  uint32_t u = std::bit_cast<uint32_t>(f);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return std::bit_cast<float>(u & 0xFFFF0000u);
}

// ||g - c|| / ||c|| (||g - c|| when c is zero); infinity if g has a non-finite element or the
// sizes differ.
inline double rel_error(const std::vector<double>& g, const std::vector<double>& c) {
  if (g.size() != c.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) return std::numeric_limits<double>::infinity();
    diff += (g[i] - c[i]) * (g[i] - c[i]);
    norm += c[i] * c[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

inline Tensor filled(Backend& backend, const Shape& shape, DType dtype,
                     const std::vector<double>& v) {
  Tensor t = backend.alloc(shape, dtype);
  backend.write(t, std::span<const double>(v));
  return t;
}

// An environment variable set for a test, then put back as it was (or unset).
class EnvironmentRestored {
 public:
  explicit EnvironmentRestored(std::string name) : name_(std::move(name)) {
    const char* value = std::getenv(name_.c_str());
    had_ = value != nullptr;
    if (had_) saved_ = value;
  }
  ~EnvironmentRestored() { set(had_ ? saved_.c_str() : ""); }
  // "" unsets it.
  void set(const char* value) const {
    if (*value) setenv(name_.c_str(), value, 1);
    else unsetenv(name_.c_str());
  }

 private:
  std::string name_, saved_;
  bool had_ = false;
};

// A CPU reference and a GPU backend, made once per test binary (device set-up is slow) and kept
// for the process; every test skips visibly when no device is visible.
class CpuGpuTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (cuda_device_count() > 0 && !gpu_) {
      cpu_ = make_cpu_backend().release();
      gpu_ = make_cuda_backend(0).release();
    }
  }
  void SetUp() override {
    if (!gpu_) GTEST_SKIP() << "no CUDA device visible";
  }

  Backend& cpu() { return *cpu_; }
  Backend& gpu() { return *gpu_; }

  Tensor on_cpu(const Shape& shape, const std::vector<double>& v, DType dtype = DType::f32) {
    return filled(cpu(), shape, dtype, v);
  }
  Tensor on_gpu(const Shape& shape, const std::vector<double>& v, DType dtype = DType::bf16) {
    return filled(gpu(), shape, dtype, v);
  }
  // A device tensor filled with NaN (kPoisonIndex for i32).
  Tensor poisoned(const Shape& shape, DType dtype) {
    Tensor t = gpu().alloc(shape, dtype);
    gpu().fill(t, dtype == DType::i32 ? kPoisonIndex : kNaN);
    return t;
  }

  // The causal mask of gpu()'s flash-attention ops: new k and v for the tokens s >= c = S/2 + 1
  // of every sequence (rows of fresh_k, fresh_v) must leave out and dq of the tokens s < c
  // bitwise as they were (out1, dq1 from q, k, v; [T, D], T = B * S; NaN counts as changed).
  // backward(out, lse, k, v) runs the backward and returns {dq, dk, dv}.
  template <class Backward>
  void expect_causal(const Tensor& q, const std::vector<double>& k, const std::vector<double>& v,
                     const std::vector<double>& fresh_k, const std::vector<double>& fresh_v,
                     const Tensor& out1, const Tensor& dq1, int64_t B, int64_t S, int64_t H,
                     Backward&& backward) {
    const int64_t T = B * S, D = q.dim(1), c = S / 2 + 1;
    std::vector<double> k2 = k, v2 = v;
    for (int64_t t = 0; t < T; ++t)
      if (t % S >= c)
        for (int64_t d = 0; d < D; ++d)
          k2[t * D + d] = fresh_k[t * D + d], v2[t * D + d] = fresh_v[t * D + d];
    const Tensor k2g = on_gpu({T, D}, k2, q.dtype()), v2g = on_gpu({T, D}, v2, q.dtype());
    Tensor out2 = poisoned({T, D}, q.dtype()), lse2 = poisoned({B, H, S}, stat_dtype(q.dtype()));
    gpu().flash_attention_forward(out2, lse2, q, k2g, v2g, B, S, H);
    const auto grads2 = backward(out2, lse2, k2g, v2g);
    const std::vector<double> o1h = gpu().read(out1), o2h = gpu().read(out2);
    const std::vector<double> dq1h = gpu().read(dq1), dq2h = gpu().read(grads2[0]);
    int64_t changed = 0, checked = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (t % S >= c) continue;
      for (int64_t d = 0; d < D; ++d) {
        changed += o1h[t * D + d] != o2h[t * D + d] || dq1h[t * D + d] != dq2h[t * D + d];
        ++checked;
      }
    }
    EXPECT_EQ(changed, 0) << "of " << checked << " out/dq entries before the change";
  }

  static inline Backend* cpu_ = nullptr;
  static inline Backend* gpu_ = nullptr;
};

// ---- small MoE models ------------------------------------------------------------------------

inline TransformerOptions small_model(bool tie, std::vector<bool> moe_layers,
                                      double capacity_factor) {
  TransformerOptions options;
  options.model = {64, 16, 32, static_cast<int64_t>(moe_layers.size()), 2, 48, tie};  // V S D L H F
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 2;
  options.moe.expert_hidden = 24;
  options.moe.capacity_factor = capacity_factor;
  options.moe.aux_loss_coef = 0.05;
  options.moe.z_loss_coef = 0.01;
  options.moe_layers = std::move(moe_layers);
  return options;
}

struct Built {
  std::unique_ptr<LocalExchange> exchange;
  std::unique_ptr<Transformer> model;
};

// The model of `options` in `compute` with fp32 masters, initialised from `seed`, router weights
// scaled by `router_scale` (to separate the top-k choices). expert_kernel: as options says when
// not given.
inline Built build(Backend& backend, TransformerOptions options, DType compute, uint64_t seed,
                   double router_scale, std::optional<ExpertKernel> expert_kernel = {}) {
  Built b;
  b.exchange = std::make_unique<LocalExchange>(backend, options.moe.num_experts);
  options.dtype = compute;
  options.master_dtype = DType::f32;
  if (compute != DType::bf16)  // bf16 weight gradients belong to a bf16 model (the CPU's is f32)
    options.bf16_grads = options.bf16_grad_storage = Bf16Grads::none;
  if (expert_kernel) options.moe.expert_kernel = *expert_kernel;
  b.model = std::make_unique<Transformer>(backend, options, b.exchange.get());
  b.model->init_parameters(seed);
  for (Param* p : b.model->params())
    if (p->path.find("router") != std::string::npos) backend.scale(p->value, router_scale);
  b.model->refresh_compute_weights();
  return b;
}

// The smallest gap, over the routed tokens of every MoE layer, between the K-th and the
// (K+1)-th largest router logit, relative to the logits' RMS.
inline double min_topk_margin(Backend& backend, const Transformer& model) {
  double margin = std::numeric_limits<double>::infinity();
  for (const Router* router : model.routers()) {
    const std::vector<double> logits = backend.read(router->logits);
    const int64_t E = router->settings.num_experts, K = router->settings.top_k;
    double sum_squares = 0;
    for (double l : logits) sum_squares += l * l;
    const double rms = std::sqrt(sum_squares / logits.size());
    if (K >= E) continue;
    for (size_t t = 0; t * E < logits.size(); ++t) {
      std::vector<double> row(logits.begin() + t * E, logits.begin() + (t + 1) * E);
      std::sort(row.begin(), row.end(), std::greater<double>());
      margin = std::min(margin, (row[K - 1] - row[K]) / rms);
    }
  }
  return margin;
}

// A deterministic token sequence of length n over the vocabulary; `salt` picks one.
inline std::vector<int32_t> tokens(int64_t n, int64_t vocab, uint64_t salt) {
  std::vector<int32_t> out(n);
  for (int64_t t = 0; t < n; ++t)
    out[t] = static_cast<int32_t>((t * 7 + t * t * 3 + salt * 11) % vocab);
  return out;
}

}  // namespace sy::test
