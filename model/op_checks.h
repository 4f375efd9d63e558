// Argument checks for the Backend's ops. Each op's contract (model/backend.h) is checked once, in
// its public Backend method (model/op_checks.cpp), before the backend's virtual runs; a backend
// uses OpCheck only for what is specific to its device (dtypes it cannot compute in, index
// ranges it can read on the host, i32 limits and overlap rules of its kernels).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "model/tensor.h"

namespace sy {

class Backend;

// A checked tensor's name, joined only when a check fails: the optimizer's and the norm's checks
// name hundreds of tensors a step ("layers/3/attn/wq grad"), and building each name eagerly put
// ~0.1 ms of host work a step between the gradient norm's read and the update's launch.
class CheckName {
 public:
  CheckName(const char* name) : head_(name) {}  // NOLINT(google-explicit-constructor)
  CheckName(const std::string& head, const char* tail) : head_(head), tail_(tail) {}
  std::string str() const { return std::string(head_) + tail_; }

 private:
  std::string_view head_;
  const char* tail_ = "";
};

// The checks of one call of one op. Every failure throws std::runtime_error("<where>: <what>"),
// <where> being backend.error_context(op): "cpu gemm", "cuda gemm (rank 0, device 0)".
class OpCheck {
 public:
  OpCheck(const Backend& backend, const char* op) : backend_(backend), op_(op) {}

  [[noreturn]] void fail(const std::string& message) const;

  // Defined, on the backend's device, with data unless empty.
  void on_device(const Tensor& t, CheckName name) const;
  // On the device and a float dtype (f32, f64 or bf16); returns it.
  DType float_dtype(const Tensor& t, CheckName name) const;
  // On the device and f32 or f64 (router, optimizer state, gradient tables); returns it.
  DType wide_dtype(const Tensor& t, CheckName name) const;
  // Master weights: f32, f64 or f32_split; returns their host dtype (f32 for f32_split).
  DType master_dtype(const Tensor& t, CheckName name) const;
  // On the device and of `dtype`.
  void dtype(const Tensor& t, DType dtype, CheckName name) const;
  void shape(const Tensor& t, const Shape& shape, CheckName name) const;
  void ndim(const Tensor& t, int n, CheckName name) const;
  void numel(const Tensor& t, int64_t n, CheckName name) const;
  void positive(int64_t value, CheckName name) const;
  void fits_int(int64_t value, CheckName name) const;  // value <= INT32_MAX

 private:
  const Backend& backend_;
  const char* op_;
};

// Whether the bytes of a and b overlap (both non-empty).
bool overlaps(const Tensor& a, const Tensor& b);

// The contracts of the ops that stay virtual (Backend::router_logits, router_logits_backward,
// router_input_grad): every implementation calls these first.
void check_router_logits(const Backend& backend, const Tensor& logits, const Tensor& u,
                         const Tensor& w);
void check_router_logits_backward(const Backend& backend, const Tensor& dw, const Tensor& du,
                                  const Tensor& dlogits, const Tensor& u, const Tensor& w);
void check_router_input_grad(const Backend& backend, const Tensor& dx, const Tensor& dx_perm,
                             const Tensor& slot_row, int64_t K, const Tensor& dlogits,
                             const Tensor& w);

}  // namespace sy
