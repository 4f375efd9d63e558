// The CPU reference kernels: one function template per op, on raw row-major pointers, for
// T = float or double. Shapes and indices are validated by the caller (cpu_backend.cpp); these
// functions trust their arguments. Reductions accumulate in double. Inner loops are kept plain
// and branch-free so that the compiler vectorises them. cpu_backend.cpp is built with
// -fno-math-errno (lets sqrt vectorise) and -fno-trapping-math (lets selects if-convert); neither
// changes a result, as nothing reads errno or the floating-point exception flags.
#pragma once
#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "model/backend.h"

namespace sy::cpu {

// ---- BLAS -----------------------------------------------------------------------------------
// Row-major C[M,N] = alpha * op(A) @ op(B) + beta * C with leading dimensions (strided views).
inline void blas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

inline void blas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                      const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                      double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

// Contiguous operands: A is [M,K] (or [K,M] if trans_a), B is [K,N] (or [N,K]), C is [M,N].
template <class T>
void gemm(T* C, const T* A, bool trans_a, const T* B, bool trans_b, int64_t M, int64_t N,
          int64_t K, T alpha, T beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A) @ op(B) is all zeros; beta == 0 clears C (even NaN), as BLAS does
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == T(0) ? T(0) : beta * C[i];
    return;
  }
  blas_gemm(trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, B, trans_b ? K : N, beta, C, N);
}

// ---- scalar helpers -------------------------------------------------------------------------
// exp for float, branch-free so that loops calling it vectorise (std::exp does not, short of
// -ffast-math): Cephes expf's range reduction and polynomial, relative error about 1e-7.
// Results that would be subnormal are flushed: exp(x) = 0 for x < -87, inf for x > 88; NaN stays
// NaN. (Clamping the input instead makes GCC speculate the clamped branch's constant results,
// which can be subnormal, and subnormal arithmetic is 50x slower.) double uses std::exp.
inline float exp_fast(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the low bits of t (unsigned: wraps harmlessly for out-of-range x, replaced below).
  const uint32_t bits = (std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kRound) + 127u) << 23;
  float y = p * std::bit_cast<float>(bits);
  y = x < -87.0f ? 0.0f : y;
  y = x > 88.0f ? std::numeric_limits<float>::infinity() : y;
  return y;
}
inline double exp_fast(double x) { return std::exp(x); }

// Sum and dot product in double, with four independent accumulators (latency, not order,
// bounds a single-accumulator loop).
template <class T>
double sum(const T* x, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int u = 0; u < 4; ++u) acc[u] += x[i + u];
  for (; i < n; ++i) acc[0] += x[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <class T>
double dot(const T* x, const T* y, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int u = 0; u < 4; ++u) acc[u] += static_cast<double>(x[i + u]) * y[i + u];
  for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * y[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <class T>
T max_of(const T* x, int64_t n) {
  T m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// x[i] = exp(x[i] - shift); returns the sum, in double.
template <class T>
double exp_shifted(T* x, int64_t n, T shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_fast(x[i] - shift);
  return sum(x, n);
}

// ---- elementwise ----------------------------------------------------------------------------
template <class Dst, class Src>
void convert(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}

template <class T>
void fill(T* x, int64_t n, T value) {
  std::fill(x, x + n, value);
}

template <class T>
void add(T* y, const T* x, int64_t n, T alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <class T>
void scale(T* y, int64_t n, T alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

template <class T>
double sum_squares(const T* x, int64_t n) {
  return dot(x, x, n);
}

// ---- embedding ------------------------------------------------------------------------------
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t)
    std::memcpy(out + t * D, table + static_cast<int64_t>(tokens[t]) * D, D * sizeof(T));
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t) add(dtable + static_cast<int64_t>(tokens[t]) * D, dout + t * D, D, T(1));
}

// ---- RMSNorm --------------------------------------------------------------------------------
inline constexpr double kRmsEps = 1e-5;

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* gain, int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t) {
    const T* xr = x + t * D;
    T* yr = out + t * D;
    const T r = static_cast<T>(1.0 / std::sqrt(sum_squares(xr, D) / D + kRmsEps));
    rstd[t] = r;
    for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * r * gain[j];
  }
}

