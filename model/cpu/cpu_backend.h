// The CPU reference backend (f32 and f64; bf16 is not supported on the CPU). Each op family's
// CpuBackend::<op>_impl is defined in model/cpu/<family>.cpp beside that family's kernels;
// cpu_backend.cpp holds the rest (memory, host transfers, the helpers below). The ops' contracts
// are checked before these run (model/op_checks.cpp); an <op>_impl checks only what the CPU adds:
// f32 or f64 data, indices in range (read on the host), OpenBLAS's int dimensions.
#pragma once
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/op_checks.h"

namespace sy {
namespace cpu {

// ---- what the CPU adds to the contracts (cpu_backend.cpp) -----------------------------------
// The dtype the CPU computes t in: f32 or f64.
DType host_float(const OpCheck& c, const Tensor& t, const char* name);

// Every entry of the i32 tensor idx (first n entries) lies in [lo, hi).
void index_range(const OpCheck& c, const Tensor& idx, int64_t n, int64_t lo, int64_t hi,
                 const char* name);

// OpenBLAS takes int dimensions.
void fits_blas(const OpCheck& c, std::initializer_list<int64_t> dims);

// Document masking's doc_start [B*S] (model/backend.h), its values checked (0 <= doc_start[t]
// <= s, and one document's tokens share their start: doc_start[t] = doc_start[t - 1] unless
// doc_start[t] = s); null when undefined.
const int32_t* checked_doc_start(const OpCheck& c, const Tensor& doc_start, int64_t B, int64_t S);
// The flash ops' DocumentList, when defined, against the documents of the checked doc_start
// `starts`: the CPU works from doc_start alone, and refuses a list that disagrees with it.
void check_documents_listed(const OpCheck& c, const DocumentList& documents, const int32_t* starts,
                            int64_t B, int64_t S);

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

// Rotary cos/sin tables [S, Dh/2] (model/cpu/attention.cpp), cached by the backend.
template <class T>
struct RopeTable {
  std::vector<T> cos, sin;
};

}  // namespace cpu

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu"; }

  // Bytes of this backend's tensors alive now, and the most at once since the last reset (for
  // the tests of the training step's memory plan; not Backend::peak_memory_bytes, which the
  // metrics report for devices only).
  size_t live_bytes() const { return memory_->live; }
  size_t peak_live_bytes() const { return memory_->peak; }
  void reset_peak_live_bytes() { memory_->peak = memory_->live.load(); }
  // Fills every new tensor with all-ones bytes (NaN in f32 and f64) instead of leaving it as
  // malloc returned it: a test's way to catch an op that reads memory nobody wrote.
  void poison_new_tensors(bool on) { poison_ = on; }

 protected:
  // ---- memory and host transfers (cpu_backend.cpp) --------------------------------------------
  Tensor alloc_impl(const Shape& shape, DType dtype) override;
  void write_impl(const Tensor& t, std::span<const float> h) override;
  void write_impl(const Tensor& t, std::span<const double> h) override;
  void write_impl(const Tensor& t, std::span<const int32_t> h) override;
  std::vector<double> read_impl(const Tensor& src) override;
  std::vector<int32_t> read_i32_impl(const Tensor& src) override;
  void copy_to_host_impl(void* host, const Tensor& src) override;
  void copy_from_host_impl(const Tensor& dst, const void* host) override;

  // ---- elementwise.cpp ------------------------------------------------------------------------
  void fill_impl(const Tensor& x, double value) override;
  void copy_impl(const Tensor& dst, const Tensor& src) override;
  void add_impl(const Tensor& y, const Tensor& x, double alpha) override;
  void scale_impl(const Tensor& y, double alpha) override;
  double sum_squares_impl(const Tensor& x) override;

  // ---- gemm.cpp -------------------------------------------------------------------------------
  void gemm_impl(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                 double alpha, double beta) override;

  // ---- embedding.cpp --------------------------------------------------------------------------
  void embedding_forward_impl(const Tensor& out, const Tensor& tokens,
                              const Tensor& table) override;
  void embedding_backward_impl(const Tensor& dtable, const Tensor& dout,
                               const Tensor& tokens) override;

