// Causal attention on the CPU, with the rotary embedding it applies to q and k: per (batch, head),
// P = softmax(q k^T / sqrt(Dh)) through BLAS, the [S, S] probabilities kept for backward; the
// (batch, head) pairs spread over threads, BLAS single-threaded. Contract: model/backend.h.
// model/cpu/flash_attention.cpp is the same attention without the [S, S] buffer.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "model/cpu/common.h"
#include "model/cpu/cpu_backend.h"

namespace sy {
namespace cpu {
namespace {

// ---- rotary embedding -----------------------------------------------------------------------
// cos/sin tables [S, Dh/2] of the angle s * f_i (model/rope.h), computed in double.
template <class T>
RopeTable<T> make_rope_table(int64_t S, int64_t Dh, const Rotary& rotary) {
  const int64_t half = Dh / 2;
  RopeTable<T> table{std::vector<T>(S * half), std::vector<T>(S * half)};
  const std::vector<double> frequencies = rope_frequencies(Dh, rotary);
  for (int64_t i = 0; i < half; ++i) {
    const double f = frequencies[i];
    for (int64_t s = 0; s < S; ++s) {
      const double a = static_cast<double>(s) * f;
      table.cos[s * half + i] = static_cast<T>(std::cos(a));
      table.sin[s * half + i] = static_cast<T>(std::sin(a));
    }
  }
  return table;
}

// In place on x[N, H*Dh], position s = row % S, or with doc_start its position in its document,
// s - doc_start[row], or with first_position first_position + s. sign = +1 rotates by a, -1 by
// -a (the inverse, which is also the transpose: the backward of the forward rotation).
template <class T>
void rope(T* x, const RopeTable<T>& table, int64_t N, int64_t S, int64_t H, int64_t Dh, T sign,
          const int32_t* doc_start, int64_t first_position) {
  const int64_t half = Dh / 2;
  for (int64_t t = 0; t < N; ++t) {
    const int64_t position = first_position + t % S - (doc_start ? doc_start[t] : 0);
    const T* c = table.cos.data() + position * half;
    const T* s = table.sin.data() + position * half;
    for (int64_t h = 0; h < H; ++h) {
      T* lo = x + (t * H + h) * Dh;
      T* hi = lo + half;
      for (int64_t i = 0; i < half; ++i) {
        const T x0 = lo[i], x1 = hi[i], sn = sign * s[i];
        lo[i] = x0 * c[i] - x1 * sn;
        hi[i] = x1 * c[i] + x0 * sn;
      }
    }
  }
}

// ---- attention ------------------------------------------------------------------------------
// Softmax over row[first, n) in place (stable); the rest of row[0, S) set to 0 (the causal
// mask, and with documents the keys before the query's document).
template <class T>
void causal_softmax_row(T* row, int64_t first, int64_t n, int64_t S) {
  T* visible = row + first;
  const T inv = static_cast<T>(1.0 / exp_shifted(visible, n - first, max_of(visible, n - first)));
  for (int64_t j = first; j < n; ++j) row[j] *= inv;
  std::fill(row, row + first, T(0));
  std::fill(row + n, row + S, T(0));
}

// q, k, v, out: [B*S, H*Dh]; head (b, h) is the strided [S, Dh] block at b*S*D + h*Dh with
// leading dimension D. probs: [B, H, S, S]. doc_start: [B*S] or null.
template <class T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t H, int64_t Dh, const int32_t* doc_start) {
  const int64_t D = H * Dh;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(Dh)));
  SingleThreadedBlas blas;
  parallel_for(B * H, blas.threads(), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t off = (bh / H) * S * D + (bh % H) * Dh;
      T* P = probs + bh * S * S;
      blas_gemm(false, true, S, S, Dh, scale, q + off, D, k + off, D, T(0), P, S);
      const int32_t* first = doc_start ? doc_start + (bh / H) * S : nullptr;
      for (int64_t i = 0; i < S; ++i) causal_softmax_row(P + i * S, first ? first[i] : 0, i + 1, S);
      blas_gemm(false, false, S, Dh, S, T(1), P, S, v + off, D, T(0), out + off, D);
    }
  });
}

// dP = dO V^T, dV = P^T dO, dS = P * (dP - rowsum(dP * P)) (0 above the diagonal),
// dQ = dS K / sqrt(Dh), dK = dS^T Q / sqrt(Dh). dq, dk, dv overwritten.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, int64_t B, int64_t S, int64_t H, int64_t Dh) {
  const int64_t D = H * Dh;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(Dh)));
  SingleThreadedBlas blas;
  parallel_for(B * H, blas.threads(), [&](int64_t begin, int64_t end) {
    std::vector<T> dS(S * S);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t off = (bh / H) * S * D + (bh % H) * Dh;
      const T* P = probs + bh * S * S;
      blas_gemm(false, true, S, S, Dh, T(1), dout + off, D, v + off, D, T(0), dS.data(), S);
      blas_gemm(true, false, S, Dh, S, T(1), P, S, dout + off, D, T(0), dv + off, D);
      for (int64_t i = 0; i < S; ++i) {
        const T* p = P + i * S;
        T* ds = dS.data() + i * S;
        const T d = static_cast<T>(dot(ds, p, i + 1));
        for (int64_t j = 0; j <= i; ++j) ds[j] = p[j] * (ds[j] - d);
        std::fill(ds + i + 1, ds + S, T(0));
      }
      blas_gemm(false, false, S, Dh, S, scale, dS.data(), S, k + off, D, T(0), dq + off, D);
      blas_gemm(true, false, S, Dh, S, scale, dS.data(), S, q + off, D, T(0), dk + off, D);
    }
  });
}

