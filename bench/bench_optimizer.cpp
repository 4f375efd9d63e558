// The optimizer pass on one GPU: the fused multi-tensor pass (Backend::grad_norm_squares +
// fused_adamw_step, model/cuda/adamw.cu) against the per-tensor path it replaces (Backend's
// defaults: sum_squares_many, then per tensor scale, adamw_update, the bf16 copy, fill), on
// fp32 master weights with bf16 compute copies, timed with CUDA events on the backend's stream:
//   sy_bench_optimizer [--tensors 57] [--numel 33554432] [--repeats 20] [--grad-scale 0.5]
//                      [--layout copies|training]
// (57 x 32M = 1.91e9 parameters, 34 GB of state). Prints a table: milliseconds (median of the
// repeats) of the norm and of the update, the bytes each path moves, and the bandwidth that
// implies against the H200's 4.3 TB/s. `copies` (the default): f32 masters beside bf16 compute
// copies, f32 grads zeroed by the pass. `training`: what a bf16 training step holds on one GPU
// (split masters, bf16 grads that the pass reads and leaves stale); the per-tensor path is not
// timed there.
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#ifdef SY_HAVE_CUDA
#include "bench/cuda_timing.h"
#include "model/cuda/cuda_backend.h"
#endif

namespace {

using namespace sy;

constexpr double kPeakBytesPerS = 4.3e12;  // H200 HBM3e

#ifdef SY_HAVE_CUDA
using bench::median;

int run(int64_t tensors, int64_t numel, int repeats, double grad_scale, bool training) {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "sy_bench_optimizer: no CUDA device visible\n");
    return 1;
  }
  std::unique_ptr<Backend> gpu = make_cuda_backend(0);
  std::vector<Param> params(tensors);
  std::vector<Tensor> exp_avgs, exp_avg_sqs;
  for (int64_t i = 0; i < tensors; ++i) {
    Param& p = params[i];
    char path[32];  // (not "t" + std::to_string: GCC 12 warns falsely of overlapping copies)
    std::snprintf(path, sizeof path, "t%lld", static_cast<long long>(i));
    p.path = std::string(path);
    p.value = gpu->alloc({numel}, training ? DType::f32_split : DType::f32);
    p.grad = gpu->alloc({numel}, training ? DType::bf16 : DType::f32);
    p.compute = training ? p.value.high_half() : gpu->alloc({numel}, DType::bf16);
    p.bf16_grad = training;
    gpu->fill(p.value, 0.02);
    gpu->fill(p.grad, 1e-3);
    p.decay = true;
    p.is_expert = i % 2 == 1;
    exp_avgs.push_back(gpu->zeros({numel}, DType::f32));
    exp_avg_sqs.push_back(gpu->zeros({numel}, DType::f32));
  }
  std::vector<Param*> list;
  for (Param& p : params) list.push_back(&p);
  AdamWStep hp;
  hp.lr = 3e-4;
  hp.beta1 = 0.9;
  hp.beta2 = 0.95;
  hp.weight_decay = 0.1;
  hp.grad_scale = grad_scale;
  hp.zero_grads = !training;
  hp.discard_grads = training;

  auto stream = static_cast<cudaStream_t>(gpu->native_stream());
  bench::EventTimer timer;
  struct Row {
    const char* name;
    double norm_ms, update_ms, bytes;
  };
  std::vector<Row> rows;
  for (const bool fused : {false, true}) {
    if (training && !fused) continue;
    std::vector<double> norm_ms, update_ms;
    double shared = 0, expert = 0;
    // The first repeats warm up (tables, module loading, and unless SY_ADAMW_SHAPE pins one, the
    // fused update's five passes that choose its shape). The grads are zero after the first step;
    // the arithmetic does not depend on the values.
    constexpr int kWarmup = 6;
    for (int r = 0; r < repeats + kWarmup; ++r) {
      hp.step = r + 1;
      const float n_ms = timer.time_ms(stream, [&] {
        if (fused) gpu->grad_norm_squares(list, shared, expert);
        else gpu->Backend::grad_norm_squares(list, shared, expert);
      });
      const float u_ms = timer.time_ms(stream, [&] {
        if (fused) gpu->fused_adamw_step(list, exp_avgs, exp_avg_sqs, hp);
        else gpu->Backend::fused_adamw_step(list, exp_avgs, exp_avg_sqs, hp);
      });
      if (r >= kWarmup) {
        norm_ms.push_back(n_ms);
        update_ms.push_back(u_ms);
      }
    }
    // Bytes per element: the norm reads the grad (4). Per tensor: scale reads and writes it (8,
    // when clipping), AdamW reads param, grad, m, v and writes param, m, v (28), the copy reads
    // the param and writes bf16 (6), the fill writes the grad (4). Fused: 16 read, 12 + 2 + 4
    // written. Training layout: the norm reads a bf16 grad (2); the pass reads the two halves,
    // the grad, m and v (14) and writes the halves, m and v (12).
    const double per_element = training ? 2 + 26
                               : fused  ? 4 + 34
                                        : 4 + (grad_scale != 1.0 ? 8 : 0) + 28 + 6 + 4;
    rows.push_back({fused ? "fused" : "per-tensor", median(norm_ms), median(update_ms),
                    per_element * static_cast<double>(tensors * numel)});
  }

  std::printf(
      "optimizer pass: %lld tensors x %lld = %.3g fp32 parameters (%s), grad_scale %g, "
      "%d repeats (median), %s\n",
      static_cast<long long>(tensors), static_cast<long long>(numel),
      static_cast<double>(tensors * numel),
      training ? "split masters, bf16 grads" : "bf16 compute copies", grad_scale, repeats,
      gpu->name().c_str());
  std::printf("%-11s %9s %10s %9s %9s %9s %8s\n", "path", "norm_ms", "update_ms", "total_ms",
              "GB_moved", "TB/s", "of_peak");
  for (const Row& row : rows) {
    const double total = row.norm_ms + row.update_ms;
    const double tbps = row.bytes / (total * 1e-3) / 1e12;
    std::printf("%-11s %9.3f %10.3f %9.3f %9.2f %9.2f %7.0f%%\n", row.name, row.norm_ms,
                row.update_ms, total, row.bytes / 1e9, tbps, 100.0 * tbps * 1e12 / kPeakBytesPerS);
  }
  if (rows.size() == 2)
    std::printf("speed-up %.2fx\n",
                (rows[0].norm_ms + rows[0].update_ms) / (rows[1].norm_ms + rows[1].update_ms));
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  try {
    int64_t tensors = 57, numel = int64_t{32} << 20;
    int repeats = 20;
    double grad_scale = 0.5;
    std::string layout = "copies";
    for (int i = 1; i < argc; i += 2) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
      if (flag == "--tensors") tensors = std::stoll(argv[i + 1]);
      else if (flag == "--numel") numel = std::stoll(argv[i + 1]);
      else if (flag == "--repeats") repeats = std::stoi(argv[i + 1]);
      else if (flag == "--grad-scale") grad_scale = std::stod(argv[i + 1]);
      else if (flag == "--layout") layout = argv[i + 1];
      else throw std::runtime_error("unknown flag " + flag);
    }
    if (tensors < 1 || numel < 1 || repeats < 1)
      throw std::runtime_error("--tensors, --numel and --repeats must be positive");
    if (layout != "copies" && layout != "training")
      throw std::runtime_error("--layout must be copies or training, got '" + layout + "'");
#ifdef SY_HAVE_CUDA
    return run(tensors, numel, repeats, grad_scale, layout == "training");
#else
    (void)grad_scale;
    std::fprintf(stderr, "sy_bench_optimizer: built without CUDA\n");
    return 1;
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sy_bench_optimizer: error: %s\n", e.what());
    return 1;
  }
}
