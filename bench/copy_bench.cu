// How fast a kernel can stream bytes on this GPU, against cudaMemcpy: the floor that the fused
// AdamW pass (26 bytes a parameter, read and written once) is measured against. Each variant
// copies (or only reads, or only writes) --mib MiB, timed with CUDA events, median of --iters
// runs after --warmup; TB/s counts the bytes read plus the bytes written.
//   copy_bench [--mib 6912] [--iters 9] [--warmup 2] [--rounds 2]
// Variants:
//   memcpy          cudaMemcpyAsync device to device
//   chunk1024       float4, one 65536-vector chunk a 1024-thread block (AdamW's first grid)
//   short T xU      T threads, U float4 a thread loaded before any store, one block for every
//                   T * U vectors (many short blocks)
//   walk T xU       the same blocks, 2048 threads' worth an SM, walking the arrays
//   read / write    one way only: a sum of every vector (kept) / a fill
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench/cuda_timing.h"

namespace {

using sy::bench::check_cuda;

constexpr int64_t kChunkVectors = 65536;

__global__ void chunk_copy_kernel(const float4* __restrict__ in, float4* __restrict__ out,
                                  int64_t vectors) {
  const int64_t begin = int64_t(blockIdx.x) * kChunkVectors;
  const int64_t end = min(vectors, begin + kChunkVectors);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) __stcs(out + i, __ldcs(in + i));
}

// Block b copies vectors [b * T * U, +T * U) (short) or walks the arrays in steps of the grid's
// span (walk); each thread loads its U vectors before storing any.
template <int kThreads, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    unrolled_copy_kernel(const float4* __restrict__ in, float4* __restrict__ out, int64_t vectors) {
  constexpr int64_t kSpan = int64_t{kThreads} * kUnroll;
  for (int64_t base = int64_t(blockIdx.x) * kSpan; base < vectors;
       base += int64_t(gridDim.x) * kSpan) {
    float4 x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < vectors) x[u] = __ldcs(in + i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < vectors) __stcs(out + i, x[u]);
    }
  }
}

// Every vector read once; the sum is stored per block so that the loads are kept.
__global__ void read_kernel(const float4* __restrict__ in, float* __restrict__ sums,
                            int64_t vectors) {
  constexpr int kUnroll = 4;
  const int64_t span = int64_t(blockDim.x) * kUnroll;
  float sum = 0;
  for (int64_t base = int64_t(blockIdx.x) * span; base < vectors; base += int64_t(gridDim.x) * span)
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * blockDim.x + threadIdx.x;
      if (i < vectors) {
        const float4 v = __ldcs(in + i);
        sum += v.x + v.y + v.z + v.w;
      }
    }
  if (sum == 1.2345f) sums[blockIdx.x] = sum;  // never true for the zeroed input
}

__global__ void write_kernel(float4* __restrict__ out, int64_t vectors) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < vectors;
       i += int64_t(gridDim.x) * blockDim.x)
    __stcs(out + i, make_float4(0.f, 0.f, 0.f, 0.f));
}

struct Variant {
  std::string name;
  double bytes_per_vector;  // read + written
  std::function<void()> run;
};

int64_t blocks_for(int64_t vectors, int64_t per_block) {
  return (vectors + per_block - 1) / per_block;
}

template <int kThreads, int kUnroll>
void add_unrolled(std::vector<Variant>& variants, const float4* in, float4* out, int64_t vectors,
                  int sms, cudaStream_t stream) {
  const std::string shape = std::to_string(kThreads) + " x" + std::to_string(kUnroll);
  const int64_t short_grid = blocks_for(vectors, int64_t{kThreads} * kUnroll);
  variants.push_back({"short " + shape, 32, [=] {
                        unrolled_copy_kernel<kThreads, kUnroll>
                            <<<short_grid, kThreads, 0, stream>>>(in, out, vectors);
                      }});
  const int64_t walk_grid = int64_t{sms} * (2048 / kThreads);  // a full SM's threads
  variants.push_back({"walk " + shape, 32, [=] {
                        unrolled_copy_kernel<kThreads, kUnroll>
                            <<<walk_grid, kThreads, 0, stream>>>(in, out, vectors);
                      }});
}