// x [T, Hkv*Dh] -> out [T, Hkv*G*Dh]: kv head j becomes heads j*G .. j*G+G-1.
template <class T>
void repeat_kv_heads(T* out, const T* x, int64_t T_rows, int64_t kv_heads, int64_t G, int64_t Dh) {
  const int64_t kv_width = kv_heads * Dh, width = kv_width * G;
  for (int64_t t = 0; t < T_rows; ++t)
    for (int64_t j = 0; j < kv_heads; ++j)
      for (int64_t g = 0; g < G; ++g)
        std::copy_n(x + t * kv_width + j * Dh, Dh, out + t * width + (j * G + g) * Dh);
}

// The adjoint: each kv head's gradient is the sum of its G query heads', g = 0 first.
template <class T>
void repeat_kv_heads_backward(T* dx, const T* dout, int64_t T_rows, int64_t kv_heads, int64_t G,
                              int64_t Dh) {
  const int64_t kv_width = kv_heads * Dh, width = kv_width * G;
  for (int64_t t = 0; t < T_rows; ++t)
    for (int64_t j = 0; j < kv_heads; ++j)
      for (int64_t d = 0; d < Dh; ++d) {
        T sum = 0;
        for (int64_t g = 0; g < G; ++g) sum += dout[t * width + (j * G + g) * Dh + d];
        dx[t * kv_width + j * Dh + d] = sum;
      }
}

}  // namespace
}  // namespace cpu

void CpuBackend::repeat_kv_heads_impl(const Tensor& out, const Tensor& x, int64_t kv_heads) {
  const DType dt = cpu::host_float(OpCheck(*this, "repeat_kv_heads"), x, "x");
  const int64_t Dh = x.dim(1) / kv_heads, G = out.dim(1) / x.dim(1);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::repeat_kv_heads(out.ptr<T>(), x.ptr<T>(), x.dim(0), kv_heads, G, Dh);
  });
}

void CpuBackend::repeat_kv_heads_backward_impl(const Tensor& dx, const Tensor& dout,
                                               int64_t kv_heads) {
  const DType dt = cpu::host_float(OpCheck(*this, "repeat_kv_heads_backward"), dx, "dx");
  const int64_t Dh = dx.dim(1) / kv_heads, G = dout.dim(1) / dx.dim(1);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::repeat_kv_heads_backward(dx.ptr<T>(), dout.ptr<T>(), dx.dim(0), kv_heads, G, Dh);
  });
}

template <class T>
const cpu::RopeTable<T>& CpuBackend::rope_table(int64_t S, int64_t Dh, const Rotary& rotary) {
  std::lock_guard<std::mutex> lock(rope_mutex_);
  auto& cache = [this]() -> auto& {
    if constexpr (std::is_same_v<T, float>) return rope_f32_;
    else return rope_f64_;
  }();
  const auto key = std::make_tuple(S, Dh, rotary);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, cpu::make_rope_table<T>(S, Dh, rotary)).first;
  return it->second;  // map nodes are stable
}

void CpuBackend::rope(const char* op, const Tensor& x, int64_t B, int64_t S, int64_t H,
                      const Rotary& rotary, int sign, const Tensor& doc_start,
                      int64_t first_position) {
  const OpCheck c(*this, op);
  const DType dt = cpu::host_float(c, x, "x");
  const int64_t Dh = x.dim(1) / H;
  const int32_t* starts = cpu::checked_doc_start(c, doc_start, B, S);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    const cpu::RopeTable<T>& table = rope_table<T>(rope_table_rows(first_position, S), Dh, rotary);
    cpu::rope(x.ptr<T>(), table, B * S, S, H, Dh, static_cast<T>(sign), starts, first_position);
  });
}

void CpuBackend::rope_forward_impl(const Tensor& x, int64_t B, int64_t S, int64_t H,
                                   const Rotary& rotary, const Tensor& doc_start,
                                   int64_t first_position) {
  rope("rope_forward", x, B, S, H, rotary, +1, doc_start, first_position);
}

void CpuBackend::rope_backward_impl(const Tensor& dx, int64_t B, int64_t S, int64_t H,
                                    const Rotary& rotary, const Tensor& doc_start) {
  rope("rope_backward", dx, B, S, H, rotary, -1, doc_start);
}

void CpuBackend::attention_forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q,
                                        const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                        int64_t H, const Tensor& doc_start) {
  const OpCheck c(*this, "attention_forward");
  const DType dt = cpu::host_float(c, q, "q");
  const int64_t Dh = q.dim(1) / H;
  cpu::fits_blas(c, {S, H * Dh});
  const int32_t* starts = cpu::checked_doc_start(c, doc_start, B, S);
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::attention_forward(out.ptr<T>(), probs.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), B, S,
                           H, Dh, starts);
  });
}

void CpuBackend::attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                         const Tensor& dout, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                                         int64_t H) {
  const OpCheck c(*this, "attention_backward");
  const DType dt = cpu::host_float(c, q, "q");
  const int64_t Dh = q.dim(1) / H;
  cpu::fits_blas(c, {S, H * Dh});
  cpu::dispatch_float(dt, [&]<class T>(T) {
    cpu::attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(), q.ptr<T>(),
                            k.ptr<T>(), v.ptr<T>(), probs.ptr<T>(), B, S, H, Dh);
  });
}

}  // namespace sy
