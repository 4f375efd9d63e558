// The bandwidth-bound ops of a training step on one GPU, on the benchmark shapes (dense:
// T = 8192 tokens, D = 2048, F = 8192; MoE: top-2, R = 16384 permuted rows; LM head: chunks of
// 1024 rows x V = 32768 logits in f32, as model/lm_head.cpp runs them; router projection: f32
// w [D, E], bf16 u).
//   memory_bound_bench [--tokens 8192] [--d-model 2048] [--ffn 8192] [--vocab 32768]
//                      [--ce-rows 1024] [--top-k 2] [--heads 16] [--experts 8] [--iters 20]
//                      [--warmup 5]
// Each op is timed with CUDA events on the backend's stream (median of --iters runs after
// --warmup) and credited the bytes it must move: every input read once, every output written
// once (rstd, gains, gates and index arrays included). The table gives ms, GB/s, the share of
// the H200's measured 4.3 TB/s copy bandwidth, and the per-call time of the kernels before this
// change (docs/measured profile of commit 6cfb289: total ms / calls).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "bench/cuda_timing.h"
#include "model/rng.h"

namespace {

using namespace sy;

constexpr double kCopyBandwidth = 4.3e12;  // bytes/s, measured on the H200

struct Row {
  std::string op, shape;
  double ms, bytes, before_ms;  // before_ms < 0: not in the profile
};

}  // namespace

