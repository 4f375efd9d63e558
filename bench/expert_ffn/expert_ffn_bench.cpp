// The expert FFN of one MoE layer on one GPU, forward and backward, bf16, through the Backend
// exactly as training runs it: gather (permute_rows), the experts (SwiGLU, 3 GEMMs per expert
// forward, 6 backward), gating and scatter (unpermute_combine), and their backwards. Variants:
//   ceiling        the 9 GEMMs as one dense cuBLAS chain of the same total shape ([T*K, D] rows,
//                  one expert's weights): no routing, no gather or scatter
//   cublas_loop    moe.expert_kernel cublas: one cuBLAS GEMM per expert and projection
//   grouped:<k>    moe.expert_kernel grouped on each grouped kernel k (SY_GROUPED_GEMM=sm90, mma)
//                  that takes the case ("declined" when it does not; the loop then ran)
// Cases: coarse (8 experts, top-2, D 2048, F 8192, 16384 tokens, balanced routing), fine (64
// experts, top-8, D 2048, F 1024), skewed (coarse with Zipf(1.2) expert loads). TFLOP/s count
// the GEMMs only, 18 * T * K * D * F per forward and backward; times are the median of 20 runs
// (CUDA events on the backend's stream) after 3 warm-up runs. Each variant first runs once from
// zeroed gradients and is compared with the cublas loop (relative L2 error of out, dx, dW1 of
// expert 0): a kernel that is fast and wrong shows here.
// Prints a table, and one "RESULT case=... variant=... ms=... tflops=... err=..." line per row
// for bench/expert_ffn/run.sh. Usage: expert_ffn_bench [--profile] [--bf16-grads] [case ...]
// (default: all three). --profile: after each timed variant, 10 more runs under the CUDA
// backend's event profile (no synchronisation), and its per-op table: where each variant's time
// goes. --bf16-grads: the weight gradients in bf16, written once (training's run.weight_grads
// auto, and what PyTorch's bf16 weights get), in every variant, the ceiling's included; without
// it fp32 (the ceiling accumulating into one C).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/cuda/cuda_backend.h"
#include "model/moe/experts.h"
#include "model/rng.h"

namespace {

using sy::Backend;
using sy::DType;
using sy::Tensor;

struct Case {
  std::string name;
  int64_t E, K, D, F, T;
  bool zipf;
};

const std::vector<Case> kCases = {
    {"coarse", 8, 2, 2048, 8192, 16384, false},
    {"fine", 64, 8, 2048, 1024, 16384, false},
    {"skewed", 8, 2, 2048, 8192, 16384, true},
};

// The same generator as expert_ffn_torch.py, so both time the same routing.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
double uniform(uint64_t i) { return static_cast<double>(splitmix64(i) >> 11) * 0x1.0p-53; }

struct Routing {
  std::vector<int32_t> slot_row;            // [T*K]: the row of each assignment (grouped by expert)
  std::vector<float> gates;                 // [T, K], positive, summing to 1 per token
  std::vector<int64_t> rows_per_expert;     // [E]
};

// Balanced: assignment t*K+k goes to expert (t*K + k) % E. Zipf(1.2): each token draws K distinct
// experts with probability proportional to (e + 1)^-1.2 among those it has not drawn yet.
Routing make_routing(const Case& c) {
  const int64_t A = c.T * c.K;
  std::vector<int32_t> expert(A);
  for (int64_t t = 0; t < c.T; ++t) {
    std::vector<bool> taken(c.E, false);
    for (int64_t k = 0; k < c.K; ++k) {
      const int64_t a = t * c.K + k;
      if (!c.zipf) {
        expert[a] = static_cast<int32_t>(a % c.E);
        continue;
      }
      double total = 0;
      for (int64_t e = 0; e < c.E; ++e)
        if (!taken[e]) total += std::pow(static_cast<double>(e + 1), -1.2);
      double u = uniform(2 * a) * total;
      int64_t pick = -1;
      for (int64_t e = 0; e < c.E; ++e) {
        if (taken[e]) continue;
        pick = e;
        u -= std::pow(static_cast<double>(e + 1), -1.2);
        if (u < 0) break;
      }
      taken[pick] = true;
      expert[a] = static_cast<int32_t>(pick);
    }
  }
  Routing r;
  r.rows_per_expert.assign(c.E, 0);
  for (int32_t e : expert) ++r.rows_per_expert[e];
  std::vector<int64_t> next(c.E, 0);
  for (int64_t e = 1; e < c.E; ++e) next[e] = next[e - 1] + r.rows_per_expert[e - 1];
  r.slot_row.resize(A);
  for (int64_t a = 0; a < A; ++a) r.slot_row[a] = static_cast<int32_t>(next[expert[a]]++);
  r.gates.resize(A);
  for (int64_t t = 0; t < c.T; ++t) {
    std::vector<double> raw(c.K);
    double sum = 0;
    for (int64_t k = 0; k < c.K; ++k) sum += raw[k] = 0.5 + uniform(2 * (t * c.K + k) + 1);
    for (int64_t k = 0; k < c.K; ++k) r.gates[t * c.K + k] = static_cast<float>(raw[k] / sum);
  }
  return r;
}

// Random values in a large tensor: a random block of 2^20 values written once, copied over the
// tensor on the device (the repetition does not matter for timing).
void fill_random(Backend& backend, const Tensor& t, uint64_t seed, double scale) {
  constexpr int64_t kBlock = int64_t{1} << 20;
  const int64_t n = t.numel();
  const int64_t block = std::min(n, kBlock);
  sy::CounterRng rng(seed);
  std::vector<float> host(block);
  for (float& v : host) v = static_cast<float>(scale * rng.normal());
  const Tensor flat = t.reshape({n});
  backend.write(flat.rows(0, block), std::span<const float>(host));
  for (int64_t begin = block; begin < n; begin += block) {
    const int64_t end = std::min(n, begin + block);
    backend.copy(flat.rows(begin, end), flat.rows(0, end - begin));
  }
}

// Median of `runs` timed calls of `step` (after `warmup` untimed ones), in ms.
double median_ms(Backend& backend, const std::function<void()>& step, int warmup = 3,
                 int runs = 20) {
  auto stream = static_cast<cudaStream_t>(backend.native_stream());
  for (int i = 0; i < warmup; ++i) step();
  std::vector<cudaEvent_t> events(2 * runs);
  for (cudaEvent_t& e : events)
    if (cudaEventCreate(&e) != cudaSuccess) throw std::runtime_error("cudaEventCreate failed");
  for (int i = 0; i < runs; ++i) {
    cudaEventRecord(events[2 * i], stream);
    step();
    cudaEventRecord(events[2 * i + 1], stream);
  }
  backend.synchronize();
  std::vector<double> ms(runs);
  for (int i = 0; i < runs; ++i) {
    float elapsed = 0;
    if (cudaEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]) != cudaSuccess)
      throw std::runtime_error("cudaEventElapsedTime failed");
    ms[i] = elapsed;
  }
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
}

