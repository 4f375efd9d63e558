// Can the optimizer pass hide under the next step's forward? On one GPU, two CUDA backends (two
// streams): one runs the MoE benchmark config's forward GEMMs (per layer the q, k, v and o
// projections through cuBLAS and the experts' three grouped GEMMs, as training calls them), the
// other the fused AdamW pass over as many fp32 parameters as that config has. Timed with CUDA
// events: each alone, then both launched together (the second stream waits for the first's
// start, the first for the second's end), an upper bound; then layered, as a trainer would run
// it: the pass cut into one group of tensors per layer, layer l's forward waiting for an event
// after its group's update. Each layer's forward also runs its main bandwidth-bound ops (two
// RMSNorms, two residual sums, the permute, SwiGLU), which compete with the optimizer for memory
// bandwidth; --gemms-only leaves them out. Attention and the router are not run.
//   overlap_bench [--layers 8] [--params 1812105216] [--repeats 5] [--gemms-only]
//                 [--adamw-grids 0,100,80,66,48]
// For each cap of the AdamW pass's grid (SY_ADAMW_BLOCKS, 0: a block per chunk; fewer blocks
// leave more SMs to the GEMMs; a capped pass runs blocks of 1024 threads, one an SM): ms alone,
// together and layered, the share of the shorter of the two that running together hid, and
// what the layered run saves against the best serial pair (the forward, then the fastest pass).
// The uncapped pass tunes its launch shape in its first passes (docs/cuda.md), some of which
// would fall in the timed rounds here: SY_ADAMW_SHAPE=wide pins the shape that BENCHMARKS.md's
// table ran.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
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

// The forward of `layers` MoE layers with balanced routing (bf16): the GEMMs and, with
// `elementwise`, the main bandwidth-bound ops.
struct ForwardGemms {
  Tensor x, q, projection_weight, x_perm, h1, h3, y_perm, w1, w3, w2;
  Tensor normed, rstd, gain, slot_row, hidden, residual;  // the bandwidth-bound ops' operands
  std::vector<int64_t> rows_per_expert;
  int layers = 0;
  bool elementwise = true;

  ForwardGemms(Backend& gpu, int layer_count, bool with_elementwise)
      : layers(layer_count), elementwise(with_elementwise) {
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
    normed = gpu.zeros({kTokens, kModel}, DType::bf16);
    residual = gpu.zeros({kTokens, kModel}, DType::bf16);
    rstd = gpu.zeros({kTokens}, DType::f32);
    gain = gpu.zeros({kModel}, DType::f32);
    hidden = gpu.zeros({rows, kHidden}, DType::bf16);
    std::vector<int32_t> slots(static_cast<size_t>(rows));
    for (size_t r = 0; r < slots.size(); ++r) slots[r] = static_cast<int32_t>(r);
    slot_row = gpu.zeros({rows}, DType::i32);
    gpu.copy_from_host(slot_row, slots.data());
  }

