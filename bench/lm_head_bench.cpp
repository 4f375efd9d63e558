// The LM head with cross-entropy on one GPU (model/lm_head.cpp), bf16, tied embeddings, the
// benchmark configs' shape (8192 positions, d_model 2048, vocab 32768), timed with CUDA events:
//   lm_head_bench [--rows 8192] [--d-model 2048] [--vocab 32768] [--repeats 10]
//                 [--chunks 512,1024,2048,4096,8192] [--plans chunked,deferred,LMHead]
// For each chunk of rows, one row per plan (all three unless --plans names fewer: under
// SY_CUDA_PROFILE=events, one plan's ops alone):
//   chunked:  per chunk the logits GEMM (fp32 C), the cross-entropy writing dlogits (bf16), dx's
//             GEMM and the weight gradient's GEMM adding into the fp32 [V, D] gradient (beta 1
//             after the first chunk): LMHead's plan until 2026-12-04, replayed;
//   deferred: the logits and cross-entropy per chunk, dlogits kept for all rows, then one dx GEMM
//             and one weight-gradient GEMM over all rows (the GEMMs' K is every row, and the
//             fp32 gradient is written once instead of read and written per chunk);
//   LMHead:   LMHead::forward_backward itself (the deferred plan), total only.
// The two replayed plans' times are split into their GEMMs and their cross-entropy (each part
// timed alone, over all chunks), with the bytes their buffers hold. Prints one table; the
// median of the repeats.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/cuda_timing.h"
#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/lm_head.h"
#include "model/param.h"

namespace {

using namespace sy;

struct Shape3 {
  int64_t rows, d_model, vocab;
};

struct Inputs {
  Param table;     // the tied embedding [V, D]: fp32 master, bf16 compute, fp32 grad
  Tensor x;        // [T, D] bf16
  Tensor targets;  // [T] i32
};

Inputs make_inputs(Backend& gpu, const Shape3& s) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> host(static_cast<size_t>(s.vocab * s.d_model));
  for (float& v : host) v = 0.02f * normal(rng);
  Inputs in;
  in.table.path = "embedding";
  in.table.value = gpu.alloc({s.vocab, s.d_model}, DType::f32);
  gpu.write(in.table.value, host);
  in.table.compute = gpu.alloc({s.vocab, s.d_model}, DType::bf16);
  gpu.copy(in.table.compute, in.table.value);
  in.table.grad = gpu.alloc({s.vocab, s.d_model}, DType::f32);
  host.resize(static_cast<size_t>(s.rows * s.d_model));
  for (float& v : host) v = normal(rng);
  in.x = gpu.alloc({s.rows, s.d_model}, DType::bf16);
  gpu.write(in.x, host);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(s.vocab - 1));
  std::vector<int32_t> targets(static_cast<size_t>(s.rows));
  for (int32_t& t : targets) t = token(rng);
  in.targets = gpu.alloc({s.rows}, DType::i32);
  gpu.write(in.targets, targets);
  return in;
}

// The median of `repeats` timings of f() (after one warm-up call) on the
// backend's stream.
template <class F>
double median_ms(Backend& gpu, int repeats, F&& f) {
  auto stream = static_cast<cudaStream_t>(gpu.native_stream());
  bench::EventTimer timer;
  f();
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) ms.push_back(timer.time_ms(stream, f));
  return bench::median(ms);
}

struct Row {
  std::string plan;
  int64_t chunk;
  double total_ms = 0, logits_ms = 0, ce_ms = 0, dx_ms = 0, dw_ms = 0, held_mib = 0;
};

// A plan's buffers: fp32 logits for one chunk, bf16 dlogits for `dlogits_rows` rows, the losses
// and dx.
struct Buffers {
  Tensor logits, dlogits, losses, dx;
  Row row(const char* plan, int64_t chunk) const {
    Row r;
    r.plan = plan;
    r.chunk = chunk;
    r.held_mib = double(logits.nbytes() + dlogits.nbytes()) / (1 << 20);
    return r;
  }
};