bool g_profile = false;     // --profile
bool g_bf16_grads = false;  // --bf16-grads
DType grad_dtype() { return g_bf16_grads ? DType::bf16 : DType::f32; }

// With --profile: `runs` calls of `step` under the event profile of `backend`, and its table.
void print_profile(Backend& backend, const std::string& label, const std::function<void()>& step,
                   int runs = 10) {
  if (!g_profile) return;
  sy::cuda_profile_begin(backend);
  for (int i = 0; i < runs; ++i) step();
  std::printf("-- op profile of %s, per run (%d runs):\n%s", label.c_str(), runs,
              sy::cuda_profile_report(backend, runs).c_str());
  std::fflush(stdout);
}

// A backend whose grouped ops may use only `kernel` (SY_GROUPED_GEMM is read when it is made).
std::unique_ptr<Backend> backend_for(const std::string& kernel) {
  setenv("SY_GROUPED_GEMM", kernel.c_str(), 1);
  std::unique_ptr<Backend> backend = sy::make_cuda_backend(0);
  unsetenv("SY_GROUPED_GEMM");
  return backend;
}

double rel_error(const std::vector<double>& g, const std::vector<double>& c) {
  if (g.size() != c.size() || c.empty()) return NAN;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    diff += (g[i] - c[i]) * (g[i] - c[i]);
    norm += c[i] * c[i];
  }
  return std::sqrt(diff / norm);
}

// What a variant computed on one run from zeroed gradients.
struct Outputs {
  std::vector<double> out, dx, dw1;
};

struct Row {
  std::string variant;
  double ms = 0;
  double err = NAN;  // worst of out, dx, dW1[0] against the cublas loop
  bool declined = false;
};