// y_j = x_j r g_j, r = (mean x^2 + eps)^(-1/2):
//   dx_j = r g_j dy_j - x_j r^3 / D * sum_k dy_k g_k x_k;   dgain_j += sum_t dy_j x_j r.
template <class T>
void rmsnorm_backward(T* dx, T* dgain, const T* dout, const T* x, const T* gain, const T* rstd,
                      int64_t N, int64_t D) {
  for (int64_t t = 0; t < N; ++t) {
    const T* xr = x + t * D;
    const T* dyr = dout + t * D;
    T* dxr = dx + t * D;
    const T r = rstd[t];
    double s = 0;
    for (int64_t j = 0; j < D; ++j) s += static_cast<double>(dyr[j]) * gain[j] * xr[j];
    const T c = static_cast<T>(s * r * r * r / D);
    for (int64_t j = 0; j < D; ++j) {
      dxr[j] = r * gain[j] * dyr[j] - xr[j] * c;
      dgain[j] += dyr[j] * xr[j] * r;
    }
  }
}

// ---- rotary embedding -----------------------------------------------------------------------
// cos/sin tables [S, Dh/2] of the angle s * theta^(-2i/Dh), computed in double.
template <class T>
struct RopeTable {
  std::vector<T> cos, sin;
};

template <class T>
RopeTable<T> make_rope_table(int64_t S, int64_t Dh) {
  constexpr double kTheta = 10000.0;
  const int64_t half = Dh / 2;
  RopeTable<T> table{std::vector<T>(S * half), std::vector<T>(S * half)};
  for (int64_t i = 0; i < half; ++i) {
    const double f = std::pow(kTheta, -2.0 * static_cast<double>(i) / static_cast<double>(Dh));
    for (int64_t s = 0; s < S; ++s) {
      const double a = static_cast<double>(s) * f;
      table.cos[s * half + i] = static_cast<T>(std::cos(a));
      table.sin[s * half + i] = static_cast<T>(std::sin(a));
    }
  }
  return table;
}

// In place on x[N, H*Dh], position s = row % S. sign = +1 rotates by a, -1 by -a (the inverse,
// which is also the transpose: the backward of the forward rotation).
template <class T>
void rope(T* x, const RopeTable<T>& table, int64_t N, int64_t S, int64_t H, int64_t Dh, T sign) {
  const int64_t half = Dh / 2;
  for (int64_t t = 0; t < N; ++t) {
    const T* c = table.cos.data() + (t % S) * half;
    const T* s = table.sin.data() + (t % S) * half;
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
// Softmax over row[0, n) in place (stable); row[n, S) set to 0 (causal mask).
template <class T>
void causal_softmax_row(T* row, int64_t n, int64_t S) {
  const T inv = static_cast<T>(1.0 / exp_shifted(row, n, max_of(row, n)));
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  std::fill(row + n, row + S, T(0));
}

// Runs f(begin, end) on contiguous chunks of [0, n), one per thread (up to `threads`, the first
// chunk on the calling thread). Each index is handled by exactly one call, so results do not depend
// on the thread count.
template <class F>
void parallel_for(int64_t n, int threads, const F& f) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  std::vector<std::thread> workers;
  for (int64_t i = 1; i < chunks; ++i) workers.emplace_back(f, n * i / chunks, n * (i + 1) / chunks);
  f(int64_t{0}, n / chunks);
  for (std::thread& w : workers) w.join();
}

// OpenBLAS's thread count, set to 1 for the scope's lifetime and then restored: the per-head GEMMs
// of attention are too small to gain from BLAS threads (they lose 2x), so attention spreads its
// (batch, head) pairs over that many threads itself.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : threads_(openblas_get_num_threads()) {
    if (threads_ > 1) openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    if (threads_ > 1) openblas_set_num_threads(threads_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
  int threads() const { return threads_; }

 private:
  int threads_;
};

// q, k, v, out: [B*S, H*Dh]; head (b, h) is the strided [S, Dh] block at b*S*D + h*Dh with
// leading dimension D. probs: [B, H, S, S].
template <class T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t B,
                       int64_t S, int64_t H, int64_t Dh) {
  const int64_t D = H * Dh;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(Dh)));
  SingleThreadedBlas blas;
  parallel_for(B * H, blas.threads(), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t off = (bh / H) * S * D + (bh % H) * Dh;
      T* P = probs + bh * S * S;
      blas_gemm(false, true, S, S, Dh, scale, q + off, D, k + off, D, T(0), P, S);
      for (int64_t i = 0; i < S; ++i) causal_softmax_row(P + i * S, i + 1, S);
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

// Flash attention (model/cpu/flash_attention.cpp; f32 and f64): the same attention without an
// [S, S] buffer; lse [B, H, S]. Contract in backend.h.
template <class T>
void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B,
                             int64_t S, int64_t H, int64_t Dh);
