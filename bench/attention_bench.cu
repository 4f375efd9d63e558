// Causal attention on one GPU: the flash kernels (model/cuda/flash_attention.cu) and cuDNN's
// fused attention (model/cuda/cudnn_attention.cu; rows only for the passes cuDNN took) against the
// reference path (probs [B, H, S, S] and cuBLAS batched GEMMs, model/cuda/attention.cu).
//   attention_bench [--batch 4] [--seq 2048] [--heads 16] [--head-dim 128] [--iters 20]
//                   [--warmup 5] [--dtype bf16|f32] [--no-reference]
// Each op is timed with CUDA events on the backend's stream, one pair per run; the table gives
// the median of --iters runs after --warmup. FLOPs are the causal half of the matmuls: forward
// 4 B H S^2 Dh / 2, backward 2.5 times that (the reference path computes the full S x S but is
// credited the same, so the columns compare times). Also prints how far flash is from the
// reference (relative L2 of out, dq, dk, dv) as a sanity check, and the peak device memory.
// cuDNN's backward is timed twice: deterministic (the default) and, as run.deterministic false
// runs it, accumulating dQ across key tiles ("cudnn nondeterministic").
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "bench/cuda_timing.h"
#include "model/rng.h"

namespace {

using namespace sy;

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

}  // namespace

