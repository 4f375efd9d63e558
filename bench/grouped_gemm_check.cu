// Correctness and speed of the Hopper grouped GEMM (model/cuda/grouped_gemm_sm90.cu) on one GPU.
//
// Part 1, correctness: many cases (8 and 64 groups, ragged sizes with 0, 1, 127, 129, one group
// holding every row, K and N not multiples of 64; forward, forward trans_b, wgrad; C bf16 and
// f32; accumulate on and off; both tile widths) against a plain f32 per-element dot product
// computed here. C is poisoned with NaN first (accumulate cases start from random C), guard bytes
// around C must stay untouched, and a second run must give the same bits. Cases the kernel must
// decline (K not a multiple of 8, misaligned pointers, wgrad with trans_b) must return false.
// Every correctness case runs on kernel version 1 and version 2 (SY_GG_SM90_VERSION), and the two
// must agree bitwise (same wgmma sequence on the same accumulators). Every accumulating case also
// runs version 3 (the TMA reduce-add epilogue for wgrad into f32; version 2 for the other forms),
// which must agree with version 2 bitwise (one f32 add of old C and the same accumulator); one
// extra case starts from subnormal C values, next to an empty group, so that an add which
// flushed subnormals would show. Every case also runs version 4 (the staged TMA epilogue: stores,
// f32 adds, masked register stores at ragged segment ends; version 2 for a bf16 accumulate),
// which must agree with version 2 bitwise too. Two-operand-pair cases (C = A op(B) + A2 op(B2),
// both forward forms, ragged and empty groups, K tails) run every version the same way.
// Part 2, speed: the shapes training runs (8 experts of ~2048 rows, 64 experts at top-8 of 8192
// tokens; balanced and Zipf-skewed loads) and the synthetic benchmark shapes, median of 10-20
// launches (CUDA events, inputs rotated so that the L2 does not hold them): TFLOP/s of versions 2
// and 4 (each with its own tile choice, and each tile width forced), version 3 on the accumulating
// weight-gradient rows (likewise), next to cuBLAS on the dense same-total shape and a loop of one
// cuBLAS call per group (the fallback); the training shapes time the weight gradient both as
// written (`=`, one micro-batch) and accumulated (`+=`), and the input gradient of the experts
// as one call with two operand pairs (dx = dh1 w1^T + dh3 w3^T; dense and loop: two calls).
// Each benchmark case is also checked on sampled elements, for every version timed, and the
// whole C of versions 3 and 4 must equal version 2's bitwise.
// Prints PASS/FAIL per case and the speed table last; exits 1 on any failure, 3 on a hang.
// Usage: grouped_gemm_check [--quick] [--no-bench] [--no-check]
//   --quick: of the synthetic benchmark shapes, M = 32768 only (the training shapes always run).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/cuda_timing.h"
#include "model/cuda/grouped_gemm.h"

namespace {

using sy::DType;
using sy::cuda::bf16;
using sy::cuda::GroupedGemmArgs;
using sy::cuda::GroupedGemmKind;

// ---- plumbing ---------------------------------------------------------------------------------
void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::printf("CUDA ERROR: %s: %s (%s)\n", what, cudaGetErrorName(status), cudaGetErrorString(status));
  std::fflush(stdout);
  std::_Exit(2);
}
#define CK(call) check((call), #call)

void check_cublas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::printf("CUBLAS ERROR: %s: %d\n", what, static_cast<int>(status));
  std::fflush(stdout);
  std::_Exit(2);
}

// Waits for the stream, but gives up after `seconds`: a deadlocked kernel reports itself and ends
// the process (which frees the GPU) instead of hanging the job.
void sync_or_die(cudaStream_t stream, const std::string& what, double seconds = 60.0) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t status = cudaStreamQuery(stream);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) check(status, what.c_str());
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > seconds) {
      std::printf("HANG: %s did not finish within %.0f s\n", what.c_str(), seconds);
      std::fflush(stdout);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

template <class T>
T* device_alloc(size_t count) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

// ---- device helpers ---------------------------------------------------------------------------
__device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t i) {  // [-1, 1)
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 32;
  return static_cast<float>(x & 0xFFFFFF) / 8388608.0f - 1.0f;
}

__global__ void fill_random_bf16(bf16* out, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(hash_uniform(seed, i));
}

__global__ void fill_random_f32(float* out, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = hash_uniform(seed, i) * scale;
}

enum class Form { forward, trans_b, wgrad };
const char* form_name(Form f) {
  return f == Form::forward ? "fwd" : (f == Form::trans_b ? "fwd_tB" : "wgrad");
}

__device__ __forceinline__ float load_c(const void* C, bool f32, int64_t e) {
  return f32 ? static_cast<const float*>(C)[e] : __bfloat162float(static_cast<const bf16*>(C)[e]);
}