  // ---- rmsnorm.cpp ----------------------------------------------------------------------------
  void rmsnorm_forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x,
                            const Tensor& gain, double eps) override;
  void rmsnorm_backward_impl(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                             const Tensor& x, const Tensor& gain, const Tensor& rstd,
                             bool accumulate) override;

  // ---- attention.cpp (rotary embedding and attention) -----------------------------------------
  void rope_forward_impl(const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                         const Tensor& doc_start, int64_t first_position) override;
  void rope_backward_impl(const Tensor& dx, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                          const Tensor& doc_start) override;
  void repeat_kv_heads_impl(const Tensor& out, const Tensor& x, int64_t kv_heads) override;
  void repeat_kv_heads_backward_impl(const Tensor& dx, const Tensor& dout,
                                     int64_t kv_heads) override;
  void attention_forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q,
                              const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                              const Tensor& doc_start) override;
  void attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                               const Tensor& dout, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                               int64_t H) override;

  // ---- attention_decode.cpp -------------------------------------------------------------------
  void attention_decode_impl(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                             int64_t H, int64_t first_position) override;

  // ---- flash_attention.cpp --------------------------------------------------------------------
  void flash_attention_forward_impl(const Tensor& out, const Tensor& lse, const Tensor& q,
                                    const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                    int64_t H, const Tensor& doc_start,
                                    const DocumentList& documents) override;
  void flash_attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                     const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     int64_t B, int64_t S, int64_t H, const Tensor& doc_start,
                                     const DocumentList& documents) override;

  // ---- swiglu.cpp -----------------------------------------------------------------------------
  void swiglu_forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void swiglu_backward_impl(const Tensor& da, const Tensor& db, const Tensor& dout,
                            const Tensor& a, const Tensor& b, const Tensor& hidden) override;

  // ---- cross_entropy.cpp ----------------------------------------------------------------------
  void cross_entropy_impl(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                          bool compute_grad, double grad_scale) override;

  // ---- router.cpp -----------------------------------------------------------------------------
  void router_scores_topk_impl(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                               const Tensor& gates, const Tensor& logits,
                               const Tensor& expert_bias, const RoutingRule& rule) override;
  RouterPlanCounts router_plan_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                    const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                    const Tensor& gates, const Tensor& logits,
                                    const Tensor& expert_bias, const RoutingRule& rule) override;
  RouterLossValues router_losses_impl(const Tensor& scores, const Tensor& lse,
                                      const Tensor& balance_counts,
                                      const RoutingRule& rule) override;
  void router_backward_impl(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                            const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                            const Tensor& balance_counts, const RoutingRule& rule, double d_aux,
                            double d_z) override;

  // ---- permute.cpp ----------------------------------------------------------------------------
  void permute_rows_impl(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                         int64_t K) override;
  void permute_rows_backward_impl(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                                  int64_t K) override;
  void unpermute_combine_impl(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                              const Tensor& slot_row) override;
  void unpermute_combine_backward_impl(const Tensor& dy_perm, const Tensor& dgates,
                                       const Tensor& dout, const Tensor& y_perm,
                                       const Tensor& gates, const Tensor& slot_row) override;

  // ---- adamw.cpp ------------------------------------------------------------------------------
  void adamw_update_impl(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                         const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step) override;
  void sgd_update_impl(const Tensor& param, const Tensor& grad, double lr) override;

 private:
  template <class H>
  void write_host(const Tensor& dst, std::span<const H> host);  // cpu_backend.cpp

  // attention.cpp: rotates x in place by +a (sign 1) or -a (sign -1), with the cached table,
  // positions from first_position.
  void rope(const char* op, const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
            int sign, const Tensor& doc_start, int64_t first_position = 0);
  template <class T>
  const cpu::RopeTable<T>& rope_table(int64_t S, int64_t Dh, const Rotary& rotary);

  struct LiveMemory {
    std::atomic<size_t> live{0}, peak{0};
  };
  // Shared with every buffer's deleter: a tensor may outlive its backend.
  std::shared_ptr<LiveMemory> memory_ = std::make_shared<LiveMemory>();
  bool poison_ = false;

  // cos/sin tables cached per (S, Dh) and dtype.
  std::mutex rope_mutex_;
  // Keyed by (S, Dh, rotary).
  std::map<std::tuple<int64_t, int64_t, Rotary>, cpu::RopeTable<float>> rope_f32_;
  std::map<std::tuple<int64_t, int64_t, Rotary>, cpu::RopeTable<double>> rope_f64_;
};

}  // namespace sy