struct Options {
  int mib = 6912, iters = 9, warmup = 2, rounds = 2;
};

void run(const Options& options) {
  const int mib = options.mib, iters = options.iters, warmup = options.warmup;
  const int rounds = options.rounds;
  const int64_t bytes = int64_t{mib} << 20;
  const int64_t vectors = bytes / 16;
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  float4 *in = nullptr, *out = nullptr;
  float* sums = nullptr;
  check_cuda(cudaMalloc(&in, bytes), "cudaMalloc");
  check_cuda(cudaMalloc(&out, bytes), "cudaMalloc");
  check_cuda(cudaMalloc(&sums, sizeof(float) << 20), "cudaMalloc");
  check_cuda(cudaMemset(in, 0, bytes), "cudaMemset");
  check_cuda(cudaMemset(out, 0, bytes), "cudaMemset");

  const int sms = prop.multiProcessorCount;
  std::vector<Variant> variants;
  variants.push_back({"memcpy", 32, [=] {
                        check_cuda(
                            cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync");
                      }});
  variants.push_back({"chunk1024", 32, [=] {
                        chunk_copy_kernel<<<blocks_for(vectors, kChunkVectors), 1024, 0, stream>>>(
                            in, out, vectors);
                      }});
  add_unrolled<256, 4>(variants, in, out, vectors, sms, stream);
  add_unrolled<256, 8>(variants, in, out, vectors, sms, stream);
  add_unrolled<512, 4>(variants, in, out, vectors, sms, stream);
  add_unrolled<1024, 1>(variants, in, out, vectors, sms, stream);
  add_unrolled<1024, 2>(variants, in, out, vectors, sms, stream);
  variants.push_back(
      {"read", 16, [=] { read_kernel<<<8 * sms, 512, 0, stream>>>(in, sums, vectors); }});
  variants.push_back(
      {"write", 16, [=] { write_kernel<<<8 * sms, 512, 0, stream>>>(out, vectors); }});

  std::printf("copy_bench: %s, %d SMs, %d MiB each way, median of %d after %d\n", prop.name, sms,
              mib, iters, warmup);
  std::printf("| variant |");
  for (int r = 1; r <= rounds; ++r) std::printf(" round %d ms | TB/s |", r);
  std::printf("\n|---|");
  for (int r = 1; r <= rounds; ++r) std::printf("---|---|");
  std::printf("\n");
  std::vector<std::vector<double>> ms(variants.size());
  sy::bench::EventTimer timer;
  for (int r = 0; r < rounds; ++r)
    for (size_t v = 0; v < variants.size(); ++v) {
      std::vector<double> times;
      for (int i = 0; i < warmup + iters; ++i) {
        const float t = timer.time_ms(stream, [&] {
          variants[v].run();
          check_cuda(cudaGetLastError(), variants[v].name.c_str());
        });
        if (i >= warmup) times.push_back(t);
      }
      ms[v].push_back(sy::bench::median(times));
    }
  for (size_t v = 0; v < variants.size(); ++v) {
    std::printf("| %s |", variants[v].name.c_str());
    for (double t : ms[v])
      std::printf(" %.3f | %.3f |", t, variants[v].bytes_per_vector * vectors / (t * 1e-3) / 1e12);
    std::printf("\n");
  }
  cudaFree(in);
  cudaFree(out);
  cudaFree(sums);
  cudaStreamDestroy(stream);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"Kernel copy shapes against cudaMemcpy on one GPU"};
  app.add_option("--mib", options.mib, "MiB copied each way")->check(CLI::Range(1, 1 << 16));
  app.add_option("--iters", options.iters, "timed runs a variant (their median is kept)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--warmup", options.warmup, "untimed runs first")->check(CLI::Range(0, 1000));
  app.add_option("--rounds", options.rounds, "rounds over every variant")
      ->check(CLI::Range(1, 100));
  CLI11_PARSE(app, argc, argv);
  try {
    run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "copy_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
