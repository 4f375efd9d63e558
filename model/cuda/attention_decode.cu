// Attention of new queries over a key/value cache (generation; contract: model/backend.h). One
// token a step reads the whole cache once and does a few FLOPs per byte: a plain kernel, one
// block per (query, head), sums in the accumulation dtype in a fixed order (deterministic).
#include <cmath>

#include "model/cuda/kernels.h"

namespace sy::cuda {
namespace {

__device__ inline float exp_of(float x) { return expf(x); }
__device__ inline double exp_of(double x) { return exp(x); }

// q, out: [n, H*Dh]; k, v: [L, H*Dh]; scores: [n*H, L] scratch. Query i sees keys 0 .. last.
template <class T, class A>
__global__ void attention_decode_kernel(T* out, const T* q, const T* k, const T* v, A* scores,
                                        int64_t H, int64_t Dh, int64_t L, int64_t first_position,
                                        A scale) {
  __shared__ A shared[32];
  const int64_t ih = blockIdx.x, i = ih / H, h = ih % H, D = H * Dh;
  const int64_t last = first_position + i;
  const T* q_row = q + i * D + h * Dh;
  A* s = scores + ih * L;
  A m = -INFINITY;
  for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
    const T* k_row = k + j * D + h * Dh;
    A dot = 0;
    for (int64_t d = 0; d < Dh; ++d) dot += load(q_row + d) * load(k_row + d);
    s[j] = dot * scale;
    m = max(m, s[j]);
  }
  m = block_max(m, shared, A(-INFINITY));
  A sum = 0;
  for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
    s[j] = exp_of(s[j] - m);
    sum += s[j];
  }
  sum = block_sum(sum, shared);  // its barriers also publish s[] to the whole block
  const A inv = A(1) / sum;
  for (int64_t d = threadIdx.x; d < Dh; d += blockDim.x) {
    A acc = 0;
    for (int64_t j = 0; j <= last; ++j) acc += s[j] * load(v + j * D + h * Dh + d);
    out[i * D + h * Dh + d] = convert<T>(acc * inv);
  }
}

}  // namespace

void attention_decode(Context& ctx, const Tensor& out, const Tensor& q, const Tensor& k,
                      const Tensor& v, int64_t H, int64_t first_position) {
  const char* op = "attention_decode";
  const int64_t n = q.dim(0), Dh = q.dim(1) / H, L = k.dim(0);
  if (n == 0) return;
  dispatch_float(q.dtype(), [&]<class T>(Tag<T>) {
    using A = acc_t<T>;
    A* scores = static_cast<A*>(ctx.scratch(kScratchA, static_cast<size_t>(n * H * L) * sizeof(A)));
    const A scale = A(1) / std::sqrt(static_cast<A>(Dh));
    attention_decode_kernel<T, A><<<static_cast<unsigned>(n * H), kThreads, 0, ctx.stream>>>(
        out.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), scores, H, Dh, L, first_position, scale);
  });
  check_launch(ctx, op);
}

}  // namespace sy::cuda
