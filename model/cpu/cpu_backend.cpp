// The CPU reference backend: validates each op's shapes and dtypes, then dispatches on the dtype
// to the kernel templates of cpu_kernels.h (f32 and f64; bf16 is not supported on the CPU).
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "model/backend.h"
#include "model/cpu/cpu_kernels.h"

namespace sy {
namespace {

// ---- validation -----------------------------------------------------------------------------
// Checks for one op; every failure throws std::runtime_error("cpu <op>: ...").
class Check {
 public:
  explicit Check(const char* op) : op_(op) {}

  [[noreturn]] void fail(const std::string& message) const {
    throw std::runtime_error(std::string("cpu ") + op_ + ": " + message);
  }

  void on_cpu(const Tensor& t, const char* name) const {
    if (!t.defined()) fail(std::string(name) + " is undefined");
    if (t.device() != Device::cpu) fail(std::string(name) + " is not on the cpu");
    if (t.numel() > 0 && t.data() == nullptr) fail(std::string(name) + " has no data");
  }

  // The float dtype of t (f32 or f64).
  DType float_dtype(const Tensor& t, const char* name) const {
    on_cpu(t, name);
    if (t.dtype() == DType::bf16) throw std::runtime_error("cpu backend: bf16 not supported");
    if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
      fail(std::string(name) + " must be f32 or f64, got " + dtype_name(t.dtype()));
    return t.dtype();
  }

  void dtype(const Tensor& t, DType dtype, const char* name) const {
    on_cpu(t, name);
    if (t.dtype() != dtype)
      fail(std::string(name) + " must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype()));
  }

  void shape(const Tensor& t, const Shape& shape, const char* name) const {
    if (t.shape() != shape)
      fail(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
           shape_str(t.shape()));
  }

  void ndim(const Tensor& t, int n, const char* name) const {
    if (t.ndim() != n)
      fail(std::string(name) + " must be " + std::to_string(n) + "-D, got " + shape_str(t.shape()));
  }

  void numel(const Tensor& t, int64_t n, const char* name) const {
    if (t.numel() != n)
      fail(std::string(name) + " must have " + std::to_string(n) + " elements, got " +
           shape_str(t.shape()));
  }

  void positive(int64_t value, const char* name) const {
    if (value <= 0) fail(std::string(name) + " must be positive, got " + std::to_string(value));
  }

  // Every entry of the i32 tensor idx (first n entries) lies in [lo, hi).
  void index_range(const Tensor& idx, int64_t n, int64_t lo, int64_t hi, const char* name) const {
    const int32_t* p = idx.ptr<int32_t>();
    for (int64_t i = 0; i < n; ++i)
      if (p[i] < lo || p[i] >= hi)
        fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
             " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
  }

  void fits_int(int64_t value, const char* name) const {
    if (value > INT_MAX) fail(std::string(name) + " too large for BLAS/i32: " + std::to_string(value));
  }

 private:
  const char* op_;
};

// Calls f(T{}) with T = float or double for dtype.
template <class F>
decltype(auto) dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    default: throw std::runtime_error("cpu backend: bf16 not supported");
  }
}

// Calls f(T{}) with T = float, double or int32_t for dtype.
template <class F>
decltype(auto) dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::i32: return f(int32_t{});
    default: throw std::runtime_error("cpu backend: bf16 not supported");
  }
}