template <class T>
void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                              const T* v, const T* out, const T* lse, int64_t B, int64_t S,
                              int64_t H, int64_t Dh);

// ---- SwiGLU: out = silu(a) * b --------------------------------------------------------------
template <class T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + exp_fast(-a));
}

template <class T>
void swiglu_forward(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * sigmoid(a[i]) * b[i];
}

// d silu(a)/da = sig(a) (1 + a (1 - sig(a))).
// da, db may alias a, b (every input of element i is read before it is written); hidden, when
// not null, gets the forward's a * sigmoid(a) * b again, in the same order of operations.
template <class T>
void swiglu_backward(T* da, T* db, const T* dout, const T* a, const T* b, T* hidden, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = a[i], y = b[i], g = dout[i];
    const T s = sigmoid(x);
    if (hidden) hidden[i] = x * s * y;
    db[i] = g * x * s;
    da[i] = g * y * s * (T(1) + x * (T(1) - s));
  }
}

// ---- cross-entropy --------------------------------------------------------------------------
template <class T>
void cross_entropy(T* losses, T* logits, const int32_t* targets, int64_t N, int64_t V,
                   bool compute_grad, T grad_scale) {
  std::vector<T> scratch(compute_grad ? 0 : V);
  for (int64_t t = 0; t < N; ++t) {
    T* row = logits + t * V;
    const int64_t target = targets[t];
    const T target_logit = row[target];
    const T m = max_of(row, V);
    T* e = compute_grad ? row : scratch.data();  // exp(logits - m), in place for the gradient
    if (!compute_grad) std::copy(row, row + V, e);
    const double sum = exp_shifted(e, V, m);
    losses[t] = static_cast<T>(static_cast<double>(m) + std::log(sum) - target_logit);
    if (compute_grad) {
      scale(row, V, static_cast<T>(grad_scale / sum));
      row[target] -= grad_scale;
    }
  }
}

// ---- router (SPEC.md section 2, docs/load-balancing.md) --------------------------------------
// The router's sigmoid, in double (the router's precision matters more than its speed).
template <class T>
T router_sigmoid(T x) {
  return static_cast<T>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
}

// The K experts with the largest selection scores logits + bias (bias may be null), largest
// first; ties go to the lower index (strictly larger wins).
template <class T>
void select_topk(int32_t* idx, const T* logits, const T* bias, int64_t E, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    T best_score = T(0);
    for (int64_t e = 0; e < E; ++e) {
      bool chosen = false;
      for (int64_t c = 0; c < k; ++c) chosen |= idx[c] == e;
      const T score = bias ? logits[e] + bias[e] : logits[e];
      if (!chosen && (best < 0 || score > best_score)) best = e, best_score = score;
    }
    idx[k] = static_cast<int32_t>(best);
  }
}

