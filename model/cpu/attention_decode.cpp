// Attention of new queries over a key/value cache on the CPU (generation): the sums of the CPU's
// flash attention (model/cpu/flash_attention.cpp), in double, one query row at a time.
// Contract: model/backend.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

// q, out: [n, H*Dh]; k, v: [L, H*Dh]. Query i sees keys 0 .. first_position + i.
template <class T>
void attention_decode(T* out, const T* q, const T* k, const T* v, int64_t n, int64_t H, int64_t Dh,
                      int64_t first_position) {
  const int64_t D = H * Dh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  SingleThreadedBlas blas;  // for its thread count; no BLAS here
  parallel_for(n * H, blas.threads(), [&](int64_t begin, int64_t end) {
    std::vector<double> scores(first_position + n), acc(Dh);
    for (int64_t ih = begin; ih < end; ++ih) {
      const int64_t i = ih / H, h = ih % H, last = first_position + i;
      const T* qi = q + i * D + h * Dh;
      double m = -INFINITY;
      for (int64_t j = 0; j <= last; ++j) {
        const T* kj = k + j * D + h * Dh;
        double dot = 0;
        for (int64_t d = 0; d < Dh; ++d)
          dot += static_cast<double>(qi[d]) * static_cast<double>(kj[d]);
        scores[j] = scale * dot;
        m = std::max(m, scores[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j <= last; ++j) sum += std::exp(scores[j] - m);
      const double lse = m + std::log(sum);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j <= last; ++j) {
        const double p = std::exp(scores[j] - lse);
        const T* vj = v + j * D + h * Dh;
        for (int64_t d = 0; d < Dh; ++d) acc[d] += p * static_cast<double>(vj[d]);
      }
      T* o = out + i * D + h * Dh;
      for (int64_t d = 0; d < Dh; ++d) o[d] = static_cast<T>(acc[d]);
    }
  });
}

}  // namespace
}  // namespace cpu

void CpuBackend::attention_decode_impl(const Tensor& out, const Tensor& q, const Tensor& k,
                                       const Tensor& v, int64_t H, int64_t first_position) {
  const DType dt = cpu::host_float(OpCheck(*this, "attention_decode"), q, "q");
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::attention_decode(out.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), q.dim(0), H,
                          q.dim(1) / H, first_position);
  });
}

}  // namespace sy