bool overlaps(const Tensor& a, const Tensor& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// ---- the backend ----------------------------------------------------------------------------
void check_top_k(const Check& c, int64_t K, int64_t E) {
  if (K < 1 || K > E) c.fail("K = " + std::to_string(K) + " outside [1, E = " + std::to_string(E) + "]");
}

// expert_bias is optional (undefined: no bias); when given, [E] in the router's dtype.
void check_bias(const Check& c, const Tensor& bias, DType dtype, int64_t E) {
  if (!bias.defined()) return;
  c.dtype(bias, dtype, "expert_bias");
  c.numel(bias, E, "expert_bias");
}

template <class T>
const T* bias_ptr(const Tensor& bias) {
  return bias.defined() ? bias.ptr<T>() : nullptr;
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu"; }

  // ---- memory ---------------------------------------------------------------------------------
  Tensor alloc(const Shape& shape, DType dtype) override {
    for (int64_t d : shape)
      if (d < 0) Check("alloc").fail("negative dimension in " + shape_str(shape));
    if (dtype == DType::bf16) throw std::runtime_error("cpu backend: bf16 not supported");
    constexpr size_t kAlign = 64;
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    const size_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    void* data = std::aligned_alloc(kAlign, rounded);
    if (!data) Check("alloc").fail("out of memory allocating " + std::to_string(bytes) + " bytes");
    std::shared_ptr<void> buffer(data, std::free);
    return Tensor(std::move(buffer), data, shape, dtype, Device::cpu);
  }

  void fill(const Tensor& x, double value) override {
    Check("fill").on_cpu(x, "x");
    dispatch_any(x.dtype(), [&]<class T>(T) {
      cpu::fill(x.ptr<T>(), x.numel(), static_cast<T>(value));
    });
  }

  void copy(const Tensor& dst, const Tensor& src) override {
    const Check c("copy");
    c.on_cpu(dst, "dst");
    c.on_cpu(src, "src");
    c.numel(dst, src.numel(), "dst");
    if (dst.data() == src.data() && dst.dtype() == src.dtype()) return;
    if (dst.dtype() == src.dtype()) {
      std::memmove(dst.data(), src.data(), src.nbytes());
      return;
    }
    if (overlaps(dst, src)) c.fail("converting copy between overlapping tensors");
    dispatch_any(dst.dtype(), [&]<class D>(D) {
      dispatch_any(src.dtype(), [&]<class S>(S) {
        cpu::convert(dst.ptr<D>(), src.ptr<S>(), src.numel());
      });
    });
  }

  void write(const Tensor& dst, std::span<const float> host) override { write_host(dst, host); }
  void write(const Tensor& dst, std::span<const double> host) override { write_host(dst, host); }
  void write(const Tensor& dst, std::span<const int32_t> host) override { write_host(dst, host); }

  std::vector<double> read(const Tensor& src) override {
    Check("read").on_cpu(src, "src");
    std::vector<double> out(src.numel());
    dispatch_any(src.dtype(), [&]<class T>(T) {
      cpu::convert(out.data(), src.ptr<T>(), src.numel());
    });
    return out;
  }

  void copy_to_host(void* host, const Tensor& src) override {
    Check("copy_to_host").on_cpu(src, "src");
    if (src.nbytes()) std::memcpy(host, src.data(), src.nbytes());
  }
  void copy_from_host(const Tensor& dst, const void* host) override {
    Check("copy_from_host").on_cpu(dst, "dst");
    if (dst.nbytes()) std::memcpy(dst.data(), host, dst.nbytes());
  }

  std::vector<int32_t> read_i32(const Tensor& src) override {
    Check("read_i32").dtype(src, DType::i32, "src");
    const int32_t* p = src.ptr<int32_t>();
    return std::vector<int32_t>(p, p + src.numel());
  }

  // ---- linear algebra -------------------------------------------------------------------------
  void gemm(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
            double alpha, double beta) override {
    const Check c("gemm");
    const DType dt = c.float_dtype(C, "C");
    c.dtype(A, dt, "A");
    c.dtype(B, dt, "B");
    c.ndim(C, 2, "C");
    c.ndim(A, 2, "A");
    c.ndim(B, 2, "B");
    const int64_t M = C.dim(0), N = C.dim(1);
    const int64_t K = trans_a ? A.dim(0) : A.dim(1);
    if ((trans_a ? A.dim(1) : A.dim(0)) != M || (trans_b ? B.dim(1) : B.dim(0)) != K ||
        (trans_b ? B.dim(0) : B.dim(1)) != N)
      c.fail("C" + shape_str(C.shape()) + " = A" + shape_str(A.shape()) + (trans_a ? "^T" : "") +
             " @ B" + shape_str(B.shape()) + (trans_b ? "^T" : "") + ": shapes do not match");
    if (overlaps(C, A) || overlaps(C, B)) c.fail("C overlaps an input");
    for (int64_t d : {M, N, K}) c.fits_int(d, "dimension");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::gemm(C.ptr<T>(), A.ptr<T>(), trans_a, B.ptr<T>(), trans_b, M, N, K,
                static_cast<T>(alpha), static_cast<T>(beta));
    });
  }

  void add(const Tensor& y, const Tensor& x, double alpha) override {
    const Check c("add");
    const DType dt = c.float_dtype(y, "y");
    c.dtype(x, dt, "x");
    c.numel(x, y.numel(), "x");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::add(y.ptr<T>(), x.ptr<T>(), y.numel(), static_cast<T>(alpha));
    });
  }

  void scale(const Tensor& y, double alpha) override {
    const DType dt = Check("scale").float_dtype(y, "y");
    dispatch_float(dt, [&]<class T>(T) { cpu::scale(y.ptr<T>(), y.numel(), static_cast<T>(alpha)); });
  }

  double sum_squares(const Tensor& x) override {
    const DType dt = Check("sum_squares").float_dtype(x, "x");
    return dispatch_float(dt, [&]<class T>(T) { return cpu::sum_squares(x.ptr<T>(), x.numel()); });
  }

  // ---- embedding ------------------------------------------------------------------------------
  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) override {
    const Check c("embedding_forward");
    const DType dt = c.float_dtype(table, "table");
    c.dtype(out, dt, "out");
    c.dtype(tokens, DType::i32, "tokens");
    c.ndim(table, 2, "table");
    const int64_t N = tokens.numel(), V = table.dim(0), D = table.dim(1);
    c.shape(out, {N, D}, "out");
    c.index_range(tokens, N, 0, V, "tokens");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::embedding_forward(out.ptr<T>(), tokens.ptr<int32_t>(), table.ptr<T>(), N, D);
    });
  }

  void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) override {
    const Check c("embedding_backward");
    const DType dt = c.float_dtype(dtable, "dtable");
    c.dtype(dout, dt, "dout");
    c.dtype(tokens, DType::i32, "tokens");
    c.ndim(dtable, 2, "dtable");
    const int64_t N = tokens.numel(), V = dtable.dim(0), D = dtable.dim(1);
    c.shape(dout, {N, D}, "dout");
    c.index_range(tokens, N, 0, V, "tokens");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::embedding_backward(dtable.ptr<T>(), dout.ptr<T>(), tokens.ptr<int32_t>(), N, D);
    });
  }

  // ---- RMSNorm --------------------------------------------------------------------------------
  void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x,
                       const Tensor& gain) override {
    const Check c("rmsnorm_forward");
    const DType dt = c.float_dtype(x, "x");
    c.dtype(out, dt, "out");
    c.dtype(rstd, dt, "rstd");
    c.dtype(gain, dt, "gain");
    if (x.ndim() < 1) c.fail("x must have at least one axis");
    const int64_t D = x.dim(-1);
    c.positive(D, "last axis");
    const int64_t N = x.numel() / D;
    c.shape(out, x.shape(), "out");
    c.numel(rstd, N, "rstd");
    c.shape(gain, {D}, "gain");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::rmsnorm_forward(out.ptr<T>(), rstd.ptr<T>(), x.ptr<T>(), gain.ptr<T>(), N, D);
    });
  }

  void rmsnorm_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                        const Tensor& gain, const Tensor& rstd) override {
    const Check c("rmsnorm_backward");
    const DType dt = c.float_dtype(x, "x");
    c.dtype(dx, dt, "dx");
    c.dtype(dgain, dt, "dgain");
    c.dtype(dout, dt, "dout");
    c.dtype(gain, dt, "gain");
    c.dtype(rstd, dt, "rstd");
    if (x.ndim() < 1) c.fail("x must have at least one axis");
    const int64_t D = x.dim(-1);
    c.positive(D, "last axis");
    const int64_t N = x.numel() / D;
    c.shape(dx, x.shape(), "dx");
    c.shape(dout, x.shape(), "dout");
    c.shape(gain, {D}, "gain");
    c.shape(dgain, {D}, "dgain");
    c.numel(rstd, N, "rstd");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::rmsnorm_backward(dx.ptr<T>(), dgain.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gain.ptr<T>(),
                            rstd.ptr<T>(), N, D);
    });
  }

  // ---- attention ------------------------------------------------------------------------------
  void rope_forward(const Tensor& x, int64_t B, int64_t S, int64_t H) override {
    rope("rope_forward", x, B, S, H, +1);
  }

  void rope_backward(const Tensor& dx, int64_t B, int64_t S, int64_t H) override {
    rope("rope_backward", dx, B, S, H, -1);
  }

  void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k,
                         const Tensor& v, int64_t B, int64_t S, int64_t H) override {
    const Check c("attention_forward");
    const DType dt = c.float_dtype(q, "q");
    c.dtype(k, dt, "k");
    c.dtype(v, dt, "v");
    c.dtype(out, dt, "out");
    c.dtype(probs, dt, "probs");
    const int64_t Dh = head_width(c, q, B, S, H, "q");
    const Shape shape = q.shape();
    c.shape(k, shape, "k");
    c.shape(v, shape, "v");
    c.shape(out, shape, "out");
    c.shape(probs, {B, H, S, S}, "probs");
    for (int64_t d : {S, H * Dh}) c.fits_int(d, "dimension");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::attention_forward(out.ptr<T>(), probs.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), B,
                             S, H, Dh);
    });
  }

  void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                          const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                          int64_t B, int64_t S, int64_t H) override {
    const Check c("attention_backward");
    const DType dt = c.float_dtype(q, "q");
    for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"},
                           {&k, "k"}, {&v, "v"}, {&probs, "probs"}})
      c.dtype(*t, dt, name);
    const int64_t Dh = head_width(c, q, B, S, H, "q");
    const Shape shape = q.shape();
    for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"},
                           {&k, "k"}, {&v, "v"}})
      c.shape(*t, shape, name);
    c.shape(probs, {B, H, S, S}, "probs");
    for (int64_t d : {S, H * Dh}) c.fits_int(d, "dimension");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(), q.ptr<T>(),
                              k.ptr<T>(), v.ptr<T>(), probs.ptr<T>(), B, S, H, Dh);
    });
  }

  void flash_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q,
                               const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                               int64_t H) override {
    const Check c("flash_attention_forward");
    const DType dt = c.float_dtype(q, "q");
    for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"}})
      c.dtype(*t, dt, name);
    const int64_t Dh = head_width(c, q, B, S, H, "q");
    for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}}) c.shape(*t, q.shape(), name);
    c.shape(lse, {B, H, S}, "lse");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::flash_attention_forward(out.ptr<T>(), lse.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(),
                                   B, S, H, Dh);
    });
  }

  void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                const Tensor& dout, const Tensor& q, const Tensor& k,
                                const Tensor& v, const Tensor& out, const Tensor& lse, int64_t B,
                                int64_t S, int64_t H) override {
    const Check c("flash_attention_backward");
    const DType dt = c.float_dtype(q, "q");
    for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"},
                           {&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"}})
      c.dtype(*t, dt, name);
    const int64_t Dh = head_width(c, q, B, S, H, "q");
    for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"},
                           {&k, "k"}, {&v, "v"}, {&out, "out"}})
      c.shape(*t, q.shape(), name);
    c.shape(lse, {B, H, S}, "lse");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::flash_attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(),
                                    q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(),
                                    B, S, H, Dh);
    });
  }

  // ---- SwiGLU ---------------------------------------------------------------------------------
  void swiglu_forward(const Tensor& out, const Tensor& a, const Tensor& b) override {
    const Check c("swiglu_forward");
    const DType dt = c.float_dtype(a, "a");
    c.dtype(b, dt, "b");
    c.dtype(out, dt, "out");
    c.shape(b, a.shape(), "b");
    c.shape(out, a.shape(), "out");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::swiglu_forward(out.ptr<T>(), a.ptr<T>(), b.ptr<T>(), a.numel());
    });
  }

  void swiglu_backward(const Tensor& da, const Tensor& db, const Tensor& dout, const Tensor& a,
                       const Tensor& b, const Tensor& hidden) override {
    const Check c("swiglu_backward");
    const DType dt = c.float_dtype(a, "a");
    for (auto [t, name] : {std::pair{&da, "da"}, {&db, "db"}, {&dout, "dout"}, {&b, "b"}}) {
      c.dtype(*t, dt, name);
      c.shape(*t, a.shape(), name);
    }
    if (hidden.defined()) {
      c.dtype(hidden, dt, "hidden");
      c.shape(hidden, a.shape(), "hidden");
    }
    dispatch_float(dt, [&]<class T>(T) {
      cpu::swiglu_backward(da.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), a.ptr<T>(), b.ptr<T>(),
                           hidden.defined() ? hidden.ptr<T>() : nullptr, a.numel());
    });
  }

  // ---- cross-entropy --------------------------------------------------------------------------
  void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                     bool compute_grad, double grad_scale) override {
    const Check c("cross_entropy");
    const DType dt = c.float_dtype(logits, "logits");
    c.dtype(losses, dt, "losses");
    c.dtype(targets, DType::i32, "targets");
    c.ndim(logits, 2, "logits");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    c.numel(losses, N, "losses");
    c.numel(targets, N, "targets");
    c.index_range(targets, N, 0, V, "targets");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::cross_entropy(losses.ptr<T>(), logits.ptr<T>(), targets.ptr<int32_t>(), N, V,
                         compute_grad, static_cast<T>(grad_scale));
    });
  }

  // ---- router ---------------------------------------------------------------------------------
  void router_scores_topk(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                          const Tensor& gates, const Tensor& logits, const Tensor& expert_bias,
                          const RoutingRule& rule) override {
    const Check c("router_scores_topk");
    const DType dt = c.float_dtype(logits, "logits");
    c.dtype(scores, dt, "scores");
    c.dtype(lse, dt, "lse");
    c.dtype(gates, dt, "gates");
    c.dtype(topk_idx, DType::i32, "topk_idx");
    c.ndim(logits, 2, "logits");
    const int64_t N = logits.dim(0), E = logits.dim(1), K = rule.top_k;
    check_top_k(c, K, E);
    c.shape(scores, logits.shape(), "scores");
    c.numel(lse, N, "lse");
    c.shape(topk_idx, {N, K}, "topk_idx");
    c.shape(gates, {N, K}, "gates");
    check_bias(c, expert_bias, dt, E);
    dispatch_float(dt, [&]<class T>(T) {
      cpu::router_scores_topk(scores.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(),
                              gates.ptr<T>(), logits.ptr<T>(), bias_ptr<T>(expert_bias), N, E,
                              rule);
    });
  }

  RouterPlanCounts router_plan(const Tensor& slot_row, const Tensor& row_slot,
                               const Tensor& slot_expert, const Tensor& assignments_per_expert,
                               const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                               const Tensor& expert_bias, const RoutingRule& rule) override {
    const Check c("router_plan");
    for (auto [t, name] : {std::pair{&slot_row, "slot_row"}, {&row_slot, "row_slot"},
                           {&slot_expert, "slot_expert"},
                           {&assignments_per_expert, "assignments_per_expert"},
                           {&topk_idx, "topk_idx"}})
      c.dtype(*t, DType::i32, name);
    c.ndim(topk_idx, 2, "topk_idx");
    c.ndim(logits, 2, "logits");
    const DType dt = c.float_dtype(logits, "logits");
    c.dtype(gates, dt, "gates");
    const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1);
    c.positive(E, "E");
    if (K != rule.top_k) c.fail("topk_idx has " + std::to_string(K) + " columns, top_k is " +
                                std::to_string(rule.top_k));
    c.fits_int(N * K, "T*K");
    c.shape(logits, {N, E}, "logits");
    c.shape(gates, {N, K}, "gates");
    c.numel(slot_row, N * K, "slot_row");
    c.numel(slot_expert, N * K, "slot_expert");
    c.numel(assignments_per_expert, E, "assignments_per_expert");
    c.index_range(topk_idx, N * K, 0, E, "topk_idx");
    check_bias(c, expert_bias, dt, E);
    RouterPlanCounts counts;
    counts.tokens_per_expert = dispatch_float(dt, [&]<class T>(T) {
      return cpu::router_plan_counts(slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(),
                                     assignments_per_expert.ptr<int32_t>(),
                                     topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
                                     bias_ptr<T>(expert_bias), N, E, rule,
                                     &counts.rerouted);
    });
    int64_t rows = 0;
    for (int64_t n : counts.tokens_per_expert) rows += n;
    if (rows > row_slot.numel())
      c.fail("row_slot holds " + std::to_string(row_slot.numel()) + " rows, " +
             std::to_string(rows) + " kept");
    cpu::router_plan_rows(slot_row.ptr<int32_t>(), row_slot.ptr<int32_t>(),
                          slot_expert.ptr<int32_t>(), counts.tokens_per_expert, N, K);
    return counts;
  }

  RouterLossValues router_losses(const Tensor& scores, const Tensor& lse,
                                 const Tensor& balance_counts, const RoutingRule& rule) override {
    const Check c("router_losses");
    const DType dt = c.float_dtype(scores, "scores");
    c.dtype(lse, dt, "lse");
    c.dtype(balance_counts, DType::i32, "balance_counts");
    c.ndim(scores, 2, "scores");
    const int64_t N = scores.dim(0), E = scores.dim(1);
    c.numel(lse, N, "lse");
    c.numel(balance_counts, E, "balance_counts");
    const cpu::RouterLosses l = dispatch_float(dt, [&]<class T>(T) {
      return cpu::router_losses(scores.ptr<T>(), lse.ptr<T>(), balance_counts.ptr<int32_t>(), N,
                                E, rule);
    });
    return {l.aux, l.z, l.entropy};
  }

  void router_backward(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                       const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                       const Tensor& balance_counts, const RoutingRule& rule, double d_aux,
                       double d_z) override {
    const Check c("router_backward");
    const DType dt = c.float_dtype(scores, "scores");
    for (auto [t, name] : {std::pair{&dlogits, "dlogits"}, {&dgates, "dgates"}, {&lse, "lse"},
                           {&logits, "logits"}})
      c.dtype(*t, dt, name);
    c.dtype(topk_idx, DType::i32, "topk_idx");
    c.dtype(balance_counts, DType::i32, "balance_counts");
    c.ndim(scores, 2, "scores");
    const int64_t N = scores.dim(0), E = scores.dim(1), K = rule.top_k;
    check_top_k(c, K, E);
    c.shape(dlogits, scores.shape(), "dlogits");
    c.shape(logits, scores.shape(), "logits");
    c.shape(dgates, {N, K}, "dgates");
    c.numel(lse, N, "lse");
    c.shape(topk_idx, {N, K}, "topk_idx");
    c.numel(balance_counts, E, "balance_counts");
    c.index_range(topk_idx, N * K, 0, E, "topk_idx");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::router_backward(dlogits.ptr<T>(), dgates.ptr<T>(), scores.ptr<T>(), lse.ptr<T>(),
                           logits.ptr<T>(), topk_idx.ptr<int32_t>(),
                           balance_counts.ptr<int32_t>(), N, E, rule, d_aux, d_z);
    });
  }

  // ---- permute / unpermute --------------------------------------------------------------------
  void permute_rows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot,
                    int64_t K) override {
    const Check c("permute_rows");
    const DType dt = c.float_dtype(x, "x");
    c.dtype(x_perm, dt, "x_perm");
    c.dtype(row_slot, DType::i32, "row_slot");
    c.ndim(x, 2, "x");
    c.positive(K, "K");
    const int64_t N = x.dim(0), D = x.dim(1);
    c.ndim(x_perm, 2, "x_perm");
    const int64_t R = x_perm.dim(0);
    c.shape(x_perm, {R, D}, "x_perm");
    if (row_slot.numel() < R) c.numel(row_slot, R, "row_slot");
    c.index_range(row_slot, R, 0, N * K, "row_slot");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::permute_rows(x_perm.ptr<T>(), x.ptr<T>(), row_slot.ptr<int32_t>(), R, D, K);
    });
  }

  void permute_rows_backward(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                             int64_t K) override {
    const Check c("permute_rows_backward");
    const DType dt = c.float_dtype(dx, "dx");
    c.dtype(dx_perm, dt, "dx_perm");
    c.dtype(slot_row, DType::i32, "slot_row");
    c.ndim(dx, 2, "dx");
    c.ndim(dx_perm, 2, "dx_perm");
    c.positive(K, "K");
    const int64_t N = dx.dim(0), D = dx.dim(1), R = dx_perm.dim(0);
    c.shape(dx_perm, {R, D}, "dx_perm");
    c.numel(slot_row, N * K, "slot_row");
    c.index_range(slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::permute_rows_backward(dx.ptr<T>(), dx_perm.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
    });
  }

  void unpermute_combine(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                         const Tensor& slot_row) override {
    const Check c("unpermute_combine");
    const DType dt = c.float_dtype(out, "out");
    c.dtype(y_perm, dt, "y_perm");
    c.dtype(gates, dt, "gates");
    c.dtype(slot_row, DType::i32, "slot_row");
    c.ndim(out, 2, "out");
    c.ndim(y_perm, 2, "y_perm");
    c.ndim(gates, 2, "gates");
    const int64_t N = out.dim(0), D = out.dim(1), R = y_perm.dim(0), K = gates.dim(1);
    c.shape(y_perm, {R, D}, "y_perm");
    c.shape(gates, {N, K}, "gates");
    c.numel(slot_row, N * K, "slot_row");
    c.index_range(slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::unpermute_combine(out.ptr<T>(), y_perm.ptr<T>(), gates.ptr<T>(), slot_row.ptr<int32_t>(),
                             N, D, K);
    });
  }

  void unpermute_combine_backward(const Tensor& dy_perm, const Tensor& dgates, const Tensor& dout,
                                  const Tensor& y_perm, const Tensor& gates,
                                  const Tensor& slot_row) override {
    const Check c("unpermute_combine_backward");
    const DType dt = c.float_dtype(dout, "dout");
    c.dtype(dy_perm, dt, "dy_perm");
    c.dtype(dgates, dt, "dgates");
    c.dtype(y_perm, dt, "y_perm");
    c.dtype(gates, dt, "gates");
    c.dtype(slot_row, DType::i32, "slot_row");
    c.ndim(dout, 2, "dout");
    c.ndim(y_perm, 2, "y_perm");
    c.ndim(gates, 2, "gates");
    const int64_t N = dout.dim(0), D = dout.dim(1), R = y_perm.dim(0), K = gates.dim(1);
    c.shape(y_perm, {R, D}, "y_perm");
    c.shape(dy_perm, {R, D}, "dy_perm");
    c.shape(gates, {N, K}, "gates");
    c.shape(dgates, {N, K}, "dgates");
    c.numel(slot_row, N * K, "slot_row");
    c.index_range(slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::unpermute_combine_backward(dy_perm.ptr<T>(), dgates.ptr<T>(), dout.ptr<T>(),
                                      y_perm.ptr<T>(), gates.ptr<T>(), slot_row.ptr<int32_t>(), N,
                                      R, D, K);
    });
  }

  // ---- optimizer ------------------------------------------------------------------------------
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                    const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                    double weight_decay, int64_t step) override {
    const Check c("adamw_update");
    const DType dt = c.float_dtype(param, "param");
    for (auto [t, name] : {std::pair{&grad, "grad"}, {&exp_avg, "exp_avg"},
                           {&exp_avg_sq, "exp_avg_sq"}}) {
      c.dtype(*t, dt, name);
      c.numel(*t, param.numel(), name);
    }
    c.positive(step, "step");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::adamw_update(param.ptr<T>(), grad.ptr<T>(), exp_avg.ptr<T>(), exp_avg_sq.ptr<T>(),
                        param.numel(), lr, beta1, beta2, eps, weight_decay, step);
    });
  }

  void sgd_update(const Tensor& param, const Tensor& grad, double lr) override {
    const Check c("sgd_update");
    const DType dt = c.float_dtype(param, "param");
    c.dtype(grad, dt, "grad");
    c.numel(grad, param.numel(), "grad");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::sgd_update(param.ptr<T>(), grad.ptr<T>(), param.numel(), static_cast<T>(lr));
    });
  }

 private:
  template <class H>
  void write_host(const Tensor& dst, std::span<const H> host) {
    const Check c("write");
    c.on_cpu(dst, "dst");
    c.numel(dst, static_cast<int64_t>(host.size()), "dst");
    dispatch_any(dst.dtype(), [&]<class T>(T) {
      cpu::convert(dst.ptr<T>(), host.data(), dst.numel());
    });
  }

  // Validates x[B*S, H*Dh] (Dh even) and returns Dh.
  static int64_t head_width(const Check& c, const Tensor& x, int64_t B, int64_t S, int64_t H,
                            const char* name) {
    c.positive(B, "B");
    c.positive(S, "S");
    c.positive(H, "H");
    c.ndim(x, 2, name);
    if (x.dim(0) != B * S)
      c.fail(std::string(name) + " has " + std::to_string(x.dim(0)) + " rows, expected B*S = " +
             std::to_string(B * S));
    if (x.dim(1) % H != 0 || (x.dim(1) / H) % 2 != 0)
      c.fail(std::string(name) + " width " + std::to_string(x.dim(1)) +
             " is not H * (even Dh), H = " + std::to_string(H));
    return x.dim(1) / H;
  }

  void rope(const char* op, const Tensor& x, int64_t B, int64_t S, int64_t H, int sign) {
    const Check c(op);
    const DType dt = c.float_dtype(x, "x");
    const int64_t Dh = head_width(c, x, B, S, H, "x");
    dispatch_float(dt, [&]<class T>(T) {
      const cpu::RopeTable<T>& table = rope_table<T>(S, Dh);
      cpu::rope(x.ptr<T>(), table, B * S, S, H, Dh, static_cast<T>(sign));
    });
  }

  // cos/sin tables cached per (S, Dh) and dtype.
  template <class T>
  const cpu::RopeTable<T>& rope_table(int64_t S, int64_t Dh) {
    std::lock_guard<std::mutex> lock(rope_mutex_);
    auto& cache = [this]() -> auto& {
      if constexpr (std::is_same_v<T, float>) return rope_f32_;
      else return rope_f64_;
    }();
    auto it = cache.find({S, Dh});
    if (it == cache.end()) it = cache.emplace(std::pair{S, Dh}, cpu::make_rope_table<T>(S, Dh)).first;
    return it->second;  // map nodes are stable
  }

  std::mutex rope_mutex_;
  std::map<std::pair<int64_t, int64_t>, cpu::RopeTable<float>> rope_f32_;
  std::map<std::pair<int64_t, int64_t>, cpu::RopeTable<double>> rope_f64_;
};

}  // namespace

Tensor Backend::zeros(const Shape& shape, DType dtype) {
  Tensor t = alloc(shape, dtype);
  fill(t, 0.0);
  return t;
}

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace sy