// ref[i] = (C0[e] if C0) + sum in f32, in index order, of the products that make C[e], where
// e = idx[i] (or i when idx is null). out[i] = C[e] as f32, for the host to compare.
// With a second operand pair (K2 > 0, forward forms), its products follow the first pair's.
__global__ void reference_kernel(Form form, int groups, int64_t K, int64_t N,
                                 const int32_t* offsets, const bf16* A, const bf16* B,
                                 int64_t K2, const bf16* A2, const bf16* B2,
                                 const void* C0, const void* C, bool c_f32, const int64_t* idx,
                                 int64_t count, float* ref, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = idx ? idx[i] : i;
    float sum = 0.f;
    if (form == Form::wgrad) {
      const int64_t g = e / (K * N), k = (e / N) % K, n = e % N;
      for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r)
        sum = fmaf(__bfloat162float(A[r * K + k]), __bfloat162float(B[r * N + n]), sum);
    } else {
      const int64_t row = e / N, n = e % N;
      int lo = 0, hi = groups - 1;  // the group whose segment holds `row`
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (offsets[mid + 1] <= row) lo = mid + 1;
        else hi = mid;
      }
      const bf16* Bg = B + int64_t(lo) * K * N;
      for (int64_t k = 0; k < K; ++k) {
        const float b = form == Form::forward ? __bfloat162float(Bg[k * N + n])
                                              : __bfloat162float(Bg[n * K + k]);
        sum = fmaf(__bfloat162float(A[row * K + k]), b, sum);
      }
      const bf16* B2g = B2 + int64_t(lo) * K2 * N;
      for (int64_t k = 0; k < K2; ++k) {
        const float b = form == Form::forward ? __bfloat162float(B2g[k * N + n])
                                              : __bfloat162float(B2g[n * K2 + k]);
        sum = fmaf(__bfloat162float(A2[row * K2 + k]), b, sum);
      }
    }
    if (C0) sum += load_c(C0, c_f32, e);
    ref[i] = sum;
    out[i] = load_c(C, c_f32, e);
  }
}

// ---- one problem on the device -------------------------------------------------------------
constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;

struct Problem {
  Form form = Form::forward;
  int groups = 0;
  int64_t K = 0, N = 0, M = 0;
  int64_t K2 = 0;  // forward forms: a second operand pair A2 [M, K2], B2[g] over K2 (0: none)
  std::vector<int64_t> rows;
  DType c_dtype = DType::bf16;
  bool accumulate = false;
  bool subnormal_c0 = false;  // accumulate into f32: start from C values below 2^-126

  int64_t b_elems() const { return form == Form::wgrad ? M * N : int64_t(groups) * K * N; }
  int64_t c_elems() const { return form == Form::wgrad ? int64_t(groups) * K * N : M * N; }
  size_t c_bytes() const { return size_t(c_elems()) * (c_dtype == DType::f32 ? 4 : 2); }
  double flops() const { return 2.0 * double(M) * double(K + K2) * double(N); }
  std::string name() const {
    char buf[160];
    char k[32];
    if (K2 > 0) std::snprintf(k, sizeof k, "%lld+%lld", (long long)K, (long long)K2);
    else std::snprintf(k, sizeof k, "%lld", (long long)K);
    std::snprintf(buf, sizeof buf, "%-6s G=%-3d M=%-6lld K=%-9s N=%-5lld C=%s%s", form_name(form),
                  groups, (long long)M, k, (long long)N,
                  c_dtype == DType::f32 ? "f32" : "bf16",
                  accumulate ? (subnormal_c0 ? " += subnormal" : " +=") : "");
    return buf;
  }
};

struct Buffers {
  bf16* A = nullptr;
  bf16* B = nullptr;
  bf16* A2 = nullptr;  // the second operand pair, when K2 > 0
  bf16* B2 = nullptr;
  unsigned char* C_alloc = nullptr;  // guard | C | guard
  void* C = nullptr;
  void* C0 = nullptr;  // accumulate: the starting C
  int32_t* offsets = nullptr;
};

Buffers make_buffers(const Problem& p, uint64_t seed, cudaStream_t stream) {
  Buffers b;
  b.A = device_alloc<bf16>(size_t(p.M * p.K));
  b.B = device_alloc<bf16>(size_t(p.b_elems()));
  b.C_alloc = device_alloc<unsigned char>(p.c_bytes() + 2 * kGuardBytes);
  b.C = b.C_alloc + kGuardBytes;
  b.offsets = device_alloc<int32_t>(p.groups + 1);
  std::vector<int32_t> offsets(p.groups + 1, 0);
  for (int g = 0; g < p.groups; ++g) offsets[g + 1] = offsets[g] + int32_t(p.rows[g]);
  CK(cudaMemcpyAsync(b.offsets, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice, stream));
  fill_random_bf16<<<1024, 256, 0, stream>>>(b.A, size_t(p.M * p.K), seed * 3 + 1);
  fill_random_bf16<<<1024, 256, 0, stream>>>(b.B, size_t(p.b_elems()), seed * 3 + 2);
  if (p.K2 > 0) {
    b.A2 = device_alloc<bf16>(size_t(p.M * p.K2));
    b.B2 = device_alloc<bf16>(size_t(p.groups * p.K2 * p.N));
    fill_random_bf16<<<1024, 256, 0, stream>>>(b.A2, size_t(p.M * p.K2), seed * 3 + 1001);
    fill_random_bf16<<<1024, 256, 0, stream>>>(b.B2, size_t(p.groups * p.K2 * p.N), seed * 3 + 1002);
  }
  CK(cudaGetLastError());
  if (p.accumulate) {
    b.C0 = device_alloc<unsigned char>(p.c_bytes());
    if (p.c_dtype == DType::f32)
      fill_random_f32<<<1024, 256, 0, stream>>>(static_cast<float*>(b.C0), size_t(p.c_elems()),
                                                seed * 3 + 3, p.subnormal_c0 ? 1e-39f : 1.f);
    else
      fill_random_bf16<<<1024, 256, 0, stream>>>(static_cast<bf16*>(b.C0), size_t(p.c_elems()), seed * 3 + 3);
    CK(cudaGetLastError());
  }
  CK(cudaMemsetAsync(b.C_alloc, kGuardByte, p.c_bytes() + 2 * kGuardBytes, stream));
  return b;
}

