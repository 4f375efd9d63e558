// Helpers shared by several CPU op files (model/cpu/<op>.cpp, each an op family's kernels
// beside its CpuBackend::<op>_impl): BLAS, a vectorisable exp, sums in double, the elementwise
// loops that other ops reuse, and the threading of attention. For T = float or double, on raw
// row-major pointers; they trust their arguments (the ops checked them). Reductions accumulate
// in double. Inner loops are kept plain and branch-free so that the compiler vectorises them;
// every model/cpu/*.cpp is built with -fno-math-errno (lets sqrt vectorise) and
// -fno-trapping-math (lets selects if-convert); neither changes a result, as nothing reads errno
// or the floating-point exception flags.
#pragma once
#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace sy::cpu {

// ---- BLAS -----------------------------------------------------------------------------------
// Row-major C[M,N] = alpha * op(A) @ op(B) + beta * C with leading dimensions (strided views).
template <class T>
void blas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  const CBLAS_TRANSPOSE op_a = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE op_b = trans_b ? CblasTrans : CblasNoTrans;
  const auto m = static_cast<blasint>(M), n = static_cast<blasint>(N), k = static_cast<blasint>(K);
  const auto ld_a = static_cast<blasint>(lda), ld_b = static_cast<blasint>(ldb),
             ld_c = static_cast<blasint>(ldc);
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, A, ld_a, B, ld_b, beta, C, ld_c);
  else
    cblas_dgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, A, ld_a, B, ld_b, beta, C, ld_c);
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

// ---- elementwise loops that other ops reuse -------------------------------------------------
template <class Dst, class Src>
void convert(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
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

// ---- threads --------------------------------------------------------------------------------
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

}  // namespace sy::cpu
