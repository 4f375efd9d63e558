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
//   9 streams T     AdamW's traffic with trivial arithmetic: per 8 elements, hi, lo and grad
//                   (bf16) and m, v (f32) read, and hi, lo, m, v written in place: 26 bytes an
//                   element over nine streams, one group of 8 elements a thread, short blocks
//   5 streams T     the nine's traffic with lo, m and v packed into one array in tiles of a
//                   warp's 256 elements (2.5 KiB contiguous): hi, grad and that state, in place
//   2 streams T     the same 26 bytes an element, read from one array and written to another
// The last three ask whether the number of streams, not the bytes, holds the pass below memcpy,
// and whether packing the optimizer's state would recover it.
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

// The streams kernels' stand-in for AdamW's arithmetic on one group of 8 elements. It keeps
// zeros zero, so the buffers stay as the copies left them.
__device__ __forceinline__ void touch_group(const uint4& g, uint4& h, uint4& l, float4& m0,
                                            float4& m1, float4& v0, float4& v1) {
  h.x ^= g.x, h.y ^= g.y, h.z ^= g.z, h.w ^= g.w;
  l.x ^= g.w, l.y ^= g.z, l.z ^= g.y, l.w ^= g.x;
  m0.x *= 0.9f, m0.y *= 0.9f, m0.z *= 0.9f, m0.w *= 0.9f;
  m1.x *= 0.9f, m1.y *= 0.9f, m1.z *= 0.9f, m1.w *= 0.9f;
  v0.x *= 0.999f, v0.y *= 0.999f, v0.z *= 0.999f, v0.w *= 0.999f;
  v1.x *= 0.999f, v1.y *= 0.999f, v1.z *= 0.999f, v1.w *= 0.999f;
}

// Nine streams: group i is elements 8i .. 8i + 7 (a 16-byte vector of each bf16 array, two of
// each f32 one).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    nine_stream_kernel(uint4* __restrict__ hi, uint4* __restrict__ lo,
                       const uint4* __restrict__ grad, float4* __restrict__ m,
                       float4* __restrict__ v, int64_t groups) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= groups) return;
  const uint4 g = __ldcs(grad + i);
  uint4 h = __ldcs(hi + i), l = __ldcs(lo + i);
  float4 m0 = __ldcs(m + 2 * i), m1 = __ldcs(m + 2 * i + 1);
  float4 v0 = __ldcs(v + 2 * i), v1 = __ldcs(v + 2 * i + 1);
  touch_group(g, h, l, m0, m1, v0, v1);
  __stcs(hi + i, h);
  __stcs(lo + i, l);
  __stcs(m + 2 * i, m0);
  __stcs(m + 2 * i + 1, m1);
  __stcs(v + 2 * i, v0);
  __stcs(v + 2 * i + 1, v1);
}

// Five streams: hi and grad as in the nine; lo, m and v of a warp's 32 groups packed into one
// 2560-byte tile of `state` (lo 512 bytes, m 1 KiB, v 1 KiB), so that a warp's state is one
// contiguous span. `groups` is a multiple of 32.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    five_stream_kernel(uint4* __restrict__ hi, const uint4* __restrict__ grad,
                       uint4* __restrict__ state, int64_t groups) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= groups) return;
  uint4* tile = state + (i / 32) * 160;
  const int lane = int(i % 32);
  uint4* lo = tile + lane;
  float4* m = reinterpret_cast<float4*>(tile + 32) + 2 * lane;
  float4* v = reinterpret_cast<float4*>(tile + 96) + 2 * lane;
  const uint4 g = __ldcs(grad + i);
  uint4 h = __ldcs(hi + i), l = __ldcs(lo);
  float4 m0 = __ldcs(m), m1 = __ldcs(m + 1);
  float4 v0 = __ldcs(v), v1 = __ldcs(v + 1);
  touch_group(g, h, l, m0, m1, v0, v1);
  __stcs(hi + i, h);
  __stcs(lo, l);
  __stcs(m, m0);
  __stcs(m + 1, m1);
  __stcs(v, v0);
  __stcs(v + 1, v1);
}

// Two streams: a warp's 32 groups read as 7 coalesced vectors a lane (32 x 112 bytes) from `in`
// and written as 6 (32 x 96 bytes) to `out`. `groups` is a multiple of 32.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    two_stream_kernel(const uint4* __restrict__ in, uint4* __restrict__ out, int64_t groups) {
  const int64_t first = int64_t(blockIdx.x) * kThreads + (threadIdx.x & ~31);
  const int lane = threadIdx.x & 31;
  if (first >= groups) return;
  uint4 x[7];