void free_buffers(Buffers& b) {
  for (void* p : {(void*)b.A, (void*)b.B, (void*)b.A2, (void*)b.B2, (void*)b.C_alloc, b.C0,
                  (void*)b.offsets})
    if (p) CK(cudaFree(p));
  b = Buffers{};
}

// C = NaN (all bits set: a NaN in bf16 and f32), or C0 when accumulating.
void reset_c(const Problem& p, const Buffers& b, cudaStream_t stream) {
  if (p.accumulate) CK(cudaMemcpyAsync(b.C, b.C0, p.c_bytes(), cudaMemcpyDeviceToDevice, stream));
  else CK(cudaMemsetAsync(b.C, 0xFF, p.c_bytes(), stream));
}

GroupedGemmArgs make_args(const Problem& p, const Buffers& b) {
  GroupedGemmArgs a;
  a.kind = p.form == Form::wgrad ? GroupedGemmKind::wgrad : GroupedGemmKind::forward;
  a.trans_b = p.form == Form::trans_b;
  a.accumulate = p.accumulate;
  a.groups = p.groups;
  a.M_total = p.M;
  a.K = p.K;
  a.N = p.N;
  a.host_rows = p.rows.data();
  a.dev_offsets = b.offsets;
  a.A = b.A;
  a.B = b.B;
  if (p.K2 > 0) {
    a.A2 = b.A2;
    a.B2 = b.B2;
    a.K2 = p.K2;
  }
  a.C = b.C;
  a.c_dtype = p.c_dtype;
  return a;
}

