// Embedding lookup and its backward, the scatter-add dtable[tokens[t]] += dout[t].
//
// The backward uses no float atomics: with atomics the order of the additions into a row that
// several positions share depends on timing, so two runs differed in the last bits of the table
// gradient (and, through training, in the loss). Here every element of dtable is a sequential
// sum in position order, the CPU's own loop, so the result is bitwise repeatable and bitwise
// equal to the CPU reference (in f32 and f64; for bf16 dout, to the CPU fed the same values):
//   1. sort the positions 0..N-1 by token id: CUB's LSD radix sort is stable, so each token's
//      positions stay ascending; integer work, deterministic by construction. Only the bits
//      that hold a token id are sorted (one 8-bit pass for a byte vocabulary, three for 256k);
//   2. the first sorted index of every distinct token ("run") is compacted into run_start, with
//      the number of runs left on the device (no host synchronisation);
//   3. one block per (run, tile of kColumns columns), blocks striding over that work list: each
//      thread owns a column, reads the row's gradient, adds the run's dout rows in position
//      order and writes it back once.
// Traffic: the sort moves about 16 bytes per position per pass (keys and values, read and
// written; under 2 MB for N = 32k), dout is read once (N*D elements, the bulk), and each touched
// table row is read and written once; the atomics read-modify-wrote a table element for every
// dout element. The critical path is the longest run: a thread adds its L rows in order with
// kUnroll loads in flight, about L / kUnroll memory latencies (a token at 17% of N = 32k
// positions, as a space in byte-level text: ~350 dependent round trips, 0.1-0.2 ms; not yet
// measured). Splitting long runs over several threads would shorten it but give up the CPU's
// order.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

constexpr int kColumns = 128;  // threads per block of the sum = columns per tile
constexpr int kUnroll = 16;    // dout loads in flight per thread

template <class O, class T>
__global__ void embedding_forward_kernel(O* out, const int32_t* tokens, const T* table, int64_t N,
                                         int64_t D) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, j = i - t * D;
    out[i] = convert<O>(table[static_cast<int64_t>(tokens[t]) * D + j]);
  }
}

// positions[i] = i: the values that the sort carries, and the candidates of the run selection.
__global__ void iota_kernel(int32_t* positions, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N;
       i += int64_t(gridDim.x) * blockDim.x)
    positions[i] = static_cast<int32_t>(i);
}

// head[i] = 1 where sorted index i starts a run (its token differs from the previous one).
__global__ void run_heads_kernel(int8_t* head, const uint32_t* sorted_tokens, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N;
       i += int64_t(gridDim.x) * blockDim.x)
    head[i] = i == 0 || sorted_tokens[i] != sorted_tokens[i - 1];
}