template <class T>
void router_scores_topk(T* scores, T* lse, int32_t* topk_idx, T* gates, const T* logits,
                        const T* bias, int64_t N, int64_t E, const RoutingRule& r) {
  for (int64_t t = 0; t < N; ++t) {
    const T* row = logits + t * E;
    T* s = scores + t * E;
    const T m = *std::max_element(row, row + E);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(row[e] - m));
    lse[t] = static_cast<T>(static_cast<double>(m) + std::log(sum));
    for (int64_t e = 0; e < E; ++e)
      s[e] = r.score == RouterScore::sigmoid ? router_sigmoid(row[e])
                       : static_cast<T>(std::exp(static_cast<double>(row[e] - m)) / sum);
    int32_t* idx = topk_idx + t * r.top_k;
    select_topk(idx, row, bias, E, r.top_k);
    double denom = 1;
    if (r.normalize) {
      denom = 0;
      for (int64_t k = 0; k < r.top_k; ++k) denom += s[idx[k]];
    }
    for (int64_t k = 0; k < r.top_k; ++k) gates[t * r.top_k + k] = static_cast<T>(s[idx[k]] / denom);
  }
}

// The assignments t*K+k in the ranking of the drop policy: (k, t), or by gate (highest first)
// and then (k, t).
template <class T>
std::vector<int64_t> ranked_assignments(const T* gates, int64_t N, const RoutingRule& r) {
  std::vector<int64_t> order;
  order.reserve(N * r.top_k);
  for (int64_t k = 0; k < r.top_k; ++k)
    for (int64_t t = 0; t < N; ++t) order.push_back(t * r.top_k + k);
  if (r.drop_policy == DropPolicy::probability)
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return gates[a] > gates[b]; });
  return order;
}

// The reroute target of assignment `slot`: the best selection score among experts below
// capacity that the token does not use yet; -1 when every such expert is full.
template <class T>
int32_t reroute_target(int64_t slot, const int32_t* topk_idx, const int32_t* slot_expert,
                       const std::vector<int64_t>& kept, const T* logits, const T* bias,
                       int64_t E, const RoutingRule& r) {
  const int64_t t = slot / r.top_k;
  int32_t best = -1;
  T best_score = T(0);
  for (int64_t e = 0; e < E; ++e) {
    if (kept[e] >= r.capacity) continue;
    bool used = false;
    for (int64_t k = 0; k < r.top_k; ++k)
      used |= topk_idx[t * r.top_k + k] == e || slot_expert[t * r.top_k + k] == e;
    if (used) continue;
    const T score = bias ? logits[t * E + e] + bias[e] : logits[t * E + e];
    if (best < 0 || score > best_score) best = static_cast<int32_t>(e), best_score = score;
  }
  return best;
}

// Keep, drop or reroute each assignment (slot_row 0 kept / -1 dropped; row numbers follow in
// router_plan_rows). Returns the kept count per expert; *rerouted counts the moves.
template <class T>
std::vector<int64_t> router_plan_counts(int32_t* slot_row, int32_t* slot_expert,
                                        int32_t* assignments, const int32_t* topk_idx,
                                        const T* gates, const T* logits, const T* bias, int64_t N,
                                        int64_t E, const RoutingRule& r, int64_t* rerouted) {
  std::vector<int64_t> kept(E, 0), assigned(E, 0);
  std::vector<int64_t> overflow;  // in ranking order
  for (int64_t slot : ranked_assignments(gates, N, r)) {
    const int32_t e = topk_idx[slot];
    ++assigned[e];
    slot_expert[slot] = e;
    const bool keep = r.capacity < 0 || kept[e] < r.capacity;
    kept[e] += keep;
    slot_row[slot] = keep ? 0 : -1;
    if (!keep) overflow.push_back(slot);
  }
  *rerouted = 0;
  if (r.overflow == Overflow::reroute)
    for (int64_t slot : overflow) {
      const int32_t e = reroute_target(slot, topk_idx, slot_expert, kept, logits, bias, E, r);
      if (e < 0) continue;
      slot_expert[slot] = e;
      slot_row[slot] = 0;
      ++kept[e];
      ++*rerouted;
    }
  for (int64_t e = 0; e < E; ++e) assignments[e] = static_cast<int32_t>(assigned[e]);
  return kept;
}

