// The CPU reference backend: dispatches on the dtype to the kernel templates of cpu_kernels.h
// (f32 and f64; bf16 is not supported on the CPU). The ops' contracts are checked before these
// run (model/op_checks.cpp); here only what the CPU adds: f32 or f64 data, indices in range (read
// on the host), OpenBLAS's int dimensions.
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
#include "model/op_checks.h"

namespace sy {
namespace {

// ---- what the CPU adds to the contracts ----------------------------------------------------
// The dtype the CPU computes t in: f32 or f64.
DType host_float(const OpCheck& c, const Tensor& t, const char* name) {
  if (t.dtype() == DType::bf16) throw std::runtime_error("cpu backend: bf16 not supported");
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
    c.fail(std::string(name) + " must be f32 or f64, got " + dtype_name(t.dtype()));
  return t.dtype();
}

// Every entry of the i32 tensor idx (first n entries) lies in [lo, hi).
void index_range(const OpCheck& c, const Tensor& idx, int64_t n, int64_t lo, int64_t hi,
                 const char* name) {
  const int32_t* p = idx.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < lo || p[i] >= hi)
      c.fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
             " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
}

// OpenBLAS takes int dimensions.
void fits_blas(const OpCheck& c, std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) c.fits_int(d, "dimension");
}

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