// One MoE layer's expert path on `backend`, with its own inputs (the same values every time).
class ExpertPath {
 public:
  ExpertPath(Backend& backend, const Case& c, const Routing& r, sy::ExpertKernel kernel)
      : b_(backend), c_(c), rows_(r.rows_per_expert) {
    const int64_t A = c.T * c.K;
    x_ = b_.alloc({c.T, c.D}, DType::bf16);
    dout_ = b_.alloc({c.T, c.D}, DType::bf16);
    fill_random(b_, x_, 1, 1.0);
    fill_random(b_, dout_, 2, 1.0);
    gates_ = b_.alloc({c.T, c.K}, DType::f32);
    b_.write(gates_, std::span<const float>(r.gates));
    slot_row_ = b_.alloc({A}, DType::i32);
    b_.write(slot_row_, std::span<const int32_t>(r.slot_row));
    x_perm_ = b_.alloc({A, c.D}, DType::bf16);
    dy_ = b_.alloc({A, c.D}, DType::bf16);
    out_ = b_.alloc({c.T, c.D}, DType::bf16);
    dx_ = b_.alloc({c.T, c.D}, DType::bf16);
    dgates_ = b_.alloc({c.T, c.K}, DType::f32);
    experts_.kernel = kernel;
    uint64_t seed = 10;
    for (auto [p, shape] : {std::pair{&experts_.w1, sy::Shape{c.E, c.D, c.F}},
                            {&experts_.w3, sy::Shape{c.E, c.D, c.F}},
                            {&experts_.w2, sy::Shape{c.E, c.F, c.D}}}) {
      p->value = b_.alloc(shape, DType::bf16);  // the compute copy is the value here
      fill_random(b_, p->value, seed++, 0.02);
      p->grad = b_.zeros(shape, grad_dtype());
    }
  }

  void step() {
    const int64_t A = c_.T * c_.K;
    // As in a training step whose optimizer has just cleared the gradients (grad_accum_steps 1):
    // the weight gradients are written, not accumulated. Timing repeats step() without clearing;
    // the values are not read, only the bytes and FLOPs matter here.
    for (sy::Param* p : {&experts_.w1, &experts_.w3, &experts_.w2}) p->grad_state = sy::Param::GradState::zero;
    b_.permute_rows(x_perm_, x_, slot_row_, c_.K);
    const Tensor y = experts_.forward(b_, x_perm_, rows_, A);
    b_.unpermute_combine(out_, y, gates_, slot_row_);
    b_.unpermute_combine_backward(dy_, dgates_, dout_, y, gates_, slot_row_);
    const Tensor dx_perm = experts_.backward(b_, dy_, x_perm_, rows_, A);
    b_.permute_rows_backward(dx_, dx_perm, slot_row_, c_.K);
  }

  Outputs once() {
    for (sy::Param* p : {&experts_.w1, &experts_.w3, &experts_.w2}) b_.fill(p->grad, 0.0);
    step();
    return {b_.read(out_), b_.read(dx_),
            b_.read(experts_.w1.grad.rows(0, 1))};
  }

 private:
  Backend& b_;
  Case c_;
  std::vector<int64_t> rows_;
  Tensor x_, dout_, gates_, slot_row_, x_perm_, dy_, out_, dx_, dgates_;
  sy::Experts experts_;
};

// The dense ceiling: the same 9 GEMMs over [T*K, D] rows with one expert's weights.
double time_ceiling(const Case& c) {
  auto backend = sy::make_cuda_backend(0);
  Backend& b = *backend;
  const int64_t M = c.T * c.K;
  auto make = [&](const sy::Shape& shape, DType dtype, uint64_t seed, double scale) {
    Tensor t = b.alloc(shape, dtype);
    fill_random(b, t, seed, scale);
    return t;
  };
  const Tensor x = make({M, c.D}, DType::bf16, 1, 1.0), dout = make({M, c.D}, DType::bf16, 2, 1.0);
  const Tensor w1 = make({c.D, c.F}, DType::bf16, 3, 0.02), w3 = make({c.D, c.F}, DType::bf16, 4, 0.02);
  const Tensor w2 = make({c.F, c.D}, DType::bf16, 5, 0.02);
  const Tensor h1 = b.alloc({M, c.F}, DType::bf16), h3 = b.alloc({M, c.F}, DType::bf16);
  const Tensor hidden = b.alloc({M, c.F}, DType::bf16), dhidden = b.alloc({M, c.F}, DType::bf16);
  const Tensor out = b.alloc({M, c.D}, DType::bf16), dx = b.alloc({M, c.D}, DType::bf16);
  const Tensor dw1 = b.zeros({c.D, c.F}, grad_dtype()), dw3 = b.zeros({c.D, c.F}, grad_dtype());
  const Tensor dw2 = b.zeros({c.F, c.D}, grad_dtype());
  const double wgrad_beta = g_bf16_grads ? 0.0 : 1.0;  // bf16: written once, as in training
  fill_random(b, hidden, 6, 1.0);
  const auto chain = [&] {
    b.gemm(h1, x, false, w1, false, 1.0, 0.0);
    b.gemm(h3, x, false, w3, false, 1.0, 0.0);
    b.gemm(out, hidden, false, w2, false, 1.0, 0.0);
    b.gemm(dhidden, dout, false, w2, true, 1.0, 0.0);
    b.gemm(dw2, hidden, true, dout, false, 1.0, wgrad_beta);
    b.gemm(dw1, x, true, h1, false, 1.0, wgrad_beta);
    b.gemm(dw3, x, true, h3, false, 1.0, wgrad_beta);
    b.gemm(dx, h1, false, w1, true, 1.0, 0.0);
    b.gemm(dx, h3, false, w3, true, 1.0, 1.0);
  };
  const double ms = median_ms(b, chain);
  print_profile(b, c.name + " ceiling", chain);
  return ms;
}