inline void router_plan_rows(int32_t* slot_row, int32_t* row_slot, const int32_t* slot_expert,
                             const std::vector<int64_t>& kept, int64_t N, int64_t K) {
  std::vector<int64_t> next(kept.size(), 0);  // next free row of each expert
  for (size_t e = 1; e < kept.size(); ++e) next[e] = next[e - 1] + kept[e - 1];
  for (int64_t slot = 0; slot < N * K; ++slot) {
    if (slot_row[slot] < 0) continue;
    const int64_t row = next[slot_expert[slot]]++;
    slot_row[slot] = static_cast<int32_t>(row);
    row_slot[row] = static_cast<int32_t>(slot);
  }
}

// f_e = counts[e] / sum counts (0 when there are none).
inline std::vector<double> balance_fractions(const int32_t* counts, int64_t E) {
  double total = 0;
  for (int64_t e = 0; e < E; ++e) total += counts[e];
  std::vector<double> f(E, 0.0);
  if (total > 0)
    for (int64_t e = 0; e < E; ++e) f[e] = counts[e] / total;
  return f;
}

// The distribution the aux loss and the entropy see: the softmax itself, or the sigmoid scores
// normalised over the experts. Returns sum_e scores[e] (1 for softmax).
template <class T>
double balance_distribution(double* q, const T* scores, int64_t E, bool sigmoid) {
  double sum = 1;
  if (sigmoid) {
    sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += scores[e];
  }
  for (int64_t e = 0; e < E; ++e) q[e] = scores[e] / sum;
  return sum;
}

struct RouterLosses {
  double aux, z, entropy;
};

template <class T>
RouterLosses router_losses(const T* scores, const T* lse, const int32_t* counts, int64_t N,
                           int64_t E, const RoutingRule& r) {
  if (N == 0) return {0, 0, 0};
  std::vector<double> P(E, 0), q(E);
  double z = 0, entropy = 0;
  for (int64_t t = 0; t < N; ++t) {
    balance_distribution(q.data(), scores + t * E, E, r.score == RouterScore::sigmoid);
    for (int64_t e = 0; e < E; ++e) {
      P[e] += q[e];
      if (q[e] > 0) entropy -= q[e] * std::log(q[e]);
    }
    z += static_cast<double>(lse[t]) * lse[t];
  }
  const std::vector<double> f = balance_fractions(counts, E);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) aux += f[e] * (P[e] / static_cast<double>(N));
  return {static_cast<double>(E) * aux, z / static_cast<double>(N), entropy / N};
}

// dlogits (=): the gates (and their top-K normalisation) and aux (through P_e) give ds, the
// gradient with respect to the scores; then through the score function (softmax: s * (ds -
// <ds, s>); sigmoid: ds * s * (1 - s)), plus z through logsumexp (softmax(logits) * dz).
template <class T>
void router_backward(T* dlogits, const T* dgates, const T* scores, const T* lse, const T* logits,
                     const int32_t* topk_idx, const int32_t* counts, int64_t N, int64_t E,
                     const RoutingRule& r, double d_aux, double d_z) {
  const std::vector<double> f = balance_fractions(counts, E);
  std::vector<double> c(E), ds(E), q(E);
  for (int64_t e = 0; e < E; ++e) c[e] = d_aux * static_cast<double>(E) * f[e] / N;  // d/dq[t,e]
  const int64_t K = r.top_k;
  const bool sigmoid = r.score == RouterScore::sigmoid;
  for (int64_t t = 0; t < N; ++t) {
    const T* s = scores + t * E;
    const int32_t* idx = topk_idx + t * K;
    const T* g = dgates + t * K;
    // aux: through q = s (softmax) or q = s / Q (sigmoid): dq/ds_j = (delta - q_j) / Q.
    if (sigmoid) {
      const double Q = balance_distribution(q.data(), s, E, true);
      double cq = 0;
      for (int64_t e = 0; e < E; ++e) cq += c[e] * q[e];
      for (int64_t e = 0; e < E; ++e) ds[e] = (c[e] - cq) / Q;
    } else {
      ds = c;
    }
    if (r.normalize) {  // gate_k = s_k / S, S = sum_selected s
      double S = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) {
        S += s[idx[k]];
        dot += static_cast<double>(g[k]) * s[idx[k]];
      }
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += g[k] / S - dot / (S * S);
    } else {
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += g[k];
    }
    const double dz = d_z * 2.0 * lse[t] / N;
    if (sigmoid) {
      for (int64_t e = 0; e < E; ++e) {
        const double softmax = std::exp(static_cast<double>(logits[t * E + e]) - lse[t]);
        dlogits[t * E + e] = static_cast<T>(ds[e] * s[e] * (1.0 - s[e]) + softmax * dz);
      }
    } else {
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] = static_cast<T>(s[e] * (ds[e] - dot + dz));
    }
  }
}

