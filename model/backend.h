// The Backend: every op a layer needs, on one device. Layers see only this interface; the CPU
// backend (model/cpu/) is the reference that the CUDA backend is tested against, op by op.
//
// Conventions: tensors are row-major; token t of a micro-batch is t = b*S + s.
// Parameter gradients accumulate (+=), so that micro-batches add up; activation gradients are
// overwritten (=). Index tensors are i32.
//
// Dtypes. The CPU backend computes in f32 or f64 and wants every float operand of an op in one
// dtype. The CUDA backend (model/cuda/, docs/cuda.md) also takes bf16 data, and then the
// statistics and master-side operands of an op are in stat_dtype(data) = f32: rstd, lse, the
// cross-entropy losses, router logits/probs/gates/dgates, norm gains and their gradients,
// embedding-table gradients. Where an op below says "stat", that operand is in stat_dtype of the
// data dtype (for f32 and f64 data: the data's own dtype, as on the CPU). GEMMs take A and B in
// one dtype and C in that dtype, or C in f32 with bf16 A and B (fp32 accumulation always);
// copy and add convert between any float dtypes on CUDA.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/tensor.h"

namespace sy {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The device's highest memory use so far, in bytes (0 where not tracked, e.g. the CPU).
  virtual size_t peak_memory_bytes() const { return 0; }
  // The accelerator this backend runs on (its CUDA device ordinal); -1 on the CPU.
  virtual int device_index() const { return -1; }
  // The stream that every op of this backend is ordered on (a cudaStream_t on CUDA), for
  // stream-ordered communication (NCCL); nullptr on the CPU.
  virtual void* native_stream() { return nullptr; }
  // Waits until every op issued so far has finished (timing; a no-op on the CPU).
  virtual void synchronize() {}

  // ---- memory -------------------------------------------------------------------------------
  virtual Tensor alloc(const Shape& shape, DType dtype) = 0;  // uninitialised
  Tensor zeros(const Shape& shape, DType dtype);
  virtual void fill(const Tensor& x, double value) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;  // same numel; converts dtype
  // Host transfers, converting to/from the tensor's dtype. Sizes must equal numel().
  virtual void write(const Tensor& dst, std::span<const float> host) = 0;
  virtual void write(const Tensor& dst, std::span<const double> host) = 0;
  virtual void write(const Tensor& dst, std::span<const int32_t> host) = 0;
  virtual std::vector<double> read(const Tensor& src) = 0;
  virtual std::vector<int32_t> read_i32(const Tensor& src) = 0;
  // Raw byte copies between a tensor and host memory of nbytes() (communication staging).
  virtual void copy_to_host(void* host, const Tensor& src) = 0;
  virtual void copy_from_host(const Tensor& dst, const void* host) = 0;

  // ---- linear algebra -----------------------------------------------------------------------
  // C[M,N] = alpha * op(A) @ op(B) + beta * C, op = transpose where asked. 2-D tensors.
  virtual void gemm(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                    double alpha, double beta) = 0;
  virtual void add(const Tensor& y, const Tensor& x, double alpha) = 0;  // y += alpha * x
  virtual void scale(const Tensor& y, double alpha) = 0;                 // y *= alpha
  virtual double sum_squares(const Tensor& x) = 0;                       // accumulated in f64
  // out[i] = sum_squares(xs[i]) for every tensor, with one host synchronisation on a device.
  virtual void sum_squares_many(std::span<const Tensor> xs, std::span<double> out) {
    for (size_t i = 0; i < xs.size(); ++i) out[i] = sum_squares(xs[i]);
  }