// ---- the backend ----------------------------------------------------------------------------
template <class T>
const T* bias_ptr(const Tensor& bias) {
  return bias.defined() ? bias.ptr<T>() : nullptr;
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu"; }

 protected:
  // ---- memory ---------------------------------------------------------------------------------
  Tensor alloc_impl(const Shape& shape, DType dtype) override {
    if (dtype == DType::bf16) throw std::runtime_error("cpu backend: bf16 not supported");
    constexpr size_t kAlign = 64;
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    const size_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    void* data = std::aligned_alloc(kAlign, rounded);
    if (!data)
      OpCheck(*this, "alloc").fail("out of memory allocating " + std::to_string(bytes) + " bytes");
    std::shared_ptr<void> buffer(data, std::free);
    return Tensor(std::move(buffer), data, shape, dtype, Device::cpu);
  }

  void fill_impl(const Tensor& x, double value) override {
    dispatch_any(x.dtype(), [&]<class T>(T) {
      cpu::fill(x.ptr<T>(), x.numel(), static_cast<T>(value));
    });
  }

  void copy_impl(const Tensor& dst, const Tensor& src) override {
    if (dst.data() == src.data() && dst.dtype() == src.dtype()) return;
    if (dst.dtype() == src.dtype()) {
      std::memmove(dst.data(), src.data(), src.nbytes());
      return;
    }
    dispatch_any(dst.dtype(), [&]<class D>(D) {
      dispatch_any(src.dtype(), [&]<class S>(S) {
        cpu::convert(dst.ptr<D>(), src.ptr<S>(), src.numel());
      });
    });
  }

  void write_impl(const Tensor& t, std::span<const float> h) override { write_host(t, h); }
  void write_impl(const Tensor& t, std::span<const double> h) override { write_host(t, h); }
  void write_impl(const Tensor& t, std::span<const int32_t> h) override { write_host(t, h); }

  std::vector<double> read_impl(const Tensor& src) override {
    std::vector<double> out(src.numel());
    dispatch_any(src.dtype(), [&]<class T>(T) {
      cpu::convert(out.data(), src.ptr<T>(), src.numel());
    });
    return out;
  }

  void copy_to_host_impl(void* host, const Tensor& src) override {
    if (src.nbytes()) std::memcpy(host, src.data(), src.nbytes());
  }
  void copy_from_host_impl(const Tensor& dst, const void* host) override {
    if (dst.nbytes()) std::memcpy(dst.data(), host, dst.nbytes());
  }

  std::vector<int32_t> read_i32_impl(const Tensor& src) override {
    const int32_t* p = src.ptr<int32_t>();
    return std::vector<int32_t>(p, p + src.numel());
  }

  // ---- linear algebra -------------------------------------------------------------------------
  void gemm_impl(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                 double alpha, double beta) override {
    const OpCheck c(*this, "gemm");
    const DType dt = host_float(c, A, "A");  // B and C follow
    const int64_t M = C.dim(0), N = C.dim(1);
    const int64_t K = trans_a ? A.dim(0) : A.dim(1);
    fits_blas(c, {M, N, K});
    dispatch_float(dt, [&]<class T>(T) {
      cpu::gemm(C.ptr<T>(), A.ptr<T>(), trans_a, B.ptr<T>(), trans_b, M, N, K,
                static_cast<T>(alpha), static_cast<T>(beta));
    });
  }

  void add_impl(const Tensor& y, const Tensor& x, double alpha) override {
    const OpCheck c(*this, "add");
    const DType dt = host_float(c, y, "y");
    c.dtype(x, dt, "x");  // no converting add on the CPU
    dispatch_float(dt, [&]<class T>(T) {
      cpu::add(y.ptr<T>(), x.ptr<T>(), y.numel(), static_cast<T>(alpha));
    });
  }

  void scale_impl(const Tensor& y, double alpha) override {
    const DType dt = host_float(OpCheck(*this, "scale"), y, "y");
    dispatch_float(dt, [&]<class T>(T) { cpu::scale(y.ptr<T>(), y.numel(), static_cast<T>(alpha)); });
  }

  double sum_squares_impl(const Tensor& x) override {
    const DType dt = host_float(OpCheck(*this, "sum_squares"), x, "x");
    return dispatch_float(dt, [&]<class T>(T) { return cpu::sum_squares(x.ptr<T>(), x.numel()); });
  }

  // ---- embedding ------------------------------------------------------------------------------
  void embedding_forward_impl(const Tensor& out, const Tensor& tokens,
                              const Tensor& table) override {
    const OpCheck c(*this, "embedding_forward");
    const DType dt = host_float(c, table, "table");
    c.dtype(out, dt, "out");
    const int64_t N = tokens.numel(), V = table.dim(0), D = table.dim(1);
    index_range(c, tokens, N, 0, V, "tokens");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::embedding_forward(out.ptr<T>(), tokens.ptr<int32_t>(), table.ptr<T>(), N, D);
    });
  }

  void embedding_backward_impl(const Tensor& dtable, const Tensor& dout,
                               const Tensor& tokens) override {
    const OpCheck c(*this, "embedding_backward");
    const DType dt = dtable.dtype();
    c.dtype(dout, dt, "dout");
    const int64_t N = tokens.numel(), V = dtable.dim(0), D = dtable.dim(1);
    index_range(c, tokens, N, 0, V, "tokens");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::embedding_backward(dtable.ptr<T>(), dout.ptr<T>(), tokens.ptr<int32_t>(), N, D);
    });
  }

  // ---- RMSNorm --------------------------------------------------------------------------------
  void rmsnorm_forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x,
                            const Tensor& gain) override {
    const DType dt = host_float(OpCheck(*this, "rmsnorm_forward"), x, "x");
    const int64_t D = x.dim(-1), N = x.numel() / D;
    dispatch_float(dt, [&]<class T>(T) {
      cpu::rmsnorm_forward(out.ptr<T>(), rstd.ptr<T>(), x.ptr<T>(), gain.ptr<T>(), N, D);
    });
  }

  void rmsnorm_backward_impl(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                             const Tensor& x, const Tensor& gain, const Tensor& rstd) override {
    const DType dt = host_float(OpCheck(*this, "rmsnorm_backward"), x, "x");
    const int64_t D = x.dim(-1), N = x.numel() / D;
    dispatch_float(dt, [&]<class T>(T) {
      cpu::rmsnorm_backward(dx.ptr<T>(), dgain.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), gain.ptr<T>(),
                            rstd.ptr<T>(), N, D);
    });
  }

  // ---- attention ------------------------------------------------------------------------------
  void rope_forward_impl(const Tensor& x, int64_t B, int64_t S, int64_t H) override {
    rope("rope_forward", x, B, S, H, +1);
  }

  void rope_backward_impl(const Tensor& dx, int64_t B, int64_t S, int64_t H) override {
    rope("rope_backward", dx, B, S, H, -1);
  }

  void attention_forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q,
                              const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                              int64_t H) override {
    const OpCheck c(*this, "attention_forward");
    const DType dt = host_float(c, q, "q");
    const int64_t Dh = q.dim(1) / H;
    fits_blas(c, {S, H * Dh});
    dispatch_float(dt, [&]<class T>(T) {
      cpu::attention_forward(out.ptr<T>(), probs.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), B,
                             S, H, Dh);
    });
  }

  void attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                               const Tensor& dout, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                               int64_t H) override {
    const OpCheck c(*this, "attention_backward");
    const DType dt = host_float(c, q, "q");
    const int64_t Dh = q.dim(1) / H;
    fits_blas(c, {S, H * Dh});
    dispatch_float(dt, [&]<class T>(T) {
      cpu::attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(), q.ptr<T>(),
                              k.ptr<T>(), v.ptr<T>(), probs.ptr<T>(), B, S, H, Dh);
    });
  }

  void flash_attention_forward_impl(const Tensor& out, const Tensor& lse, const Tensor& q,
                                    const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                    int64_t H) override {
    const DType dt = host_float(OpCheck(*this, "flash_attention_forward"), q, "q");
    const int64_t Dh = q.dim(1) / H;
    dispatch_float(dt, [&]<class T>(T) {
      cpu::flash_attention_forward(out.ptr<T>(), lse.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(),
                                   B, S, H, Dh);
    });
  }

  void flash_attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                     const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     int64_t B, int64_t S, int64_t H) override {
    const DType dt = host_float(OpCheck(*this, "flash_attention_backward"), q, "q");
    const int64_t Dh = q.dim(1) / H;
    dispatch_float(dt, [&]<class T>(T) {
      cpu::flash_attention_backward(dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(), dout.ptr<T>(),
                                    q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(),
                                    B, S, H, Dh);
    });
  }

  // ---- SwiGLU ---------------------------------------------------------------------------------
  void swiglu_forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) override {
    const DType dt = host_float(OpCheck(*this, "swiglu_forward"), a, "a");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::swiglu_forward(out.ptr<T>(), a.ptr<T>(), b.ptr<T>(), a.numel());
    });
  }

  void swiglu_backward_impl(const Tensor& da, const Tensor& db, const Tensor& dout,
                            const Tensor& a, const Tensor& b, const Tensor& hidden) override {
    const DType dt = host_float(OpCheck(*this, "swiglu_backward"), a, "a");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::swiglu_backward(da.ptr<T>(), db.ptr<T>(), dout.ptr<T>(), a.ptr<T>(), b.ptr<T>(),
                           hidden.defined() ? hidden.ptr<T>() : nullptr, a.numel());
    });
  }

  // ---- cross-entropy --------------------------------------------------------------------------
  void cross_entropy_impl(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                          bool compute_grad, double grad_scale) override {
    const OpCheck c(*this, "cross_entropy");
    const DType dt = host_float(c, logits, "logits");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    index_range(c, targets, N, 0, V, "targets");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::cross_entropy(losses.ptr<T>(), logits.ptr<T>(), targets.ptr<int32_t>(), N, V,
                         compute_grad, static_cast<T>(grad_scale));
    });
  }

  // ---- router ---------------------------------------------------------------------------------
  void router_scores_topk_impl(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                               const Tensor& gates, const Tensor& logits,
                               const Tensor& expert_bias, const RoutingRule& rule) override {
    const DType dt = logits.dtype();
    const int64_t N = logits.dim(0), E = logits.dim(1);
    dispatch_float(dt, [&]<class T>(T) {
      cpu::router_scores_topk(scores.ptr<T>(), lse.ptr<T>(), topk_idx.ptr<int32_t>(),
                              gates.ptr<T>(), logits.ptr<T>(), bias_ptr<T>(expert_bias), N, E,
                              rule);
    });
  }

  RouterPlanCounts router_plan_impl(const Tensor& slot_row, const Tensor& row_slot,
                                    const Tensor& slot_expert,
                                    const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                    const Tensor& gates, const Tensor& logits,
                                    const Tensor& expert_bias, const RoutingRule& rule) override {
    const OpCheck c(*this, "router_plan");
    const DType dt = logits.dtype();
    const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1);
    index_range(c, topk_idx, N * K, 0, E, "topk_idx");
    RouterPlanCounts counts;
    counts.tokens_per_expert = dispatch_float(dt, [&]<class T>(T) {
      return cpu::router_plan_counts(slot_row.ptr<int32_t>(), slot_expert.ptr<int32_t>(),
                                     assignments_per_expert.ptr<int32_t>(),
                                     topk_idx.ptr<int32_t>(), gates.ptr<T>(), logits.ptr<T>(),
                                     bias_ptr<T>(expert_bias), N, E, rule,
                                     &counts.rerouted);
    });
    int64_t rows = 0;  // row_slot need only hold the kept rows
    for (int64_t n : counts.tokens_per_expert) rows += n;
    if (rows > row_slot.numel())
      c.fail("row_slot holds " + std::to_string(row_slot.numel()) + " rows, " +
             std::to_string(rows) + " kept");
    cpu::router_plan_rows(slot_row.ptr<int32_t>(), row_slot.ptr<int32_t>(),
                          slot_expert.ptr<int32_t>(), counts.tokens_per_expert, N, K);
    return counts;
  }

  RouterLossValues router_losses_impl(const Tensor& scores, const Tensor& lse,
                                      const Tensor& balance_counts,
                                      const RoutingRule& rule) override {
    const int64_t N = scores.dim(0), E = scores.dim(1);
    const cpu::RouterLosses l = dispatch_float(scores.dtype(), [&]<class T>(T) {
      return cpu::router_losses(scores.ptr<T>(), lse.ptr<T>(), balance_counts.ptr<int32_t>(), N,
                                E, rule);
    });
    return {l.aux, l.z, l.entropy};
  }

  void router_backward_impl(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                            const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                            const Tensor& balance_counts, const RoutingRule& rule, double d_aux,
                            double d_z) override {
    const int64_t N = scores.dim(0), E = scores.dim(1), K = rule.top_k;
    index_range(OpCheck(*this, "router_backward"), topk_idx, N * K, 0, E, "topk_idx");
    dispatch_float(scores.dtype(), [&]<class T>(T) {
      cpu::router_backward(dlogits.ptr<T>(), dgates.ptr<T>(), scores.ptr<T>(), lse.ptr<T>(),
                           logits.ptr<T>(), topk_idx.ptr<int32_t>(),
                           balance_counts.ptr<int32_t>(), N, E, rule, d_aux, d_z);
    });
  }

  // ---- permute / unpermute --------------------------------------------------------------------
  void permute_rows_impl(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot,
                         int64_t K) override {
    const OpCheck c(*this, "permute_rows");
    const DType dt = host_float(c, x, "x");
    const int64_t N = x.dim(0), D = x.dim(1), R = x_perm.dim(0);
    index_range(c, row_slot, R, 0, N * K, "row_slot");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::permute_rows(x_perm.ptr<T>(), x.ptr<T>(), row_slot.ptr<int32_t>(), R, D, K);
    });
  }

  void permute_rows_backward_impl(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                                  int64_t K) override {
    const OpCheck c(*this, "permute_rows_backward");
    const DType dt = host_float(c, dx, "dx");
    const int64_t N = dx.dim(0), D = dx.dim(1), R = dx_perm.dim(0);
    index_range(c, slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::permute_rows_backward(dx.ptr<T>(), dx_perm.ptr<T>(), slot_row.ptr<int32_t>(), N, D, K);
    });
  }

  void unpermute_combine_impl(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                              const Tensor& slot_row) override {
    const OpCheck c(*this, "unpermute_combine");
    const DType dt = host_float(c, out, "out");
    const int64_t N = out.dim(0), D = out.dim(1), R = y_perm.dim(0), K = gates.dim(1);
    index_range(c, slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::unpermute_combine(out.ptr<T>(), y_perm.ptr<T>(), gates.ptr<T>(), slot_row.ptr<int32_t>(),
                             N, D, K);
    });
  }

  void unpermute_combine_backward_impl(const Tensor& dy_perm, const Tensor& dgates,
                                       const Tensor& dout, const Tensor& y_perm,
                                       const Tensor& gates, const Tensor& slot_row) override {
    const OpCheck c(*this, "unpermute_combine_backward");
    const DType dt = host_float(c, dout, "dout");
    const int64_t N = dout.dim(0), D = dout.dim(1), R = y_perm.dim(0), K = gates.dim(1);
    index_range(c, slot_row, N * K, -1, R, "slot_row");
    dispatch_float(dt, [&]<class T>(T) {
      cpu::unpermute_combine_backward(dy_perm.ptr<T>(), dgates.ptr<T>(), dout.ptr<T>(),
                                      y_perm.ptr<T>(), gates.ptr<T>(), slot_row.ptr<int32_t>(), N,
                                      R, D, K);
    });
  }

  // ---- optimizer ------------------------------------------------------------------------------
  void adamw_update_impl(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                         const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step) override {
    dispatch_float(param.dtype(), [&]<class T>(T) {
      cpu::adamw_update(param.ptr<T>(), grad.ptr<T>(), exp_avg.ptr<T>(), exp_avg_sq.ptr<T>(),
                        param.numel(), lr, beta1, beta2, eps, weight_decay, step);
    });
  }

  void sgd_update_impl(const Tensor& param, const Tensor& grad, double lr) override {
    dispatch_float(param.dtype(), [&]<class T>(T) {
      cpu::sgd_update(param.ptr<T>(), grad.ptr<T>(), param.numel(), static_cast<T>(lr));
    });
  }

 private:
  template <class H>
  void write_host(const Tensor& dst, std::span<const H> host) {
    dispatch_any(dst.dtype(), [&]<class T>(T) {
      cpu::convert(dst.ptr<T>(), host.data(), dst.numel());
    });
  }

  void rope(const char* op, const Tensor& x, int64_t B, int64_t S, int64_t H, int sign) {
    const DType dt = host_float(OpCheck(*this, op), x, "x");
    const int64_t Dh = x.dim(1) / H;
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

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace sy