bool guards_intact(const Problem& p, const Buffers& b) {
  std::vector<unsigned char> head(kGuardBytes), tail(kGuardBytes);
  CK(cudaMemcpy(head.data(), b.C_alloc, kGuardBytes, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(tail.data(), b.C_alloc + kGuardBytes + p.c_bytes(), kGuardBytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < kGuardBytes; ++i)
    if (head[i] != kGuardByte || tail[i] != kGuardByte) return false;
  return true;
}

struct Errors {
  double rel_l2 = 0, max_elem = 0;
  int64_t nonfinite = 0, checked = 0;
};

// Compares C with the reference on `idx` (all elements when empty).
Errors compare(const Problem& p, const Buffers& b, const std::vector<int64_t>& idx, cudaStream_t stream) {
  const int64_t count = idx.empty() ? p.c_elems() : int64_t(idx.size());
  Errors err;
  err.checked = count;
  if (count == 0) return err;
  int64_t* d_idx = nullptr;
  if (!idx.empty()) {
    d_idx = device_alloc<int64_t>(idx.size());
    CK(cudaMemcpyAsync(d_idx, idx.data(), idx.size() * 8, cudaMemcpyHostToDevice, stream));
  }
  float* d_ref = device_alloc<float>(size_t(count));
  float* d_out = device_alloc<float>(size_t(count));
  reference_kernel<<<2048, 256, 0, stream>>>(p.form, p.groups, p.K, p.N, b.offsets, b.A, b.B,
                                             p.K2, b.A2, b.B2, p.accumulate ? b.C0 : nullptr, b.C,
                                             p.c_dtype == DType::f32, d_idx, count, d_ref, d_out);
  CK(cudaGetLastError());
  sync_or_die(stream, "reference " + p.name(), 600.0);
  std::vector<float> ref(count), out(count);
  CK(cudaMemcpy(ref.data(), d_ref, count * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(out.data(), d_out, count * 4, cudaMemcpyDeviceToHost));
  CK(cudaFree(d_ref));
  CK(cudaFree(d_out));
  if (d_idx) CK(cudaFree(d_idx));
  double ss_ref = 0, ss_diff = 0;
  for (int64_t i = 0; i < count; ++i) ss_ref += double(ref[i]) * ref[i];
  const double rms = std::sqrt(ss_ref / double(count));
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(out[i])) {
      ++err.nonfinite;
      continue;
    }
    const double diff = std::fabs(double(out[i]) - double(ref[i]));
    ss_diff += diff * diff;
    if (diff > 0) err.max_elem = std::max(err.max_elem, diff / (std::fabs(double(ref[i])) + rms + 1e-30));
  }
  err.rel_l2 = ss_ref > 0 ? std::sqrt(ss_diff / ss_ref) : std::sqrt(ss_diff);
  return err;
}

double tolerance(const Problem& p) { return p.c_dtype == DType::f32 ? 1e-3 : 1e-2; }

void set_bn(int bn) {
  if (bn) setenv("SY_GG_SM90_BN", std::to_string(bn).c_str(), 1);
  else unsetenv("SY_GG_SM90_BN");
}

void set_version(int version) { setenv("SY_GG_SM90_VERSION", std::to_string(version).c_str(), 1); }

int failures = 0;

void report(bool ok, const std::string& what) {
  std::printf("%s  %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

// ---- part 1: correctness ----------------------------------------------------------------------
// Returns C of the first run (empty when declined), for the version-to-version comparison.
std::vector<unsigned char> run_case(sy::cuda::Context& ctx, const Problem& p, int bn,
                                    uint64_t seed, int version) {
  set_bn(bn);
  set_version(version);
  Buffers b = make_buffers(p, seed, ctx.stream);
  const std::string name = p.name() + " BN=" + std::to_string(bn) + " v" + std::to_string(version);
  reset_c(p, b, ctx.stream);
  const bool launched = sy::cuda::grouped_gemm_sm90(ctx, make_args(p, b));
  sync_or_die(ctx.stream, name);
  if (!launched) {
    report(false, name + "  (declined)");
    free_buffers(b);
    return {};
  }
  const Errors e = compare(p, b, {}, ctx.stream);
  std::vector<unsigned char> first(p.c_bytes()), second(p.c_bytes());
  CK(cudaMemcpy(first.data(), b.C, p.c_bytes(), cudaMemcpyDeviceToHost));
  reset_c(p, b, ctx.stream);
  sy::cuda::grouped_gemm_sm90(ctx, make_args(p, b));
  sync_or_die(ctx.stream, name + " (second run)");
  CK(cudaMemcpy(second.data(), b.C, p.c_bytes(), cudaMemcpyDeviceToHost));
  const bool repeatable = first == second;
  const bool guards = guards_intact(p, b);
  const double tol = tolerance(p);
  const bool ok = e.nonfinite == 0 && e.rel_l2 <= tol && e.max_elem <= tol && repeatable && guards;
  char buf[200];
  std::snprintf(buf, sizeof buf, "  rel_l2 %.2e  max %.2e (tol %.0e)  nonfinite %lld%s%s", e.rel_l2,
                e.max_elem, tol, (long long)e.nonfinite, repeatable ? "" : "  NOT REPEATABLE",
                guards ? "" : "  GUARD OVERWRITTEN");
  report(ok, name + buf);
  free_buffers(b);
  return first;
}

// The kernel versions on the same inputs (same seed): each checked, then compared bitwise.
// Version 3 differs from version 2 only when accumulating (its epilogue; the kernel itself for
// wgrad into f32, version 2's for the other forms, which this also checks).
void run_versions(sy::cuda::Context& ctx, const Problem& p, int bn, uint64_t seed) {
  const std::vector<unsigned char> v1 = run_case(ctx, p, bn, seed, 1);
  const std::vector<unsigned char> v2 = run_case(ctx, p, bn, seed, 2);
  if (!v1.empty() && !v2.empty())
    report(v1 == v2, p.name() + " BN=" + std::to_string(bn) + " v2 == v1 bitwise");
  const std::vector<unsigned char> v4 = run_case(ctx, p, bn, seed, 4);
  if (!v2.empty() && !v4.empty())
    report(v4 == v2, p.name() + " BN=" + std::to_string(bn) + " v4 == v2 bitwise");
  if (!p.accumulate) return;
  const std::vector<unsigned char> v3 = run_case(ctx, p, bn, seed, 3);
  if (!v2.empty() && !v3.empty())
    report(v3 == v2, p.name() + " BN=" + std::to_string(bn) + " v3 == v2 bitwise");
}

void run_decline(sy::cuda::Context& ctx, const std::string& what, GroupedGemmArgs args) {
  for (int version : {1, 2, 3, 4}) {
    set_version(version);
    const bool launched = sy::cuda::grouped_gemm_sm90(ctx, args);
    sync_or_die(ctx.stream, what);
    report(!launched, "declines " + what + " v" + std::to_string(version));
  }
  set_version(2);
}

std::vector<int64_t> random_rows(std::mt19937_64& rng, int groups, int64_t max_rows, int zeros) {
  std::vector<int64_t> rows(groups);
  std::uniform_int_distribution<int64_t> dist(0, max_rows);
  for (auto& r : rows) r = dist(rng);
  for (int z = 0; z < zeros && z < groups; ++z) rows[(z * 7) % groups] = 0;
  return rows;
}

// A correctness case over the given segments (M is their sum).
Problem segment_problem(Form form, int64_t K, int64_t K2, int64_t N,
                        const std::vector<int64_t>& rows, DType c_dtype, bool accumulate) {
  Problem p;
  p.form = form;
  p.groups = int(rows.size());
  p.K = K;
  p.K2 = K2;
  p.N = N;
  p.rows = rows;
  for (int64_t r : rows) p.M += r;
  p.c_dtype = c_dtype;
  p.accumulate = accumulate;
  return p;
}

// Every shape, both versions: a few hundred small cases, seconds on the device.
void correctness(sy::cuda::Context& ctx) {
  std::mt19937_64 rng(1234);
  struct Shape {
    int64_t K, N;
    std::vector<int64_t> rows;
  };
  std::vector<Shape> shapes = {
      {256, 384, {0, 1, 127, 129, 128, 64, 300, 1000}},         // 8 ragged groups
      {512, 1024, random_rows(rng, 64, 200, 6)},                 // 64 groups, some empty
      {1024, 256, {0, 0, 0, 2000, 0, 0, 0, 0}},                  // one group holds every row
      {72, 136, {5, 130, 67}},                                   // K, N not multiples of 64
      {8, 8, {1, 3}},                                            // the smallest K and N
      {2048, 1024, {4096}},                                      // one large group
      {1032, 520, random_rows(rng, 8, 700, 1)},                  // odd sizes, 8 groups
  };
  uint64_t seed = 1;
  for (const Shape& s : shapes) {
    for (Form form : {Form::forward, Form::trans_b, Form::wgrad}) {
      for (DType c : {DType::bf16, DType::f32}) {
        for (bool acc : {false, true}) {
          for (int bn : {128, 256})
            run_versions(ctx, segment_problem(form, s.K, 0, s.N, s.rows, c, acc), bn, seed++);
        }
      }
    }
  }
  // Two operand pairs in one call (the experts' dx = dh1 w1^T + dh3 w3^T): ragged groups, 64
  // groups with empty ones, K and K2 with tails, both forward forms.
  for (int i : {0, 1, 3}) {
    const Shape& s = shapes[i];
    for (Form form : {Form::forward, Form::trans_b}) {
      for (DType c : {DType::bf16, DType::f32}) {
        for (bool acc : {false, true}) {
          for (int bn : {128, 256})
            run_versions(ctx, segment_problem(form, s.K, s.K + 72, s.N, s.rows, c, acc), bn,
                         seed++);
        }
      }
    }
  }
  // Wgrad with every segment empty: C[g] = 0 (or unchanged when accumulating).
  for (bool acc : {false, true}) {
    Problem p;
    p.form = Form::wgrad;
    p.groups = 4;
    p.K = 64;
    p.N = 128;
    p.rows = {0, 0, 0, 0};
    p.c_dtype = DType::f32;
    p.accumulate = acc;
    run_versions(ctx, p, 0, seed++);
  }
  // Wgrad += into subnormal C: the empty group's block must come out as old + 0 = old, the other
  // group's as old + acc, from version 3's TMA add exactly as from version 2's.
  for (int bn : {128, 256}) {
    Problem p;
    p.form = Form::wgrad;
    p.groups = 3;
    p.K = 136;
    p.N = 200;
    p.rows = {0, 70, 0};
    p.M = 70;
    p.c_dtype = DType::f32;
    p.accumulate = true;
    p.subnormal_c0 = true;
    run_versions(ctx, p, bn, seed++);
  }
  set_bn(0);
  set_version(2);

  // Cases the kernel must decline (the caller falls back).
  Problem p;
  p.form = Form::forward;
  p.groups = 2;
  p.K = 64;
  p.N = 64;
  p.rows = {10, 20};
  p.M = 30;
  Buffers b = make_buffers(p, 99, ctx.stream);
  GroupedGemmArgs a = make_args(p, b);
  {
    GroupedGemmArgs x = a;
    x.K = 60;  // rows of A no longer 16-byte multiples
    run_decline(ctx, "K = 60 (not a multiple of 8)", x);
  }
  {
    GroupedGemmArgs x = a;
    x.N = 36;
    run_decline(ctx, "N = 36 (not a multiple of 8)", x);
  }
  {
    GroupedGemmArgs x = a;
    x.A = b.A + 1;  // 2-byte aligned
    run_decline(ctx, "misaligned A", x);
  }
  {
    GroupedGemmArgs x = a;
    x.kind = GroupedGemmKind::wgrad;
    x.trans_b = true;
    run_decline(ctx, "wgrad with trans_b", x);
  }
  {
    GroupedGemmArgs x = a;
    x.c_dtype = DType::f64;
    run_decline(ctx, "C f64", x);
  }
  free_buffers(b);
}

// ---- part 2: speed ---------------------------------------------------------------------------
struct Timing {
  std::string label;
  double ms_v2 = 0, ms_v2_128 = 0, ms_v2_256 = 0, ms_dense = 0, ms_loop = 0, flops = 0;
  double ms_v3 = 0, ms_v3_128 = 0, ms_v3_256 = 0;  // 0: not timed (version 3 is version 2 there)
  double ms_v4 = 0, ms_v4_128 = 0, ms_v4_256 = 0;
  bool ok = true;
};

using sy::bench::median;

// Median over `reps` launches of `launch(i)` (i picks the input set), after one warm-up.
template <class F>
double time_ms(cudaStream_t stream, int reps, const std::string& what, F&& launch) {
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  launch(0);
  sync_or_die(stream, what);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(start, stream));
    launch(i + 1);
    CK(cudaEventRecord(stop, stream));
    sync_or_die(stream, what);
    float t = 0;
    CK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  CK(cudaEventDestroy(start));
  CK(cudaEventDestroy(stop));
  return median(ms);
}

// Row-major C (+)= op(A) op(B) through cuBLAS' column-major C^T = op(B)^T op(A)^T.
void cublas_gemm(cublasHandle_t h, Form form, int64_t M, int64_t K, int64_t N, const bf16* A,
                 const bf16* B, void* C, bool c_f32, bool accumulate = false) {
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  const cudaDataType_t ct = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasStatus_t s;
  if (form == Form::wgrad)  // C[K, N] = A[M, K]^T B[M, N]
    s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(K), int(M), &alpha, B, CUDA_R_16BF,
                     int(N), A, CUDA_R_16BF, int(K), &beta, C, ct, int(N), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT);
  else  // C[M, N] = A[M, K] B[K, N] (or B[N, K]^T)
    s = cublasGemmEx(h, form == Form::trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, int(N),
                     int(M), int(K), &alpha, B, CUDA_R_16BF, form == Form::trans_b ? int(K) : int(N),
                     A, CUDA_R_16BF, int(K), &beta, C, ct, int(N), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT);
  check_cublas(s, "cublasGemmEx");
}

std::vector<int64_t> skewed_rows(std::mt19937_64& rng, int groups, int64_t total) {
  // Loads of a trained router: each expert gets 0.5x to 1.5x the mean, summing to `total`.
  std::uniform_real_distribution<double> u(0.5, 1.5);
  std::vector<double> w(groups);
  double sum = 0;
  for (auto& x : w) sum += (x = u(rng));
  std::vector<int64_t> rows(groups);
  int64_t given = 0;
  for (int g = 0; g < groups; ++g) given += (rows[g] = int64_t(double(total) * w[g] / sum));
  rows[0] += total - given;
  return rows;
}

std::vector<int64_t> balanced_rows(int groups, int64_t total) {
  std::vector<int64_t> rows(groups, total / groups);
  rows[0] += total - (total / groups) * groups;
  return rows;
}

// Zipf (s = 1) loads, group g ~ 1 / (g + 1), of an untrained or collapsing router; no group gets
// more than `cap` rows (with top-k routing an expert sees each token once: cap = tokens), the
// excess spread over the groups below the cap.
std::vector<int64_t> zipf_rows(int groups, int64_t total, int64_t cap) {
  std::vector<double> w(groups);
  double sum = 0;
  for (int g = 0; g < groups; ++g) sum += (w[g] = 1.0 / (g + 1));
  std::vector<int64_t> rows(groups);
  int64_t given = 0, excess = 0;
  for (int g = 0; g < groups; ++g) {
    rows[g] = std::min<int64_t>(cap, int64_t(double(total) * w[g] / sum));
    given += rows[g];
  }
  excess = total - given;
  for (int g = groups - 1; excess > 0; g = (g + groups - 1) % groups) {  // smallest groups first
    const int64_t add = std::min<int64_t>(excess, std::min<int64_t>(cap - rows[g], excess / groups + 1));
    rows[g] += add;
    excess -= add;
  }
  return rows;
}

struct BenchShape {
  int64_t K, N;
  int groups;
  int64_t M;
  const char* load;  // "bal", "zipf" (training shapes) or "skew" (synthetic)
  std::vector<int64_t> rows;
};

// The shapes training runs first (the bench MoE config: 8192 tokens per step, d_model 2048, 8
// experts of ffn 4096 at top-2: M = 16384 rows per layer; fine-grained: 64 experts of ffn 1024 at
// top-8: M = 65536), then the synthetic ones of the first measurement.
std::vector<BenchShape> bench_shapes(bool quick, std::mt19937_64& rng) {
  std::vector<BenchShape> shapes;
  for (auto [K, N] : std::vector<std::pair<int64_t, int64_t>>{{2048, 4096}, {4096, 2048}}) {
    shapes.push_back({K, N, 8, 16384, "bal", balanced_rows(8, 16384)});
    shapes.push_back({K, N, 8, 16384, "zipf", zipf_rows(8, 16384, 8192)});
  }
  for (auto [K, N] : std::vector<std::pair<int64_t, int64_t>>{{2048, 1024}, {1024, 2048}}) {
    shapes.push_back({K, N, 64, 65536, "bal", balanced_rows(64, 65536)});
    shapes.push_back({K, N, 64, 65536, "zipf", zipf_rows(64, 65536, 8192)});
  }
  const std::vector<std::pair<int64_t, int64_t>> kn = {{2048, 8192}, {8192, 2048}, {2048, 1024}, {1024, 2048}};
  const std::vector<int64_t> ms = quick ? std::vector<int64_t>{32768} : std::vector<int64_t>{4096, 32768, 131072};
  for (auto [K, N] : kn)
    for (int groups : {8, 64})
      for (int64_t M : ms) shapes.push_back({K, N, groups, M, "skew", skewed_rows(rng, groups, M)});
  return shapes;
}

void speed(sy::cuda::Context& ctx, bool quick, std::vector<Timing>& table) {
  cublasHandle_t handle;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  check_cublas(cublasSetStream(handle, ctx.stream), "cublasSetStream");
  std::mt19937_64 rng(42);
  uint64_t seed = 1000;
  for (const BenchShape& shape : bench_shapes(quick, rng)) {
    // The weight gradient as training runs it: written (`=`) by the first micro-batch, added
    // (`+=`, f32) by later ones (model/moe/experts.cpp); the synthetic shapes time `=` only.
    const bool training = std::strcmp(shape.load, "skew") != 0;
    // And on the shapes of the experts' input gradient (trans_b, K = F > N = D), dx = dh1 w1^T +
    // dh3 w3^T as one call with two operand pairs (K2 = K).
    struct Variant {
      Form form;
      bool accumulate;
      bool pair = false;
    };
    std::vector<Variant> variants = {{Form::forward, false}, {Form::trans_b, false},
                                     {Form::wgrad, false}};
    if (training) variants.push_back({Form::wgrad, true});
    if (training && shape.K > shape.N) variants.push_back({Form::trans_b, false, true});
    for (const Variant& variant : variants) {
      const Form form = variant.form;
      Problem p;
      p.form = form;
      p.groups = shape.groups;
      p.K = shape.K;
      p.N = shape.N;
      p.M = shape.M;
      p.rows = shape.rows;
      p.c_dtype = form == Form::wgrad ? DType::f32 : DType::bf16;  // weight gradients in f32
      p.accumulate = variant.accumulate;
      p.K2 = variant.pair ? p.K : 0;
      // Rotate input sets so that one launch does not find the previous one's data in L2.
      const double set_bytes = double(p.M * (p.K + p.K2) + p.b_elems() +
                                      int64_t(p.groups) * p.K2 * p.N) * 2 +
                               double(p.c_bytes());
      const int sets = int(std::clamp(std::ceil(256e6 / set_bytes), 1.0, 4.0));
      std::vector<Buffers> bufs;
      for (int s = 0; s < sets; ++s) bufs.push_back(make_buffers(p, seed++, ctx.stream));
      sync_or_die(ctx.stream, "set-up " + p.name(), 600.0);
      Timing t;
      t.label = p.name() + " " + shape.load;
      t.flops = p.flops();
      // Version 3 has its own kernel for the accumulating f32 weight gradient only.
      const bool has_v3 = p.accumulate && form == Form::wgrad && p.c_dtype == DType::f32;
      std::vector<unsigned char> c_v2, c_v3, c_v4;  // whole C after one launch from C0
      // Check each version's automatic choice on sampled elements (segment ends included).
      set_bn(0);
      for (int version : {2, 3, 4}) {
        if (version == 3 && !has_v3) continue;
        set_version(version);
        const std::string name = "bench " + t.label + " v" + std::to_string(version);
        reset_c(p, bufs[0], ctx.stream);
        if (!sy::cuda::grouped_gemm_sm90(ctx, make_args(p, bufs[0]))) {
          report(false, name + " declined");
          t.ok = false;
          continue;
        }
        sync_or_die(ctx.stream, name);
        std::vector<int64_t> idx;
        std::uniform_int_distribution<int64_t> any(0, p.c_elems() - 1);
        for (int i = 0; i < 4096; ++i) idx.push_back(any(rng));
        if (form != Form::wgrad) {  // the last and first rows of each segment
          int64_t end = 0;
          for (int64_t r : p.rows) {
            end += r;
            for (int64_t row : {end - 1, end})
              if (row >= 0 && row < p.M) idx.push_back(row * p.N + any(rng) % p.N);
          }
        }
        const Errors e = compare(p, bufs[0], idx, ctx.stream);
        {
          std::vector<unsigned char>& c = version == 2 ? c_v2 : version == 3 ? c_v3 : c_v4;
          c.resize(p.c_bytes());
          CK(cudaMemcpy(c.data(), bufs[0].C, p.c_bytes(), cudaMemcpyDeviceToHost));
        }
        const bool ok = e.nonfinite == 0 && e.rel_l2 <= tolerance(p) &&
                        e.max_elem <= tolerance(p) && guards_intact(p, bufs[0]);
        t.ok = t.ok && ok;
        char buf[120];
        std::snprintf(buf, sizeof buf, "  sampled %lld: rel_l2 %.2e  max %.2e",
                      (long long)e.checked, e.rel_l2, e.max_elem);
        report(ok, name + buf);
      }
      if (has_v3 && !c_v2.empty() && !c_v3.empty()) {
        const bool same = c_v2 == c_v3;
        t.ok = t.ok && same;
        report(same, "bench " + t.label + " v3 == v2 bitwise (all of C)");
      }
      if (!c_v2.empty() && !c_v4.empty()) {
        const bool same = c_v2 == c_v4;
        t.ok = t.ok && same;
        report(same, "bench " + t.label + " v4 == v2 bitwise (all of C)");
      }
      // A slow kernel gets fewer repetitions so that the whole run stays within minutes.
      const int reps = p.flops() > 1e12 ? 10 : 20;
      auto grouped = [&](int i) { sy::cuda::grouped_gemm_sm90(ctx, make_args(p, bufs[i % sets])); };
      // One version with the kernel's own tile width, then each width forced.
      auto time_widths = [&](int version, double& ms_auto, double& ms_128, double& ms_256) {
        set_version(version);
        ms_auto = time_ms(ctx.stream, reps, p.name(), grouped);
        set_bn(128);
        ms_128 = time_ms(ctx.stream, reps, p.name(), grouped);
        set_bn(256);
        ms_256 = time_ms(ctx.stream, reps, p.name(), grouped);
        set_bn(0);
      };
      if (t.ok) {
        time_widths(2, t.ms_v2, t.ms_v2_128, t.ms_v2_256);
        if (has_v3) time_widths(3, t.ms_v3, t.ms_v3_128, t.ms_v3_256);
        time_widths(4, t.ms_v4, t.ms_v4_128, t.ms_v4_256);
      }
      set_version(2);
      t.ms_dense = time_ms(ctx.stream, reps, "cublas dense", [&](int i) {
        const Buffers& b = bufs[i % sets];
        cublas_gemm(handle, form, p.M, p.K, p.N, b.A, b.B, b.C, p.c_dtype == DType::f32,
                    p.accumulate);
        if (p.K2 > 0)
          cublas_gemm(handle, form, p.M, p.K2, p.N, b.A2, b.B2, b.C, p.c_dtype == DType::f32, true);
      });
      t.ms_loop = time_ms(ctx.stream, reps, "cublas loop", [&](int i) {
        const Buffers& b = bufs[i % sets];
        const size_t c_size = p.c_dtype == DType::f32 ? 4 : 2;
        int64_t row = 0;
        for (int g = 0; g < p.groups; ++g) {
          const int64_t r = p.rows[g];
          if (r > 0) {
            const bf16* A = b.A + row * p.K;
            if (form == Form::wgrad)
              cublas_gemm(handle, form, r, p.K, p.N, A, b.B + row * p.N,
                          static_cast<char*>(b.C) + size_t(g) * p.K * p.N * c_size, true,
                          p.accumulate);
            else
              cublas_gemm(handle, form, r, p.K, p.N, A, b.B + int64_t(g) * p.K * p.N,
                          static_cast<char*>(b.C) + size_t(row) * p.N * c_size, false);
            if (p.K2 > 0)
              cublas_gemm(handle, form, r, p.K2, p.N, b.A2 + row * p.K2,
                          b.B2 + int64_t(g) * p.K2 * p.N,
                          static_cast<char*>(b.C) + size_t(row) * p.N * c_size, false, true);
          }
          row += r;
        }
      });
      table.push_back(t);
      for (Buffers& b : bufs) free_buffers(b);
    }
  }
  cublasDestroy(handle);
}

}  // namespace