  // ---- embedding ----------------------------------------------------------------------------
  // out[T,D] = table[tokens[t]]; backward: dtable[tokens[t]] += dout[t] (dtable stat of dout).
  virtual void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) = 0;
  virtual void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) = 0;

  // ---- RMSNorm: out = x * rstd * gain, rstd[T] = 1/sqrt(mean(x^2) + 1e-5) ---------------------
  // rstd, gain and dgain are stat.
  virtual void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x,
                               const Tensor& gain) = 0;
  // dx = (overwritten); dgain += .
  virtual void rmsnorm_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                                const Tensor& x, const Tensor& gain, const Tensor& rstd) = 0;

  // ---- attention ----------------------------------------------------------------------------
  // Rotary embedding in place on x[B*S, H*Dh] (rotate-half, theta 10000); backward applies the
  // inverse rotation to the gradient in place.
  virtual void rope_forward(const Tensor& x, int64_t B, int64_t S, int64_t H) = 0;
  virtual void rope_backward(const Tensor& dx, int64_t B, int64_t S, int64_t H) = 0;
  // Causal softmax attention per (batch, head). q,k,v,out: [B*S, H*Dh]; probs: [B, H, S, S]
  // (saved for backward; entries above the diagonal are 0).
  virtual void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q,
                                 const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                 int64_t H) = 0;
  virtual void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                  const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                                  int64_t H) = 0;

  // ---- SwiGLU: out = silu(a) * b ------------------------------------------------------------
  virtual void swiglu_forward(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
  virtual void swiglu_backward(const Tensor& da, const Tensor& db, const Tensor& dout,
                               const Tensor& a, const Tensor& b) = 0;

  // ---- cross-entropy ------------------------------------------------------------------------
  // losses[T] (stat) = logsumexp(logits[t]) - logits[t, targets[t]]. If compute_grad, logits is
  // overwritten in place with dlogits = (softmax - onehot) * grad_scale.
  virtual void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                             bool compute_grad, double grad_scale) = 0;

  // ---- router (SPEC.md section 2) -----------------------------------------------------------
  // The router's float tensors are all of one dtype (f32 in training: the router is fp32
  // everywhere; f64 in gradient checks).
  // probs[T,E] = softmax(logits); lse[T] = logsumexp(logits); topk_idx[T,K] = the K largest
  // logits (ties: lower index first), largest first; gates[T,K] as SPEC (normalised or not).
  virtual void router_softmax_topk(const Tensor& probs, const Tensor& lse, const Tensor& topk_idx,
                                   const Tensor& gates, const Tensor& logits, int64_t K,
                                   bool normalize) = 0;
  // Capacity and the permutation. For each expert, assignments ranked by (choice k, token t);
  // the first `capacity` kept (capacity < 0: all). Outputs:
  //   slot_row[T*K]: the permuted row of assignment (t, k), or -1 if dropped;
  //   row_slot[N]: the assignment t*K+k of each permuted row; rows grouped by expert, ascending,
  //                and within an expert by token t;
  //   assignments_per_expert[E]: counted before drops (for f_e and expert_load).
  // Returns tokens_per_expert[E] (kept) on the host: the one count that must cross to the host.
  virtual std::vector<int64_t> router_plan(const Tensor& slot_row, const Tensor& row_slot,
                                           const Tensor& assignments_per_expert,
                                           const Tensor& topk_idx, int64_t E,
                                           int64_t capacity) = 0;
  // aux = E * sum_e f_e * P_e, z = mean_t lse_t^2 (section 2), returned on the host.
  virtual void router_losses(double* aux, double* z, const Tensor& probs, const Tensor& lse,
                             const Tensor& assignments_per_expert, int64_t K) = 0;
  // dlogits[T,E] (=) from the gate gradients dgates[T,K] (through p and the top-k
  // normalisation), plus d_aux * d(aux)/dlogits and d_z * d(z)/dlogits.
  virtual void router_backward(const Tensor& dlogits, const Tensor& dgates, const Tensor& probs,
                               const Tensor& lse, const Tensor& topk_idx,
                               const Tensor& assignments_per_expert, int64_t K, bool normalize,
                               double d_aux, double d_z) = 0;

  // ---- permute / unpermute ------------------------------------------------------------------
  // x_perm[r] = x[row_slot[r] / K]
  virtual void permute_rows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot,
                            int64_t K) = 0;
  // dx[t] (=) sum over kept k of dx_perm[slot_row[t*K+k]]
  virtual void permute_rows_backward(const Tensor& dx, const Tensor& dx_perm,
                                     const Tensor& slot_row, int64_t K) = 0;
  // out[t] (=) sum over kept k of gates[t,k] * y_perm[slot_row[t*K+k]]   (gates, dgates: stat)
  virtual void unpermute_combine(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                                 const Tensor& slot_row) = 0;
  // dy_perm[row(t,k)] (=) gates[t,k] * dout[t];  dgates[t,k] (=) <dout[t], y_perm[row(t,k)]>
  // (0 for dropped assignments).
  virtual void unpermute_combine_backward(const Tensor& dy_perm, const Tensor& dgates,
                                          const Tensor& dout, const Tensor& y_perm,
                                          const Tensor& gates, const Tensor& slot_row) = 0;

  // ---- optimizer ----------------------------------------------------------------------------
  // AdamW (torch semantics; SPEC.md section 4); `step` is 1-based for bias correction.
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                            const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                            double eps, double weight_decay, int64_t step) = 0;
  virtual void sgd_update(const Tensor& param, const Tensor& grad, double lr) = 0;
};

// The reference backend. `threads` limits BLAS threads (0: leave as is).
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace sy