// ---- permute / unpermute --------------------------------------------------------------------
template <class T>
void permute_rows(T* x_perm, const T* x, const int32_t* row_slot, int64_t R, int64_t D,
                  int64_t K) {
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(x_perm + r * D, x + (row_slot[r] / K) * D, D * sizeof(T));
}

template <class T>
void permute_rows_backward(T* dx, const T* dx_perm, const int32_t* slot_row, int64_t N,
                           int64_t D, int64_t K) {
  std::fill(dx, dx + N * D, T(0));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0) add(dx + t * D, dx_perm + r * D, D, T(1));
}

template <class T>
void unpermute_combine(T* out, const T* y_perm, const T* gates, const int32_t* slot_row,
                       int64_t N, int64_t D, int64_t K) {
  std::fill(out, out + N * D, T(0));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t r = slot_row[t * K + k]; r >= 0)
        add(out + t * D, y_perm + r * D, D, gates[t * K + k]);
}

template <class T>
void unpermute_combine_backward(T* dy_perm, T* dgates, const T* dout, const T* y_perm,
                                const T* gates, const int32_t* slot_row, int64_t N, int64_t R,
                                int64_t D, int64_t K) {
  std::fill(dy_perm, dy_perm + R * D, T(0));
  for (int64_t t = 0; t < N; ++t) {
    const T* g = dout + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t r = slot_row[t * K + k];
      if (r < 0) {
        dgates[t * K + k] = T(0);
        continue;
      }
      const T gate = gates[t * K + k];
      T* dy = dy_perm + r * D;
      const T* y = y_perm + r * D;
      for (int64_t j = 0; j < D; ++j) dy[j] = gate * g[j];
      dgates[t * K + k] = static_cast<T>(dot(g, y, D));
    }
  }
}

// ---- optimizers -----------------------------------------------------------------------------
// torch.optim.AdamW, single-tensor path, operation by operation: scalars computed in double (as
// Python does) and cast to T, as torch does for a scalar argument of a T tensor op.
//   param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1);
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
//   denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps); param.addcdiv_(exp_avg, denom, -lr / bc1)
template <class T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const T decay = static_cast<T>(1.0 - lr * weight_decay);
  const T w1 = static_cast<T>(1.0 - beta1);
  const T b2 = static_cast<T>(beta2);
  const T w2 = static_cast<T>(1.0 - beta2);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T eps_t = static_cast<T>(eps);
  const T neg_step_size = static_cast<T>(-(lr / bc1));
  const bool lerp_low = std::abs(w1) < T(0.5);
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    const T gi = g[i];
    // torch's lerp: self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
    m[i] = lerp_low ? m[i] + w1 * (gi - m[i]) : gi - (gi - m[i]) * (T(1) - w1);
    v[i] = v[i] * b2 + w2 * gi * gi;
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps_t;
    p[i] = p[i] + neg_step_size * m[i] / denom;
  }
}

template <class T>
void sgd_update(T* p, const T* g, int64_t n, T lr) {
  for (int64_t i = 0; i < n; ++i) p[i] -= lr * g[i];
}

}  // namespace sy::cpu
