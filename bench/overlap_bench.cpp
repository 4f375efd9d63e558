// Can the optimizer pass hide under the next step's forward? On one GPU, two CUDA backends (two
// streams): one runs the MoE benchmark config's forward GEMMs (per layer the q, k, v and o
// projections through cuBLAS and the experts' three grouped GEMMs, as training calls them), the
// other the fused AdamW pass over as many fp32 parameters as that config has. Timed with CUDA
// events: each alone, then both launched together (the second stream waits for the first's
// start, the first for the second's end). An upper bound on what overlapping the optimizer with
// the forward could save: no layer waits for its own update here, and the forward's
// bandwidth-bound ops (norms, SwiGLU, permutes), which would compete with the optimizer for
// memory bandwidth, are left out.
//   overlap_bench [--layers 8] [--params 1812105216] [--repeats 5]
// Prints ms alone and together, and the share of the shorter of the two that the overlap hid.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/cuda_timing.h"
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/param.h"

namespace {

using namespace sy;

constexpr int64_t kTokens = 8192, kModel = 2048, kExperts = 8, kHidden = 4096, kTopK = 2;

// The forward GEMMs of `layers` MoE layers with balanced routing (bf16).
struct ForwardGemms {
  Tensor x, q, projection_weight, x_perm, h1, h3, y_perm, w1, w3, w2;
  std::vector<int64_t> rows_per_expert;
  int layers = 0;

  ForwardGemms(Backend& gpu, int layer_count) : layers(layer_count) {
    const int64_t rows = kTokens * kTopK;
    x = gpu.zeros({kTokens, kModel}, DType::bf16);
    q = gpu.zeros({kTokens, kModel}, DType::bf16);
    projection_weight = gpu.zeros({kModel, kModel}, DType::bf16);
    x_perm = gpu.zeros({rows, kModel}, DType::bf16);
    h1 = gpu.zeros({rows, kHidden}, DType::bf16);
    h3 = gpu.zeros({rows, kHidden}, DType::bf16);
    y_perm = gpu.zeros({rows, kModel}, DType::bf16);
    w1 = gpu.zeros({kExperts, kModel, kHidden}, DType::bf16);
    w3 = gpu.zeros({kExperts, kModel, kHidden}, DType::bf16);
    w2 = gpu.zeros({kExperts, kHidden, kModel}, DType::bf16);
    rows_per_expert.assign(kExperts, rows / kExperts);
  }

  void run(Backend& gpu) const {
    for (int l = 0; l < layers; ++l) {
      for (int projection = 0; projection < 4; ++projection)
        gpu.gemm(q, x, false, projection_weight, false, 1.0, 0.0);
      gpu.grouped_gemm(h1, x_perm, w1, false, rows_per_expert, false);
      gpu.grouped_gemm(h3, x_perm, w3, false, rows_per_expert, false);
      gpu.grouped_gemm(y_perm, h1, w2, false, rows_per_expert, false);
    }
  }
};

// The fused AdamW pass over `total` fp32 parameters in tensors of at most 8M (the step's
// tensors are 4M to 64M), with bf16 compute copies.
struct OptimizerPass {
  std::vector<Param> params;
  std::vector<Param*> list;
  std::vector<Tensor> exp_avgs, exp_avg_sqs;
  AdamWStep hp;

  OptimizerPass(Backend& gpu, int64_t total) {
    constexpr int64_t kTensor = int64_t{8} << 20;
    params.resize(static_cast<size_t>((total + kTensor - 1) / kTensor));
    for (size_t i = 0; i < params.size(); ++i) {
      const int64_t numel = std::min(kTensor, total - static_cast<int64_t>(i) * kTensor);
      Param& p = params[i];
      p.path = "p";
      p.path += std::to_string(i);
      p.value = gpu.zeros({numel}, DType::f32);
      p.grad = gpu.zeros({numel}, DType::f32);
      p.compute = gpu.zeros({numel}, DType::bf16);
      exp_avgs.push_back(gpu.zeros({numel}, DType::f32));
      exp_avg_sqs.push_back(gpu.zeros({numel}, DType::f32));
      list.push_back(&p);
    }
    hp.lr = 3e-4;
    hp.beta2 = 0.95;
    hp.weight_decay = 0.1;
    hp.discard_grads = true;  // as training runs it: the grads are not written back
  }