int main(int argc, char** argv) {
  int64_t B = 4, S = 2048, H = 16, Dh = 128;
  int iters = 20, warmup = 5;
  bool reference = true;
  DType dtype = DType::bf16;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "attention_bench: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--batch") B = std::atoll(next());
    else if (arg == "--seq") S = std::atoll(next());
    else if (arg == "--heads") H = std::atoll(next());
    else if (arg == "--head-dim") Dh = std::atoll(next());
    else if (arg == "--iters") iters = std::atoi(next());
    else if (arg == "--warmup") warmup = std::atoi(next());
    else if (arg == "--no-reference") reference = false;
    else if (arg == "--dtype") dtype = std::strcmp(next(), "f32") == 0 ? DType::f32 : DType::bf16;
    else {
      std::fprintf(stderr, "attention_bench: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "attention_bench: no CUDA device visible\n");
    return 1;
  }
  try {
    std::unique_ptr<Backend> gpu_owner = make_cuda_backend(0);
    Backend& gpu = *gpu_owner;
    const auto stream = static_cast<cudaStream_t>(gpu.native_stream());
    auto time_ms = [&](const std::function<void()>& f) {
      return bench::median_ms(stream, warmup, iters, f);
    };
    const int64_t T = B * S, D = H * Dh;
    const DType stat = stat_dtype(dtype);
    auto random = [&](uint64_t seed) {
      CounterRng rng(seed);
      std::vector<double> v(T * D);
      for (double& x : v) x = rng.normal();
      Tensor t = gpu.alloc({T, D}, dtype);
      gpu.write(t, std::span<const double>(v));
      return t;
    };
    Tensor q = random(1), k = random(2), v = random(3), dout = random(4);
    Tensor out = gpu.alloc({T, D}, dtype), lse = gpu.alloc({B, H, S}, stat);
    Tensor dq = gpu.alloc({T, D}, dtype), dk = gpu.alloc({T, D}, dtype), dv = gpu.alloc({T, D}, dtype);

    const double fwd_flop = 4.0 * B * H * double(S) * S * Dh / 2, bwd_flop = 2.5 * fwd_flop;
    struct Row {
      std::string kernel, pass;
      double ms, flop;
    };
    std::vector<Row> rows;
    rows.push_back({"flash", "forward", time_ms([&] {
                       gpu.flash_attention_forward(out, lse, q, k, v, B, S, H);
                     }), fwd_flop});
    rows.push_back({"flash", "backward", time_ms([&] {
                       gpu.flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, S, H);
                     }), bwd_flop});
    const size_t flash_peak = gpu.peak_memory_bytes();
    // cuDNN's fused attention (model/cuda/cudnn_attention.cu), as the attention layer's `cudnn`
    // kernel runs it: the same ops after prefer_cudnn_attention; checked against flash.
    std::string cudnn_line;
    {
      Tensor out_c = gpu.alloc({T, D}, dtype), lse_c = gpu.alloc({B, H, S}, stat);
      Tensor dq_c = gpu.alloc({T, D}, dtype), dk_c = gpu.alloc({T, D}, dtype),
             dv_c = gpu.alloc({T, D}, dtype);
      gpu.prefer_cudnn_attention(true);
      gpu.flash_attention_forward(out_c, lse_c, q, k, v, B, S, H);
      const std::string fwd_kernel = cuda_attention_kernel(gpu);
      gpu.flash_attention_backward(dq_c, dk_c, dv_c, dout, q, k, v, out_c, lse_c, B, S, H);
      const std::string bwd_kernel = cuda_attention_kernel(gpu);
      if (fwd_kernel == "cudnn")
        rows.push_back({"cudnn", "forward", time_ms([&] {
                           gpu.flash_attention_forward(out_c, lse_c, q, k, v, B, S, H);
                         }), fwd_flop});
      if (bwd_kernel == "cudnn")
        rows.push_back({"cudnn", "backward", time_ms([&] {
                           gpu.flash_attention_backward(dq_c, dk_c, dv_c, dout, q, k, v, out_c,
                                                        lse_c, B, S, H);
                         }), bwd_flop});
      // run.deterministic false: the dQ-accumulating form, against the deterministic one.
      Tensor dq_n = gpu.alloc({T, D}, dtype), dk_n = gpu.alloc({T, D}, dtype),
             dv_n = gpu.alloc({T, D}, dtype);
      gpu.set_deterministic(false);
      gpu.flash_attention_backward(dq_n, dk_n, dv_n, dout, q, k, v, out_c, lse_c, B, S, H);
      const std::string nondet_kernel = cuda_attention_kernel(gpu);
      if (nondet_kernel == "cudnn nondeterministic")
        rows.push_back({"cudnn nondeterministic", "backward", time_ms([&] {
                          gpu.flash_attention_backward(dq_n, dk_n, dv_n, dout, q, k, v, out_c,
                                                       lse_c, B, S, H);
                        }),
                        bwd_flop});
      gpu.set_deterministic(true);
      gpu.prefer_cudnn_attention(false);
      char line[1024];
      std::snprintf(line, sizeof line,
                    "cudnn (forward ran %s; backward ran %s) vs flash, relative L2: out %.2e, "
                    "lse %.2e, dq %.2e, dk %.2e, dv %.2e\n"
                    "cudnn without determinism (backward ran %s) vs deterministic cudnn, relative "
                    "L2: dq %.2e, dk %.2e, dv %.2e",
                    fwd_kernel.c_str(), bwd_kernel.c_str(), rel_l2(gpu.read(out_c), gpu.read(out)),
                    rel_l2(gpu.read(lse_c), gpu.read(lse)), rel_l2(gpu.read(dq_c), gpu.read(dq)),
                    rel_l2(gpu.read(dk_c), gpu.read(dk)), rel_l2(gpu.read(dv_c), gpu.read(dv)),
                    nondet_kernel.c_str(), rel_l2(gpu.read(dq_n), gpu.read(dq_c)),
                    rel_l2(gpu.read(dk_n), gpu.read(dk_c)), rel_l2(gpu.read(dv_n), gpu.read(dv_c)));
      cudnn_line = line;
    }
    const size_t cudnn_peak = gpu.peak_memory_bytes();
    std::string sanity = "reference skipped";
    if (reference) {
      Tensor out_r = gpu.alloc({T, D}, dtype), probs = gpu.alloc({B, H, S, S}, dtype);
      Tensor dq_r = gpu.alloc({T, D}, dtype), dk_r = gpu.alloc({T, D}, dtype),
             dv_r = gpu.alloc({T, D}, dtype);
      rows.push_back({"reference", "forward", time_ms([&] {
                         gpu.attention_forward(out_r, probs, q, k, v, B, S, H);
                       }), fwd_flop});
      rows.push_back({"reference", "backward", time_ms([&] {
                         gpu.attention_backward(dq_r, dk_r, dv_r, dout, q, k, v, probs, B, S, H);
                       }), bwd_flop});
      char line[256];
      std::snprintf(line, sizeof line,
                    "flash vs reference, relative L2: out %.2e, dq %.2e, dk %.2e, dv %.2e",
                    rel_l2(gpu.read(out), gpu.read(out_r)), rel_l2(gpu.read(dq), gpu.read(dq_r)),
                    rel_l2(gpu.read(dk), gpu.read(dk_r)), rel_l2(gpu.read(dv), gpu.read(dv_r)));
      sanity = line;
    }
    std::printf("%s\n%s\n", cudnn_line.c_str(), sanity.c_str());
    std::printf("peak device memory: %.2f GiB after flash, %.2f GiB after cudnn, %.2f GiB in all\n",
                flash_peak / double(1 << 30), cudnn_peak / double(1 << 30),
                gpu.peak_memory_bytes() / double(1 << 30));
    std::printf("\ncausal attention, B=%lld S=%lld H=%lld Dh=%lld %s, %s (median of %d)\n",
                static_cast<long long>(B), static_cast<long long>(S), static_cast<long long>(H),
                static_cast<long long>(Dh), dtype_name(dtype), gpu.name().c_str(), iters);
    std::printf("| kernel | pass | ms | TFLOP/s |\n|---|---|---|---|\n");
    for (const Row& r : rows)
      std::printf("| %s | %s | %.3f | %.1f |\n", r.kernel.c_str(), r.pass.c_str(), r.ms,
                  r.flop / (r.ms * 1e-3) / 1e12);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
