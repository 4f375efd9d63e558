// Flash attention on the CPU: the reference for the CUDA kernels (model/cuda/flash_attention.cu)
// and a causal attention that needs no [S, S] buffer. One query row at a time: its scores live
// in a row buffer of S values, the probabilities are recomputed from the saved lse in backward.
// Written for reading, not speed: plain loops, sums in double. Contract: model/backend.h.
//
// It is not bitwise equal to cpu::attention_forward (BLAS sums in another order), so the
// Attention layer's `auto` keeps the BLAS path on the CPU (docs/config.md).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

double dot_row(const auto* a, const auto* b, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return sum;
}

// q, k, v, out: [B*S, H*Dh]; head (b, h) of token s is the Dh values at (b*S + s)*D + h*Dh.
// lse: [B, H, S]. doc_start: [B*S] or null; query i sees keys first(i) .. i, the keys of its
// document at or before it.
template <class T>
void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B,
                             int64_t S, int64_t H, int64_t Dh, const int32_t* doc_start) {
  const int64_t D = H * Dh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  SingleThreadedBlas blas;  // for its thread count; no BLAS here
  parallel_for(B * H, blas.threads(), [&](int64_t begin, int64_t end) {
    std::vector<double> scores(S), acc(Dh);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      auto row = [&](const T* x, int64_t s) { return x + (b * S + s) * D + h * Dh; };
      for (int64_t i = 0; i < S; ++i) {
        // scores of query i against keys first..i (the causal mask: later keys do not exist for
        // it, nor do those of earlier documents)
        const int64_t first = doc_start ? doc_start[b * S + i] : 0;
        double m = -INFINITY;
        for (int64_t j = first; j <= i; ++j) {
          scores[j] = scale * dot_row(row(q, i), row(k, j), Dh);
          m = std::max(m, scores[j]);
        }
        double sum = 0;
        for (int64_t j = first; j <= i; ++j) sum += std::exp(scores[j] - m);
        const double lse_i = m + std::log(sum);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= i; ++j) {
          const double p = std::exp(scores[j] - lse_i);
          const T* vj = row(v, j);
          for (int64_t d = 0; d < Dh; ++d) acc[d] += p * static_cast<double>(vj[d]);
        }
        T* o = out + (b * S + i) * D + h * Dh;
        for (int64_t d = 0; d < Dh; ++d) o[d] = static_cast<T>(acc[d]);
        lse[bh * S + i] = static_cast<T>(lse_i);
      }
    }
  });
}

// With P = exp(scaled scores - lse) and Di = <dout_i, out_i> (= sum_j P_ij dP_ij):
//   dP_ij = <dout_i, v_j>, dS_ij = P_ij (dP_ij - Di), dq_i = scale sum_j dS_ij k_j,
//   dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dout_i. dq, dk, dv overwritten.
template <class T>
void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                              const T* v, const T* out, const T* lse, int64_t B, int64_t S,
                              int64_t H, int64_t Dh, const int32_t* doc_start) {
  const int64_t D = H * Dh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  SingleThreadedBlas blas;
  parallel_for(B * H, blas.threads(), [&](int64_t begin, int64_t end) {
    // dk and dv of one head summed over its queries, in double, then stored.
    std::vector<double> dk_acc(S * Dh), dv_acc(S * Dh), dq_acc(Dh);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      auto row = [&](const T* x, int64_t s) { return x + (b * S + s) * D + h * Dh; };
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
      for (int64_t i = 0; i < S; ++i) {
        const T* qi = row(q, i);
        const T* gi = row(dout, i);
        const double di = dot_row(gi, row(out, i), Dh);
        const double lse_i = static_cast<double>(lse[bh * S + i]);
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
        for (int64_t j = doc_start ? doc_start[b * S + i] : 0; j <= i; ++j) {
          const T* kj = row(k, j);
          const double p = std::exp(scale * dot_row(qi, kj, Dh) - lse_i);
          const double ds = p * (dot_row(gi, row(v, j), Dh) - di);
          double* dkj = dk_acc.data() + j * Dh;
          double* dvj = dv_acc.data() + j * Dh;
          for (int64_t d = 0; d < Dh; ++d) {
            dq_acc[d] += ds * static_cast<double>(kj[d]);
            dkj[d] += ds * static_cast<double>(qi[d]);
            dvj[d] += p * static_cast<double>(gi[d]);
          }
        }
        T* dqi = dq + (b * S + i) * D + h * Dh;
        for (int64_t d = 0; d < Dh; ++d) dqi[d] = static_cast<T>(scale * dq_acc[d]);
      }
      for (int64_t j = 0; j < S; ++j) {
        T* dkj = dk + (b * S + j) * D + h * Dh;
        T* dvj = dv + (b * S + j) * D + h * Dh;
        for (int64_t d = 0; d < Dh; ++d) {
          dkj[d] = static_cast<T>(scale * dk_acc[j * Dh + d]);
          dvj[d] = static_cast<T>(dv_acc[j * Dh + d]);
        }
      }
    }
  });
}

}  // namespace
}  // namespace cpu

void CpuBackend::flash_attention_forward_impl(const Tensor& out, const Tensor& lse, const Tensor& q,
                                              const Tensor& k, const Tensor& v, int64_t B,
                                              int64_t S, int64_t H, const Tensor& doc_start,
                                              const DocumentList& documents) {
  const OpCheck c(*this, "flash_attention_forward");
  const DType dt = cpu::host_float(c, q, "q");
  const int64_t Dh = q.dim(1) / H;
  const int32_t* starts = cpu::checked_doc_start(c, doc_start, B, S);
  cpu::check_documents_listed(c, documents, starts, B, S);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::flash_attention_forward(out.ptr<T>(), lse.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), B,
                                 S, H, Dh, starts);
  });
}

void CpuBackend::flash_attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                               const Tensor& dout, const Tensor& q, const Tensor& k,
                                               const Tensor& v, const Tensor& out,
                                               const Tensor& lse, int64_t B, int64_t S, int64_t H,
                                               const Tensor& doc_start,
                                               const DocumentList& documents) {
  const OpCheck c(*this, "flash_attention_backward");
  const DType dt = cpu::host_float(c, q, "q");
  const int64_t Dh = q.dim(1) / H;
  const int32_t* starts = cpu::checked_doc_start(c, doc_start, B, S);
  cpu::check_documents_listed(c, documents, starts, B, S);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::flash_attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(), q.ptr<T>(),
                                  k.ptr<T>(), v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(), B, S, H, Dh,
                                  starts);
  });
}

}  // namespace sy