int main(int argc, char** argv) {
  // The kernel itself on every shape, whatever SY_GG_SM90_ROUTE the caller set.
  setenv("SY_GG_SM90_ROUTE", "0", 1);
  bool quick = false, bench = true, checks = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--no-bench")) bench = false;
    else if (!std::strcmp(argv[i], "--no-check")) checks = false;
    else {
      std::printf("usage: %s [--quick] [--no-bench] [--no-check]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s, CC %d.%d, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("SKIP: the sm_90a kernel needs a CC 9.0 device\n");
    return 0;
  }
  CK(cudaSetDevice(0));
  sy::cuda::Context ctx;
  ctx.device = 0;
  CK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));

  if (checks) correctness(ctx);
  std::vector<Timing> table;
  if (bench) speed(ctx, quick, table);

  if (!table.empty()) {
    std::printf("\nTFLOP/s (median of 10-20, 2*M*K*N / time). v2, v3, v4 = SY_GG_SM90_VERSION with"
                " the kernel's own tile choice; /128, /256 = tile width forced; v3 only on the"
                " accumulating f32 weight gradient (elsewhere it runs v2: '-'); v4 = the staged"
                " TMA epilogue; dense = cuBLAS on the same total shape; loop = one cuBLAS call per"
                " group. bal/zipf = training shapes, skew = synthetic\n");
    std::printf("%-60s %7s %7s %7s %7s %7s %7s %7s %7s %7s %7s %6s %8s %8s\n", "case", "v2",
                "v2/128", "v2/256", "v3", "v4", "v4/128", "v4/256", "dense", "loop", "v4/v2",
                "v4/lp", "v2 ms", "v4 ms");
    for (const Timing& t : table) {
      auto tf = [&](double ms) {
        char cell[16];
        if (ms > 0) std::snprintf(cell, sizeof cell, "%7.1f", t.flops / (ms * 1e-3) / 1e12);
        else std::snprintf(cell, sizeof cell, "%7s", "-");
        return std::string(cell);
      };
      auto ratio = [](double slow, double fast) {
        char cell[16];
        if (slow > 0 && fast > 0) std::snprintf(cell, sizeof cell, "%6.3f", slow / fast);
        else std::snprintf(cell, sizeof cell, "%6s", "-");
        return std::string(cell);
      };
      std::printf("%-60s %s %s %s %s %s %s %s %s %s %s %s %8.3f %8.3f%s\n", t.label.c_str(),
                  tf(t.ms_v2).c_str(), tf(t.ms_v2_128).c_str(), tf(t.ms_v2_256).c_str(),
                  tf(t.ms_v3).c_str(), tf(t.ms_v4).c_str(), tf(t.ms_v4_128).c_str(),
                  tf(t.ms_v4_256).c_str(), tf(t.ms_dense).c_str(), tf(t.ms_loop).c_str(),
                  ratio(t.ms_v2, t.ms_v4).c_str(), ratio(t.ms_loop, t.ms_v4).c_str(), t.ms_v2,
                  t.ms_v4, t.ok ? "" : "  FAIL");
    }
  }
  std::printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  CK(cudaStreamDestroy(ctx.stream));
  return failures ? 1 : 0;
}