int main(int argc, char** argv) {
  int64_t T = 8192, D = 2048, F = 8192, V = 32768, ce_rows = 1024, K = 2, H = 16, E = 8;
  int iters = 20, warmup = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "memory_bound_bench: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--tokens") T = std::atoll(next());
    else if (arg == "--d-model") D = std::atoll(next());
    else if (arg == "--ffn") F = std::atoll(next());
    else if (arg == "--vocab") V = std::atoll(next());
    else if (arg == "--ce-rows") ce_rows = std::atoll(next());
    else if (arg == "--top-k") K = std::atoll(next());
    else if (arg == "--heads") H = std::atoll(next());
    else if (arg == "--experts") E = std::atoll(next());
    else if (arg == "--iters") iters = std::atoi(next());
    else if (arg == "--warmup") warmup = std::atoi(next());
    else {
      std::fprintf(stderr, "memory_bound_bench: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "memory_bound_bench: no CUDA device visible\n");
    return 1;
  }
  try {
    std::unique_ptr<Backend> gpu_owner = make_cuda_backend(0);
    Backend& gpu = *gpu_owner;
    const auto stream = static_cast<cudaStream_t>(gpu.native_stream());
    const DType bf = DType::bf16, f32 = DType::f32;
    uint64_t seed = 1;
    // Values in [-2, 2) (logits in [-8, 8)): finite through every op and its repeats.
    auto random = [&](const Shape& shape, DType dtype, double range = 2.0) {
      Tensor t = gpu.alloc(shape, dtype);
      CounterRng rng(seed++);
      std::vector<float> v(static_cast<size_t>(t.numel()));
      for (float& x : v) x = static_cast<float>((2 * rng.uniform() - 1) * range);
      gpu.write(t, std::span<const float>(v));
      return t;
    };
    const double b2 = 2, b4 = 4;  // bytes of bf16, f32
    std::vector<Row> rows;
    auto add_row = [&](std::string op, std::string shape, double bytes, double before,
                       const std::function<void()>& f) {
      rows.push_back({std::move(op), std::move(shape), bench::median_ms(stream, warmup, iters, f),
                      bytes, before});
      std::fprintf(stderr, "  %-28s %.4f ms\n", rows.back().op.c_str(), rows.back().ms);
    };
    const std::string td = "[" + std::to_string(T) + "," + std::to_string(D) + "]";
    const std::string tf = "[" + std::to_string(T) + "," + std::to_string(F) + "]";

    {  // SwiGLU over [T, F]
      Tensor a = random({T, F}, bf), b = random({T, F}, bf), dout = random({T, F}, bf);
      Tensor out = gpu.alloc({T, F}, bf), da = gpu.alloc({T, F}, bf), db = gpu.alloc({T, F}, bf);
      const double n = double(T) * F;
      add_row("swiglu_forward", tf, 3 * n * b2, 6.150 / 24, [&] { gpu.swiglu_forward(out, a, b); });
      add_row("swiglu_backward", tf, 5 * n * b2, 9.253 / 24,
              [&] { gpu.swiglu_backward(da, db, dout, a, b); });
    }
    {  // RMSNorm, residual add and RoPE over [T, D]
      Tensor x = random({T, D}, bf), dout = random({T, D}, bf), gain = random({D}, f32);
      Tensor out = gpu.alloc({T, D}, bf), rstd = gpu.alloc({T}, f32), dx = gpu.alloc({T, D}, bf);
      Tensor dgain = gpu.alloc({D}, f32);
      gpu.fill(dgain, 0.0);
      const double n = double(T) * D;
      add_row("rmsnorm_forward", td, 2 * n * b2 + T * b4 + D * b4, 2.295 / 51,
              [&] { gpu.rmsnorm_forward(out, rstd, x, gain); });
      add_row("rmsnorm_backward", td, 3 * n * b2 + T * b4 + 3 * D * b4, 6.285 / 51,
              [&] { gpu.rmsnorm_backward(dx, dgain, dout, x, gain, rstd); });
      // The residual stream's fused forms; before them, the pairs of ops they replace.
      Tensor x2 = random({T, D}, bf), sum = gpu.alloc({T, D}, bf);
      add_row("add_into + rmsnorm_forward", td, 5 * n * b2 + T * b4 + D * b4, -1, [&] {
        gpu.add_into(sum, x, x2);
        gpu.rmsnorm_forward(out, rstd, sum, gain);
      });
      add_row("add_rmsnorm_forward", td, 4 * n * b2 + T * b4 + D * b4, -1,
              [&] { gpu.add_rmsnorm_forward(sum, out, rstd, x, x2, gain); });
      Tensor dres = random({T, D}, bf);
      add_row("rmsnorm_backward + add", td, 6 * n * b2 + T * b4 + 3 * D * b4, -1, [&] {
        gpu.rmsnorm_backward(dx, dgain, dout, x, gain, rstd);
        gpu.add(dres, dx, 1.0);
      });
      add_row("rmsnorm_backward accumulate", td, 4 * n * b2 + T * b4 + 3 * D * b4, -1,
              [&] { gpu.rmsnorm_backward(dres, dgain, dout, x, gain, rstd, true); });
      // y += x alternately with alpha +1 and -1 keeps y bounded over the repeats.
      double alpha = 1;
      add_row("add bf16+=bf16", td, 3 * n * b2, 4.335 / 96, [&] {
        gpu.add(out, x, alpha);
        alpha = -alpha;
      });
      const int64_t B = T / 2048 > 0 ? T / 2048 : 1, S = T / B;
      Tensor q = random({T, D}, bf), k = random({T, D}, bf);
      const double tables = 2.0 * S * (D / H / 2) * b4;
      // Forward then backward on the same tensors: a rotation and its inverse.
      add_row("rope_forward (q and k)", "2x" + td, 4 * n * b2 + tables, 2 * 3.083 / 48,
              [&] { gpu.rope_forward_qk(q, k, B, S, H); });
      add_row("rope_backward (q and k)", "2x" + td, 4 * n * b2 + tables, 2 * 3.035 / 48,
              [&] { gpu.rope_backward_qk(q, k, B, S, H); });
    }
    {  // cross-entropy over one LM-head chunk [ce_rows, V] of f32 logits, with the gradient
      const int64_t n = ce_rows * V;
      Tensor logits = random({ce_rows, V}, f32, 8.0), losses = gpu.alloc({ce_rows}, f32);
      Tensor targets = gpu.alloc({ce_rows}, DType::i32);
      std::vector<int32_t> tv(static_cast<size_t>(ce_rows));
      CounterRng rng(seed++);
      for (int32_t& t : tv) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
      gpu.write(targets, std::span<const int32_t>(tv));
      // The op overwrites the logits with their gradient; later runs see those (finite) values,
      // which changes nothing in the bytes moved.
      const std::string cv = "[" + std::to_string(ce_rows) + "," + std::to_string(V) + "]";
      add_row("cross_entropy f32 (grad)", cv, 2.0 * n * b4 + ce_rows * (b4 + 4), 5.196 / 24,
              [&] { gpu.cross_entropy(losses, logits, targets, true, 1.0 / double(T)); });
      // The training step's form: f32 logits read, their gradient written in bf16 beside them.
      Tensor logits_f = random({ce_rows, V}, f32, 8.0), dlogits = gpu.alloc({ce_rows, V}, bf);
      add_row("cross_entropy_into f32 -> bf16", cv, n * b4 + n * b2 + ce_rows * (b4 + 4), -1,
              [&] { gpu.cross_entropy_into(losses, logits_f, targets, 1.0 / double(T), dlogits); });
      Tensor logits_bf = random({ce_rows, V}, bf, 8.0);
      add_row("cross_entropy bf16 (grad)", cv, 2.0 * n * b2 + ce_rows * (b4 + 4), -1,
              [&] { gpu.cross_entropy(losses, logits_bf, targets, true, 1.0 / double(T)); });
    }
    {  // MoE permutation: assignment s = t*K + k goes to row perm[s] (a random permutation).
      const int64_t R = T * K;
      std::vector<int32_t> slot_row(static_cast<size_t>(R)), row_slot(static_cast<size_t>(R));
      std::iota(row_slot.begin(), row_slot.end(), 0);
      CounterRng rng(seed++);
      for (int64_t i = R - 1; i > 0; --i)
        std::swap(row_slot[i], row_slot[rng.below(static_cast<uint64_t>(i + 1))]);
      for (int64_t r = 0; r < R; ++r) slot_row[row_slot[r]] = static_cast<int32_t>(r);
      Tensor slot_row_t = gpu.alloc({R}, DType::i32);
      gpu.write(slot_row_t, std::span<const int32_t>(slot_row));
      Tensor x = random({T, D}, bf), dout = random({T, D}, bf), y_perm = random({R, D}, bf);
      Tensor gates = random({T, K}, f32, 1.0);
      Tensor x_perm = gpu.alloc({R, D}, bf), dx = gpu.alloc({T, D}, bf);
      Tensor out = gpu.alloc({T, D}, bf), dy_perm = gpu.alloc({R, D}, bf);
      Tensor dgates = gpu.alloc({T, K}, f32);
      const double n = double(T) * D, nr = double(R) * D, idx = double(R) * 4;
      const std::string rd = "[" + std::to_string(R) + "," + std::to_string(D) + "]";
      add_row("permute_rows", rd, (n + nr) * b2 + idx, 3.807 / 24,
              [&] { gpu.permute_rows(x_perm, x, slot_row_t, K); });
      add_row("permute_rows_backward", td, (n + nr) * b2 + idx, 2.249 / 24,
              [&] { gpu.permute_rows_backward(dx, x_perm, slot_row_t, K); });
      add_row("unpermute_combine", td, (n + nr) * b2 + idx + R * b4, 2.335 / 24,
              [&] { gpu.unpermute_combine(out, y_perm, gates, slot_row_t); });
      // Essential bytes: dout, y_perm read, dy_perm written once (the op also clears dy_perm
      // first, one more write of [R, D], for rows no assignment names).
      add_row("unpermute_combine_backward", rd, (n + 2 * nr) * b2 + idx + 2 * R * b4, 2.604 / 24,
              [&] { gpu.unpermute_combine_backward(dy_perm, dgates, dout, y_perm, gates,
                                                   slot_row_t); });
      // The MoE layer's input gradient: the gather of each token's K rows plus dlogits w^T.
      Tensor dlogits = random({T, E}, f32, 1.0), w = random({D, E}, f32, 0.02);
      add_row("router_input_grad", td + " E=" + std::to_string(E),
              (n + nr) * b2 + idx + double(T) * E * b4 + double(D) * E * b4, -1,
              [&] { gpu.router_input_grad(dx, y_perm, slot_row_t, K, dlogits, w); });
    }
    {  // router projection: logits [T, E] = u [T, D] @ w [D, E], and its backward (dw written,
       // du accumulated: it drifts over the repeats by sums of 8 small products, staying finite)
      Tensor u = random({T, D}, bf), w = random({D, E}, f32, 0.02);
      Tensor dlogits = random({T, E}, f32), du = random({T, D}, bf);
      Tensor logits = gpu.alloc({T, E}, f32), dw = gpu.alloc({D, E}, f32);
      const double n = double(T) * D, te = double(T) * E * b4, de = double(D) * E * b4;
      add_row("router_logits", td + " E=" + std::to_string(E), n * b2 + de + te, -1,
              [&] { gpu.router_logits(logits, u, w); });
      // u read; du read and written; dlogits and w read; dw written.
      add_row("router_logits_backward", td + " E=" + std::to_string(E), 3 * n * b2 + te + 2 * de,
              -1, [&] { gpu.router_logits_backward(dw, du, dlogits, u, w, 0.0); });
    }
    gpu.synchronize();

    std::printf("\nmemory-bound ops, %s (median of %d; bytes = inputs read once + outputs "
                "written once; %% of %.1f TB/s)\n",
                gpu.name().c_str(), iters, kCopyBandwidth / 1e12);
    std::printf("| op | shape | MB moved | ms | GB/s | %% of 4.3 TB/s | ideal ms | before ms | "
                "speed-up |\n|---|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows) {
      const double gbs = r.bytes / (r.ms * 1e-3) / 1e9;
      char before[32] = "-", speedup[32] = "-";
      if (r.before_ms > 0) {
        std::snprintf(before, sizeof before, "%.3f", r.before_ms);
        std::snprintf(speedup, sizeof speedup, "%.2fx", r.before_ms / r.ms);
      }
      std::printf("| %s | %s | %.1f | %.4f | %.0f | %.1f | %.4f | %s | %s |\n", r.op.c_str(),
                  r.shape.c_str(), r.bytes / 1e6, r.ms, gbs, 100.0 * gbs * 1e9 / kCopyBandwidth,
                  r.bytes / kCopyBandwidth * 1e3, before, speedup);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_bound_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