  // One layer's forward GEMMs and, with `elementwise`, its main bandwidth-bound ops: two
  // RMSNorms, two residual sums, the permute of the expert inputs and SwiGLU.
  void run_layer(Backend& gpu) const {
    if (elementwise) gpu.rmsnorm_forward(normed, rstd, x, gain);
    for (int projection = 0; projection < 4; ++projection)
      gpu.gemm(q, x, false, projection_weight, false, 1.0, 0.0);
    if (elementwise) {
      gpu.add_into(residual, x, q);
      gpu.rmsnorm_forward(normed, rstd, residual, gain);
      gpu.permute_rows(x_perm, normed, slot_row, kTopK);
    }
    gpu.grouped_gemm(h1, x_perm, w1, false, rows_per_expert, false);
    gpu.grouped_gemm(h3, x_perm, w3, false, rows_per_expert, false);
    if (elementwise) gpu.swiglu_forward(hidden, h1, h3);
    gpu.grouped_gemm(y_perm, elementwise ? hidden : h1, w2, false, rows_per_expert, false);
    if (elementwise) gpu.add_into(residual, x, q);
  }
  void run(Backend& gpu) const {
    for (int l = 0; l < layers; ++l) run_layer(gpu);
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
  // The tensors of group g of `groups` (contiguous, as a model's layers are): one pass each.
  void run_group(Backend& gpu, int g, int groups) {
    if (g == 0) ++hp.step;
    const size_t begin = list.size() * g / groups, end = list.size() * (g + 1) / groups;
    gpu.fused_adamw_step(std::span(list).subspan(begin, end - begin),
                         std::span(exp_avgs).subspan(begin, end - begin),
                         std::span(exp_avg_sqs).subspan(begin, end - begin), hp);
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

// One row: AdamW alone and beside the forward, with the pass's grid capped at `cap` blocks
// (SY_ADAMW_BLOCKS; 0: one block a chunk).
struct Row {
  int64_t cap;
  double forward_ms, update_ms, both_ms, layered_ms;
};

Row measure(ForwardGemms& forward, Backend& compute, OptimizerPass& optimizer, Backend& update,
            int64_t cap, int repeats) {
  const auto compute_stream = static_cast<cudaStream_t>(compute.native_stream());
  const auto update_stream = static_cast<cudaStream_t>(update.native_stream());
  if (cap > 0) setenv("SY_ADAMW_BLOCKS", std::to_string(cap).c_str(), 1);
  else unsetenv("SY_ADAMW_BLOCKS");
  cudaEvent_t start, stop, forked, joined;
  for (cudaEvent_t* e : {&start, &stop, &forked, &joined})
    bench::check_cuda(cudaEventCreate(e), "cudaEventCreate");
  std::vector<cudaEvent_t> updated(static_cast<size_t>(forward.layers));
  for (cudaEvent_t& e : updated)
    bench::check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  std::vector<double> forward_ms, update_ms, both_ms, layered_ms;
  for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up
    const float f = elapsed_ms(compute_stream, start, stop, [&] { forward.run(compute); });
    const float u = elapsed_ms(update_stream, start, stop, [&] { optimizer.run(update); });
    const float b = elapsed_ms(compute_stream, start, stop, [&] {
      bench::check_cuda(cudaEventRecord(forked, compute_stream), "cudaEventRecord");
      bench::check_cuda(cudaStreamWaitEvent(update_stream, forked), "cudaStreamWaitEvent");
      optimizer.run(update);
      forward.run(compute);
      bench::check_cuda(cudaEventRecord(joined, update_stream), "cudaEventRecord");
      bench::check_cuda(cudaStreamWaitEvent(compute_stream, joined), "cudaStreamWaitEvent");
    });
    // As a trainer would run it: layer l's update, then (on the other stream) layer l's forward.
    const float layered = elapsed_ms(compute_stream, start, stop, [&] {
      bench::check_cuda(cudaEventRecord(forked, compute_stream), "cudaEventRecord");
      bench::check_cuda(cudaStreamWaitEvent(update_stream, forked), "cudaStreamWaitEvent");
      for (int l = 0; l < forward.layers; ++l) {
        optimizer.run_group(update, l, forward.layers);
        bench::check_cuda(cudaEventRecord(updated[l], update_stream), "cudaEventRecord");
      }
      for (int l = 0; l < forward.layers; ++l) {
        bench::check_cuda(cudaStreamWaitEvent(compute_stream, updated[l]), "cudaStreamWaitEvent");
        forward.run_layer(compute);
      }
    });
    if (r == 0) continue;
    forward_ms.push_back(f);
    update_ms.push_back(u);
    both_ms.push_back(b);
    layered_ms.push_back(layered);
  }
  for (cudaEvent_t e : {start, stop, forked, joined}) cudaEventDestroy(e);
  for (cudaEvent_t e : updated) cudaEventDestroy(e);
  unsetenv("SY_ADAMW_BLOCKS");
  return {cap, bench::median(forward_ms), bench::median(update_ms), bench::median(both_ms),
          bench::median(layered_ms)};
}

int run(int layers, int64_t total_params, int repeats, const std::vector<int64_t>& caps,
        bool elementwise) {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "overlap_bench: no CUDA device visible\n");
    return 1;
  }
  std::unique_ptr<Backend> compute = make_cuda_backend(0), update = make_cuda_backend(0);
  ForwardGemms forward(*compute, layers, elementwise);
  OptimizerPass optimizer(*update, total_params);
  update->synchronize();
  std::vector<Row> rows;
  for (int64_t cap : caps)
    rows.push_back(measure(forward, *compute, optimizer, *update, cap, repeats));

  std::printf(
      "forward GEMMs%s of %d MoE layers (T %lld, D %lld, %lld experts of %lld, top-%lld) "
      "and the fused AdamW pass over %.3g parameters on a second stream, %s, median of %d\n",
      elementwise ? " and bandwidth-bound ops" : "", layers, static_cast<long long>(kTokens),
      static_cast<long long>(kModel), static_cast<long long>(kExperts),
      static_cast<long long>(kHidden), static_cast<long long>(kTopK),
      static_cast<double>(total_params), compute->name().c_str(), repeats);
  // What a trainer would gain: the layered time against the fastest serial pair (the same
  // forward, then the pass at its best grid, on one stream).
  double serial = rows.front().forward_ms + rows.front().update_ms;
  for (const Row& r : rows) serial = std::min(serial, r.forward_ms + r.update_ms);
  std::printf("%-12s %10s %10s %10s %10s %10s %8s %11s %13s\n", "adamw_grid", "forward_ms",
              "adamw_ms", "both_ms", "sum_ms", "hidden_ms", "hidden%", "layered_ms",
              "saved_vs_best");
  for (const Row& r : rows) {
    const double sum = r.forward_ms + r.update_ms, hidden = sum - r.both_ms;
    const std::string grid = r.cap > 0 ? std::to_string(r.cap) : "per chunk";
    std::printf("%-12s %10.3f %10.3f %10.3f %10.3f %10.3f %7.0f%% %11.3f %13.3f\n", grid.c_str(),
                r.forward_ms, r.update_ms, r.both_ms, sum, hidden,
                100.0 * hidden / std::min(r.forward_ms, r.update_ms), r.layered_ms,
                serial - r.layered_ms);
  }
  std::printf("best serial (forward, then the pass at its fastest grid, one stream): %.3f ms\n",
              serial);
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
  std::vector<int64_t> caps{0, 100, 80, 66, 48};
  app.add_option("--adamw-grids", caps, "AdamW grid caps to try (SY_ADAMW_BLOCKS; 0: per chunk)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);
  bool gemms_only = false;
  app.add_flag("--gemms-only", gemms_only,
               "leave out the forward's RMSNorms, residual sums, permute and SwiGLU");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(layers, params, repeats, caps, !gemms_only);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "overlap_bench: %s\n", e.what());
    return 1;
  }
}