Buffers make_buffers(Backend& gpu, const Shape3& s, int64_t chunk, int64_t dlogits_rows) {
  return {gpu.alloc({chunk, s.vocab}, DType::f32), gpu.alloc({dlogits_rows, s.vocab}, DType::bf16),
          gpu.alloc({s.rows}, DType::f32), gpu.alloc({s.rows, s.d_model}, DType::bf16)};
}

// The per-chunk plan that LMHead ran until 2026-12-04, replayed on the backend: per chunk the
// logits GEMM, the cross-entropy, dx's GEMM and the weight gradient's GEMM (beta 1 after the
// first chunk).
Row time_chunked(Backend& gpu, Inputs& in, const Shape3& s, int64_t chunk, int repeats) {
  const Buffers b = make_buffers(gpu, s, chunk, chunk);
  const Tensor &logits = b.logits, &dlogits = b.dlogits, &losses = b.losses, &dx = b.dx;
  const Tensor& w = in.table.compute;
  Row row = b.row("chunked", chunk);
  // parts: 1 logits GEMM, 2 cross-entropy, 4 dx GEMM, 8 weight-gradient GEMM.
  auto run = [&](int parts) {
    for (int64_t begin = 0; begin < s.rows; begin += chunk) {
      const int64_t end = std::min(s.rows, begin + chunk);
      const Tensor logits_chunk = logits.rows(0, end - begin);
      const Tensor dlogits_chunk = dlogits.rows(0, end - begin);
      const Tensor x_chunk = in.x.rows(begin, end);
      if (parts & 1) gpu.gemm(logits_chunk, x_chunk, false, w, true, 1.0, 0.0);
      if (parts & 2)
        gpu.cross_entropy_into(losses.rows(begin, end), logits_chunk, in.targets.rows(begin, end),
                               1e-4, dlogits_chunk);
      if (parts & 4) gpu.gemm(dx.rows(begin, end), dlogits_chunk, false, w, false, 1.0, 0.0);
      if (parts & 8)
        gpu.gemm(in.table.grad, dlogits_chunk, true, x_chunk, false, 1.0, begin == 0 ? 0.0 : 1.0);
    }
  };
  row.total_ms = median_ms(gpu, repeats, [&] { run(15); });
  row.logits_ms = median_ms(gpu, repeats, [&] { run(1); });
  row.ce_ms = median_ms(gpu, repeats, [&] { run(2); });
  row.dx_ms = median_ms(gpu, repeats, [&] { run(4); });
  row.dw_ms = median_ms(gpu, repeats, [&] { run(8); });
  return row;
}

// LMHead::forward_backward as training runs it (the deferred plan, with the loss read back).
Row time_model(Backend& gpu, Inputs& in, const Shape3& s, int64_t chunk, int repeats) {
  LMHead head;
  head.tied_table = &in.table;
  head.chunk_rows = chunk;
  Row row;
  row.plan = "LMHead";
  row.chunk = chunk;
  row.total_ms = median_ms(gpu, repeats, [&] {
    in.table.grad_state = Param::GradState::stale;
    head.forward_backward(gpu, in.x, in.targets, true, 1.0 / double(s.rows));
  });
  row.held_mib = double(head.logits.nbytes() + s.rows * s.vocab * 2) / (1 << 20);
  return row;
}