#pragma unroll
  for (int u = 0; u < 7; ++u) x[u] = __ldcs(in + first * 7 + u * 32 + lane);
#pragma unroll
  for (int u = 0; u < 6; ++u) {
    const uint4 y = {x[u].x ^ x[6].x, x[u].y ^ x[6].y, x[u].z ^ x[6].z, x[u].w ^ x[6].w};
    __stcs(out + first * 6 + u * 32 + lane, y);
  }
}

struct Variant {
  std::string name;
  double bytes;  // read + written by one run
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
  const double bytes = 32.0 * vectors;
  variants.push_back({"short " + shape, bytes, [=] {
                        unrolled_copy_kernel<kThreads, kUnroll>
                            <<<short_grid, kThreads, 0, stream>>>(in, out, vectors);
                      }});
  const int64_t walk_grid = int64_t{sms} * (2048 / kThreads);  // a full SM's threads
  variants.push_back({"walk " + shape, bytes, [=] {
                        unrolled_copy_kernel<kThreads, kUnroll>
                            <<<walk_grid, kThreads, 0, stream>>>(in, out, vectors);
                      }});
}

// AdamW's 26 bytes an element, as nine streams carved out of `in` (14 bytes an element of
// storage), as five (the same storage, lo, m and v packed) and as two (14 bytes read from `in`,
// 12 written to `out`), with as many elements as the copies' bytes allow.
template <int kThreads>
void add_streams(std::vector<Variant>& variants, float4* in, float4* out, int64_t bytes,
                 cudaStream_t stream) {
  const int64_t groups = bytes / (14 * 8) / 32 * 32;
  const int64_t elements = groups * 8;
  char* base = reinterpret_cast<char*>(in);
  auto* hi = reinterpret_cast<uint4*>(base);
  auto* lo = reinterpret_cast<uint4*>(base + 2 * elements);
  auto* grad = reinterpret_cast<const uint4*>(base + 4 * elements);
  auto* m = reinterpret_cast<float4*>(base + 6 * elements);
  auto* v = reinterpret_cast<float4*>(base + 10 * elements);
  const int64_t grid = blocks_for(groups, kThreads);
  const std::string threads = std::to_string(kThreads);
  variants.push_back({"9 streams " + threads, 26.0 * elements, [=] {
                        nine_stream_kernel<kThreads>
                            <<<grid, kThreads, 0, stream>>>(hi, lo, grad, m, v, groups);
                      }});
  auto* state = reinterpret_cast<uint4*>(base + 4 * elements);
  variants.push_back({"5 streams " + threads, 26.0 * elements, [=] {
                        five_stream_kernel<kThreads>
                            <<<grid, kThreads, 0, stream>>>(hi, grad, state, groups);
                      }});
  variants.push_back({"2 streams " + threads, 26.0 * elements, [=] {
                        two_stream_kernel<kThreads>
                            <<<grid, kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(in),
                                                            reinterpret_cast<uint4*>(out), groups);
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
  const double copy_bytes = 2.0 * bytes;
  variants.push_back({"memcpy", copy_bytes, [=] {
                        check_cuda(
                            cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync");
                      }});
  variants.push_back({"chunk1024", copy_bytes, [=] {
                        chunk_copy_kernel<<<blocks_for(vectors, kChunkVectors), 1024, 0, stream>>>(
                            in, out, vectors);
                      }});
  add_unrolled<256, 4>(variants, in, out, vectors, sms, stream);
  add_unrolled<256, 8>(variants, in, out, vectors, sms, stream);
  add_unrolled<512, 4>(variants, in, out, vectors, sms, stream);
  add_unrolled<1024, 1>(variants, in, out, vectors, sms, stream);
  add_unrolled<1024, 2>(variants, in, out, vectors, sms, stream);
  add_streams<1024>(variants, in, out, bytes, stream);
  add_streams<256>(variants, in, out, bytes, stream);
  variants.push_back({"read", double(bytes),
                      [=] { read_kernel<<<8 * sms, 512, 0, stream>>>(in, sums, vectors); }});
  variants.push_back(
      {"write", double(bytes), [=] { write_kernel<<<8 * sms, 512, 0, stream>>>(out, vectors); }});

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
    for (double t : ms[v]) std::printf(" %.3f | %.3f |", t, variants[v].bytes / (t * 1e-3) / 1e12);
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