  void run(Backend& gpu) {
    ++hp.step;
    gpu.fused_adamw_step(list, exp_avgs, exp_avg_sqs, hp);
  }
};

// Milliseconds from `start` to `stop`, both recorded on `stream` around f().
template <class F>
float elapsed_ms(cudaStream_t stream, cudaEvent_t start, cudaEvent_t stop, F&& f) {
  bench::check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
  f();
  bench::check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
  bench::check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  bench::check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  return ms;
}

int run(int layers, int64_t total_params, int repeats) {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "overlap_bench: no CUDA device visible\n");
    return 1;
  }
  std::unique_ptr<Backend> compute = make_cuda_backend(0), update = make_cuda_backend(0);
  const auto compute_stream = static_cast<cudaStream_t>(compute->native_stream());
  const auto update_stream = static_cast<cudaStream_t>(update->native_stream());
  ForwardGemms forward(*compute, layers);
  OptimizerPass optimizer(*update, total_params);
  update->synchronize();

  cudaEvent_t start, stop, forked, joined;
  for (cudaEvent_t* e : {&start, &stop, &forked, &joined})
    bench::check_cuda(cudaEventCreate(e), "cudaEventCreate");
  std::vector<double> forward_ms, update_ms, both_ms;
  for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up
    const float f = elapsed_ms(compute_stream, start, stop, [&] { forward.run(*compute); });
    const float u = elapsed_ms(update_stream, start, stop, [&] { optimizer.run(*update); });
    const float b = elapsed_ms(compute_stream, start, stop, [&] {
      bench::check_cuda(cudaEventRecord(forked, compute_stream), "cudaEventRecord");
      bench::check_cuda(cudaStreamWaitEvent(update_stream, forked), "cudaStreamWaitEvent");
      optimizer.run(*update);
      forward.run(*compute);
      bench::check_cuda(cudaEventRecord(joined, update_stream), "cudaEventRecord");
      bench::check_cuda(cudaStreamWaitEvent(compute_stream, joined), "cudaStreamWaitEvent");
    });
    if (r == 0) continue;
    forward_ms.push_back(f);
    update_ms.push_back(u);
    both_ms.push_back(b);
  }
  for (cudaEvent_t e : {start, stop, forked, joined}) cudaEventDestroy(e);

  const double f = bench::median(forward_ms), u = bench::median(update_ms),
               b = bench::median(both_ms);
  std::printf(
      "forward GEMMs of %d MoE layers (T %lld, D %lld, %lld experts of %lld, top-%lld) "
      "and the fused AdamW pass over %.3g parameters, %s, median of %d\n",
      layers, static_cast<long long>(kTokens), static_cast<long long>(kModel),
      static_cast<long long>(kExperts), static_cast<long long>(kHidden),
      static_cast<long long>(kTopK), static_cast<double>(total_params), compute->name().c_str(),
      repeats);
  std::printf("%-22s %9s\n", "", "ms");
  std::printf("%-22s %9.3f\n", "forward GEMMs alone", f);
  std::printf("%-22s %9.3f\n", "AdamW alone", u);
  std::printf("%-22s %9.3f\n", "both, two streams", b);
  std::printf("%-22s %9.3f\n", "one after the other", f + u);
  std::printf("hidden: %.3f ms, %.0f%% of the shorter\n", f + u - b,
              100.0 * (f + u - b) / std::min(f, u));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The fused AdamW pass under the forward's GEMMs on a second stream, one GPU"};
  int layers = 8, repeats = 5;
  int64_t params = 1812105216;  // configs/bench/moe.yaml
  app.add_option("--layers", layers, "MoE layers of forward GEMMs")->check(CLI::PositiveNumber);
  app.add_option("--params", params, "fp32 parameters the AdamW pass updates")
      ->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed rounds")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    return run(layers, params, repeats);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "overlap_bench: %s\n", e.what());
    return 1;
  }
}