// The deferred plan: dlogits for every row, then one dx and one weight-gradient GEMM.
Row time_deferred(Backend& gpu, Inputs& in, const Shape3& s, int64_t chunk, int repeats) {
  const Buffers b = make_buffers(gpu, s, chunk, s.rows);
  const Tensor &logits = b.logits, &dlogits = b.dlogits, &losses = b.losses, &dx = b.dx;
  const Tensor& w = in.table.compute;
  Row row = b.row("deferred", chunk);
  auto forward = [&](bool gemm, bool ce) {
    for (int64_t begin = 0; begin < s.rows; begin += chunk) {
      const int64_t end = std::min(s.rows, begin + chunk);
      const Tensor logits_chunk = logits.rows(0, end - begin);
      if (gemm) gpu.gemm(logits_chunk, in.x.rows(begin, end), false, w, true, 1.0, 0.0);
      if (ce)
        gpu.cross_entropy_into(losses.rows(begin, end), logits_chunk, in.targets.rows(begin, end),
                               1e-4, dlogits.rows(begin, end));
    }
  };
  auto dx_gemm = [&] { gpu.gemm(dx, dlogits, false, w, false, 1.0, 0.0); };
  auto dw_gemm = [&] { gpu.gemm(in.table.grad, dlogits, true, in.x, false, 1.0, 0.0); };
  row.total_ms = median_ms(gpu, repeats, [&] {
    forward(true, true);
    dx_gemm();
    dw_gemm();
  });
  row.logits_ms = median_ms(gpu, repeats, [&] { forward(true, false); });
  row.ce_ms = median_ms(gpu, repeats, [&] { forward(false, true); });
  row.dx_ms = median_ms(gpu, repeats, dx_gemm);
  row.dw_ms = median_ms(gpu, repeats, dw_gemm);
  return row;
}

int run(const Shape3& s, const std::vector<int64_t>& chunks, const std::vector<std::string>& plans,
        int repeats) {
  auto wanted = [&](const char* plan) {
    return std::find(plans.begin(), plans.end(), plan) != plans.end();
  };
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "lm_head_bench: no CUDA device visible\n");
    return 1;
  }
  std::unique_ptr<Backend> gpu = make_cuda_backend(0);
  Inputs in = make_inputs(*gpu, s);
  std::vector<Row> rows;
  for (int64_t chunk : chunks) {
    if (wanted("chunked")) rows.push_back(time_chunked(*gpu, in, s, chunk, repeats));
    if (wanted("deferred")) rows.push_back(time_deferred(*gpu, in, s, chunk, repeats));
    if (wanted("LMHead")) rows.push_back(time_model(*gpu, in, s, chunk, repeats));
  }
  const double gemm_tflop = 3 * 2.0 * double(s.rows) * double(s.d_model) * double(s.vocab) / 1e12;
  std::printf(
      "LM head + cross-entropy: %lld rows, d_model %lld, vocab %lld, "
      "tied, bf16 (fp32 "
      "logits and weight gradient), median of %d, %s\n",
      static_cast<long long>(s.rows), static_cast<long long>(s.d_model),
      static_cast<long long>(s.vocab), repeats, gpu->name().c_str());
  std::printf("%-9s %6s %9s %9s %8s %8s %8s %10s %9s\n", "plan", "chunk", "total_ms", "logits_ms",
              "ce_ms", "dx_ms", "dw_ms", "gemm_TF/s", "held_MiB");
  for (const Row& r : rows)
    std::printf("%-9s %6lld %9.3f %9.3f %8.3f %8.3f %8.3f %10.1f %9.0f\n", r.plan.c_str(),
                static_cast<long long>(r.chunk), r.total_ms, r.logits_ms, r.ce_ms, r.dx_ms, r.dw_ms,
                gemm_tflop / ((r.logits_ms + r.dx_ms + r.dw_ms) * 1e-3), r.held_mib);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The LM head with cross-entropy on one GPU: chunked against "
      "deferred GEMMs"};
  Shape3 shape{8192, 2048, 32768};
  int repeats = 10;
  std::vector<int64_t> chunks{512, 1024, 2048, 4096, 8192};
  app.add_option("--rows", shape.rows, "positions (tokens) in the batch")
      ->check(CLI::PositiveNumber);
  app.add_option("--d-model", shape.d_model, "hidden width")->check(CLI::PositiveNumber);
  app.add_option("--vocab", shape.vocab, "vocabulary size")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed repeats per figure")->check(CLI::PositiveNumber);
  app.add_option("--chunks", chunks, "chunk sizes (rows)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  std::vector<std::string> plans{"chunked", "deferred", "LMHead"};
  app.add_option("--plans", plans, "plans to time")
      ->delimiter(',')
      ->check(CLI::IsMember({"chunked", "deferred", "LMHead"}));
  CLI11_PARSE(app, argc, argv);
  try {
    return run(shape, chunks, plans, repeats);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lm_head_bench: %s\n", e.what());
    return 1;
  }
}