void run_case(const Case& c) {
  const Routing routing = make_routing(c);
  const double flops = 18.0 * c.T * c.K * c.D * c.F;
  const int64_t most = *std::max_element(routing.rows_per_expert.begin(), routing.rows_per_expert.end());
  const int64_t fewest = *std::min_element(routing.rows_per_expert.begin(), routing.rows_per_expert.end());
  std::printf(
      "\n== %s: E %lld, top-%lld, D %lld, F %lld, T %lld; rows per expert %lld..%lld "
      "(mean %lld); %.2f TFLOP per forward+backward; weight gradients %s\n",
      c.name.c_str(), (long long)c.E, (long long)c.K, (long long)c.D, (long long)c.F,
      (long long)c.T, (long long)fewest, (long long)most, (long long)(c.T * c.K / c.E),
      flops * 1e-12, g_bf16_grads ? "bf16" : "fp32");
  std::fflush(stdout);
  std::vector<Row> rows;
  rows.push_back({"ceiling", time_ceiling(c), NAN, false});

  Outputs reference;
  {
    auto backend = backend_for("cublas");
    ExpertPath path(*backend, c, routing, sy::ExpertKernel::cublas);
    reference = path.once();
    rows.push_back({"cublas_loop", median_ms(*backend, [&] { path.step(); }), 0.0, false});
    print_profile(*backend, c.name + " cublas_loop", [&] { path.step(); });
  }
  // sm90 and mma: each kernel alone (sm90's optional routing of large segments to the loop off).
  for (const std::string kernel : {"sm90", "mma"}) {
    if (kernel == "sm90") setenv("SY_GG_SM90_ROUTE", "0", 1);
    auto backend = backend_for(kernel);
    ExpertPath path(*backend, c, routing, sy::ExpertKernel::grouped);
    const Outputs got = path.once();
    Row row{"grouped:" + kernel};
    row.declined = sy::cuda_grouped_gemm_kernel(*backend) != kernel;
    row.err = std::max({rel_error(got.out, reference.out), rel_error(got.dx, reference.dx),
                        rel_error(got.dw1, reference.dw1)});
    if (!row.declined) {
      row.ms = median_ms(*backend, [&] { path.step(); });
      print_profile(*backend, c.name + " " + row.variant, [&] { path.step(); });
    }
    unsetenv("SY_GG_SM90_ROUTE");
    rows.push_back(row);
  }

  std::printf("%-14s %10s %10s %12s %s\n", "variant", "ms", "TFLOP/s", "of ceiling", "rel err vs loop");
  const double ceiling = flops / (rows[0].ms * 1e-3) * 1e-12;
  for (const Row& row : rows) {
    if (row.declined) {
      std::printf("%-14s %10s %10s %12s %.2e (declined: the loop ran)\n", row.variant.c_str(),
                  "-", "-", "-", row.err);
      std::printf("RESULT case=%s variant=%s ms=nan tflops=nan err=%.3e\n", c.name.c_str(),
                  row.variant.c_str(), row.err);
      continue;
    }
    const double tflops = flops / (row.ms * 1e-3) * 1e-12;
    std::printf("%-14s %10.3f %10.1f %11.0f%% %.2e\n", row.variant.c_str(), row.ms, tflops,
                100.0 * tflops / ceiling, row.err);
    std::printf("RESULT case=%s variant=%s ms=%.4f tflops=%.2f err=%.3e\n", c.name.c_str(),
                row.variant.c_str(), row.ms, tflops, row.err);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (sy::cuda_device_count() == 0) {
      std::fprintf(stderr, "expert_ffn_bench: no CUDA device visible\n");
      return 2;
    }
    std::vector<std::string> wanted;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--profile") {
        g_profile = true;
      } else if (arg == "--bf16-grads") {
        g_bf16_grads = true;
      } else if (std::none_of(kCases.begin(), kCases.end(),
                              [&](const Case& c) { return c.name == arg; })) {
        std::fprintf(stderr,
                     "expert_ffn_bench: unknown argument '%s' (cases: coarse fine skewed; "
                     "--profile, --bf16-grads)\n",
                     arg.c_str());
        return 2;
      } else {
        wanted.push_back(arg);
      }
    }
    for (const Case& c : kCases)
      if (wanted.empty() || std::find(wanted.begin(), wanted.end(), c.name) != wanted.end())
        run_case(c);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "expert_ffn_bench: %s\n", e.what());
    return 1;
  }
}