// Work item w = run * tiles + tile. The run's positions are sorted_positions[begin, end), all of
// token sorted_tokens[begin], ascending; thread x of the block owns column tile*kColumns + x.
template <class G, class T>
__global__ void embedding_backward_kernel(G* dtable, const T* dout, const uint32_t* sorted_tokens,
                                          const int32_t* sorted_positions,
                                          const int32_t* run_start, const int32_t* n_runs,
                                          int64_t N, int64_t D, int64_t tiles) {
  const int64_t runs = *n_runs, items = runs * tiles;
  for (int64_t w = blockIdx.x; w < items; w += gridDim.x) {
    const int64_t run = w / tiles, col = (w - run * tiles) * kColumns + threadIdx.x;
    const int64_t begin = run_start[run], end = run + 1 < runs ? run_start[run + 1] : N;
    if (col >= D) continue;
    G* out = dtable + static_cast<int64_t>(sorted_tokens[begin]) * D + col;
    const T* in = dout + col;
    G acc = *out;
    int64_t j = begin;
    // kUnroll independent loads, then the additions in order: the sum is sequential in j.
    for (; j + kUnroll <= end; j += kUnroll) {
      G v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        v[u] = convert<G>(in[static_cast<int64_t>(sorted_positions[j + u]) * D]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc += v[u];
    }
    for (; j < end; ++j) acc += convert<G>(in[static_cast<int64_t>(sorted_positions[j]) * D]);
    *out = acc;
  }
}

// Scratch for N positions, 256-byte aligned pieces of one buffer.
struct SortScratch {
  int32_t* positions;         // [N] 0..N-1
  uint32_t* sorted_tokens;    // [N]
  int32_t* sorted_positions;  // [N]
  int8_t* head;               // [N]
  int32_t* run_start;         // [N]
  int32_t* n_runs;            // [1]
  void* cub_temp;
  size_t cub_bytes;
};

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

void embedding_forward(Context& ctx, const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const int64_t N = tokens.numel(), D = table.dim(1);
  if (N == 0 || D == 0) return;
  dispatch_float(out.dtype(), [&]<class O>(Tag<O>) {
    dispatch_float(table.dtype(), [&]<class T>(Tag<T>) {
      embedding_forward_kernel<O, T><<<grid_for(N * D), kThreads, 0, ctx.stream>>>(
          out.ptr<O>(), tokens.ptr<int32_t>(), table.ptr<T>(), N, D);
    });
  });
  check_launch(ctx, "embedding_forward");
}

void embedding_backward(Context& ctx, const Tensor& dtable, const Tensor& dout,
                        const Tensor& tokens) {
  const char* op = "embedding_backward";
  const int64_t N = tokens.numel(), V = dtable.dim(0), D = dtable.dim(1);
  if (N == 0 || D == 0) return;
  if (N > INT32_MAX) fail(ctx, op, "more than 2^31 - 1 positions");
  const int n = static_cast<int>(N);
  // Token ids are in [0, V) (the caller checks the range on the CPU; on the device an id out of
  // range would be sorted by its low bits only): sort just the bits that can be set.
  int key_bits = 1;
  while (key_bits < 32 && (int64_t{1} << key_bits) < V) ++key_bits;

  // CUB's temporary storage: the larger of what the sort and the selection need.
  size_t sort_bytes = 0, select_bytes = 0;
  SY_CUDA(ctx, op, cub::DeviceRadixSort::SortPairs(
                       nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                       static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                       static_cast<int32_t*>(nullptr), n, 0, key_bits, ctx.stream));
  SY_CUDA(ctx, op, cub::DeviceSelect::Flagged(nullptr, select_bytes,
                                              static_cast<const int32_t*>(nullptr),
                                              static_cast<const int8_t*>(nullptr),
                                              static_cast<int32_t*>(nullptr),
                                              static_cast<int32_t*>(nullptr), n, ctx.stream));
  const size_t ints = align256(N * sizeof(int32_t));
  SortScratch s{};
  s.cub_bytes = std::max(sort_bytes, select_bytes);
  char* base = static_cast<char*>(
      ctx.scratch(kScratchA, 4 * ints + align256(N) + 256 + align256(s.cub_bytes)));
  s.positions = reinterpret_cast<int32_t*>(base);
  s.sorted_tokens = reinterpret_cast<uint32_t*>(base + ints);
  s.sorted_positions = reinterpret_cast<int32_t*>(base + 2 * ints);
  s.run_start = reinterpret_cast<int32_t*>(base + 3 * ints);
  s.head = reinterpret_cast<int8_t*>(base + 4 * ints);
  s.n_runs = reinterpret_cast<int32_t*>(base + 4 * ints + align256(N));
  s.cub_temp = base + 4 * ints + align256(N) + 256;

  iota_kernel<<<grid_for(N), kThreads, 0, ctx.stream>>>(s.positions, N);
  check_launch(ctx, op);
  // Token ids are non-negative: their int32 bits sort like uint32.
  SY_CUDA(ctx, op, cub::DeviceRadixSort::SortPairs(
                       s.cub_temp, s.cub_bytes, reinterpret_cast<const uint32_t*>(tokens.ptr<int32_t>()),
                       s.sorted_tokens, s.positions, s.sorted_positions, n, 0, key_bits,
                       ctx.stream));
  run_heads_kernel<<<grid_for(N), kThreads, 0, ctx.stream>>>(s.head, s.sorted_tokens, N);
  check_launch(ctx, op);
  SY_CUDA(ctx, op, cub::DeviceSelect::Flagged(s.cub_temp, s.cub_bytes, s.positions, s.head,
                                              s.run_start, s.n_runs, n, ctx.stream));
  // The number of runs stays on the device: a grid for the worst case (every position its own
  // run) with a cap; blocks stride over the work list.
  const int64_t tiles = (D + kColumns - 1) / kColumns;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(N * tiles, 8192));
  dispatch_wide(dtable.dtype(), [&]<class G>(Tag<G>) {
    dispatch_float(dout.dtype(), [&]<class T>(Tag<T>) {
      embedding_backward_kernel<G, T><<<blocks, kColumns, 0, ctx.stream>>>(
          dtable.ptr<G>(), dout.ptr<T>(), s.sorted_tokens, s.sorted_positions, s.run_start,
          s.n_runs, N, D, tiles);
    });
  });
  check_launch(ctx, op);
}

}  // namespace sy::cuda
