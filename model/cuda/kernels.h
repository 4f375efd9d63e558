// The CUDA backend's kernel entry points, one group per file of model/cuda/. cuda_backend.cu
// validates shapes and dtypes and then calls these; they trust their arguments and only
// enqueue work on ctx.stream (no host synchronisation unless stated).
#pragma once
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/cuda/common.cuh"
#include "model/cuda/grouped_gemm.h"
#include "model/op_checks.h"

namespace sy::cuda {

// elementwise.cu
void fill(Context& ctx, const Tensor& x, double value);
void convert(Context& ctx, const Tensor& dst, const Tensor& src);  // any dtypes, same numel
void add(Context& ctx, const Tensor& y, const Tensor& x, double alpha);  // any float dtypes
// out = a + b in one pass for 16-byte aligned bf16; false (nothing done) for anything else.
bool add_into(Context& ctx, const Tensor& out, const Tensor& a, const Tensor& b);
void scale(Context& ctx, const Tensor& y, double alpha);
// out[i] (device doubles) = sum of squares of xs[i].
void sum_squares(Context& ctx, std::span<const Tensor> xs, double* out);

// split_float.cu: f32_split tensors (fill and convert hand them over).
void fill_split(Context& ctx, const Tensor& x, double value);
// f32_split to f32_split, f32 to f32_split, f32_split to f32 or bf16 (its high halves).
void convert_split(Context& ctx, const Tensor& dst, const Tensor& src);

// gemm.cu. Row-major C[M,N] = alpha op(A) op(B) + beta C; validated by the caller.
void gemm(Context& ctx, const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B,
          bool trans_b, double alpha, double beta);
// Row-major, strided over `batch` matrices: C_i = alpha op(A_i) op(B_i) + beta C_i.
// A, B of dtype ab; C of dtype c (c == ab, or f32 with bf16 ab).
void gemm_strided_batched(Context& ctx, const char* op, bool trans_a, bool trans_b, int64_t M,
                          int64_t N, int64_t K, double alpha, const void* A, int64_t lda,
                          int64_t stride_a, const void* B, int64_t ldb, int64_t stride_b,
                          double beta, void* C, int64_t ldc, int64_t stride_c, int64_t batch,
                          DType ab, DType c);

// embedding.cu
void embedding_forward(Context& ctx, const Tensor& out, const Tensor& tokens, const Tensor& table);
void embedding_backward(Context& ctx, const Tensor& dtable, const Tensor& dout, const Tensor& tokens);

// rmsnorm.cu
void rmsnorm_forward(Context& ctx, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& gain, double eps);
// false: not a bf16 vector case (the caller runs add_into and rmsnorm_forward).
bool add_rmsnorm_forward(Context& ctx, const Tensor& sum, const Tensor& out, const Tensor& rstd,
                         const Tensor& a, const Tensor& b, const Tensor& gain, double eps);
void rmsnorm_backward(Context& ctx, const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                      const Tensor& x, const Tensor& gain, const Tensor& rstd, bool accumulate);

// attention.cu. cos/sin: [S, Dh/2] tables in stat_dtype(x). doc_start (here and below): null
// for no documents, else Backend's [B*S] on the device (model/backend.h, "Document masking"):
// rotary then takes token t = b*S + s at position s - doc_start[t], attention masks the keys
// before doc_start[t].
void rope(Context& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t B, int64_t S,
          int64_t H, int sign, const int32_t* doc_start = nullptr);
// Both x and x2 (same shape and dtype; x2 may be undefined) rotated in one launch.
void rope(Context& ctx, const Tensor& x, const Tensor& x2, const Tensor& cos, const Tensor& sin,
          int64_t B, int64_t S, int64_t H, int sign, const int32_t* doc_start = nullptr);
// Grouped-query heads (Backend::repeat_kv_heads): x [T, Hkv*Dh] -> out [T, H*Dh], and back
// (the sum over each group, in stat dtype).
void repeat_kv_heads(Context& ctx, const Tensor& out, const Tensor& x, int64_t kv_heads);
void repeat_kv_heads_backward(Context& ctx, const Tensor& dx, const Tensor& dout, int64_t kv_heads);
// The backend's cos/sin tables [S, Dh/2] of s * f_i (model/rope.h) in `dtype` (f32 or f64),
// computed in double on the host as the CPU does, uploaded once per (S, Dh, rotary, dtype) and
// kept.
class RopeTables {
 public:
  const std::pair<Tensor, Tensor>& get(Context& ctx, int64_t S, int64_t Dh, const Rotary& rotary,
                                       DType dtype);
  void clear() { tables_.clear(); }

 private:
  std::map<std::tuple<int64_t, int64_t, Rotary, DType>, std::pair<Tensor, Tensor>> tables_;
};
// probs are 0 left of the query's document too, so attention_backward needs no doc_start.
void attention_forward(Context& ctx, const Tensor& out, const Tensor& probs, const Tensor& q,
                       const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                       const int32_t* doc_start = nullptr);
void attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& probs, int64_t B, int64_t S, int64_t H);

// attention_decode.cu: new queries over a key/value cache (Backend::attention_decode). Uses
// scratch slot A for the scores [n*H, L].
void attention_decode(Context& ctx, const Tensor& out, const Tensor& q, const Tensor& k,
                      const Tensor& v, int64_t H, int64_t first_position);

// flash_attention.cu. Causal attention without [S, S] (backend.h); lse [B, H, S] in
// stat_dtype. Backward uses scratch slot A for D = rowsum(dout * out). doc_start: as above (the
// backward takes the forward's).
void flash_attention_forward(Context& ctx, const Tensor& out, const Tensor& lse, const Tensor& q,
                             const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                             const int32_t* doc_start = nullptr);
void flash_attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                              const int32_t* doc_start = nullptr);

// cudnn_attention.cu. The flash_attention_* contract on cuDNN's fused attention (backend API):
// bf16, Dh a multiple of 8 up to 128, deterministic engines only (but see `deterministic` below).
// Returns false with nothing launched (and the reason in *declined) when cuDNN declines the case:
// no cuDNN in the build or at run time, another dtype or Dh, no deterministic engine; the caller
// then runs the flash kernels. Graphs and plans are cached per context and shape. The forward's
// workspace is scratch slot A; the backward's (dS: 2 x H x S x S bytes a sequence) is a block taken
// for the call, and the backward runs over chunks of sequences (of heads, when one sequence is
// too large) whose dS fits SY_CUDNN_BWD_WORKSPACE_MIB, by default the largest block the
// allocator holds free (at least 128 MiB); chunks give the same bits. deterministic false: dQ
// summed in f32 across key tiles in any order (no dS workspace, one call over the batch, bits that
// may differ run to run); declined like any other case when cuDNN takes no such graph (the caller
// may then ask for the deterministic form).
// `documents` (document masking, Backend's DocumentList): each document runs as a sequence of its
// own in cuDNN's ragged layout, its length the padding mask, so attention costs what the
// documents' own triangles cost. lse keeps the [B, H, S] layout, so either kernel's backward takes
// either forward's lse. Calls take a power of two of documents (padded with empty ones) of at
// most the next power of two of the longest document's tokens (at most S), so that few graphs
// serve a run; the backward's chunks are of documents. Deterministic only (the dQ-accumulating
// form is declined with documents).
struct ListedDocuments {
  const int32_t* offsets =
      nullptr;  // [count + 1] on the device: each document's first row, then B*S
  int64_t count = 0;
  int64_t longest = 0;
};
bool cudnn_attention_forward(Context& ctx, const Tensor& out, const Tensor& lse, const Tensor& q,
                             const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                             const ListedDocuments* documents = nullptr,
                             std::string* declined = nullptr);
bool cudnn_attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                              bool deterministic = true, const ListedDocuments* documents = nullptr,
                              std::string* declined = nullptr);
// Drops ctx's cuDNN handle and plans (before its stream is destroyed).
void cudnn_attention_release(const Context& ctx);

// swiglu.cu
void swiglu_forward(Context& ctx, const Tensor& out, const Tensor& a, const Tensor& b);
void swiglu_backward(Context& ctx, const Tensor& da, const Tensor& db, const Tensor& dout,
                     const Tensor& a, const Tensor& b, const Tensor& hidden);

// cross_entropy.cu
void cross_entropy(Context& ctx, const Tensor& losses, const Tensor& logits,
                   const Tensor& targets, bool compute_grad, double grad_scale);
// The gradient into dlogits (bf16) from f32 logits, which stay as they were; false (nothing done)
// for other dtypes or unaligned rows.
bool cross_entropy_into(Context& ctx, const Tensor& losses, const Tensor& logits,
                        const Tensor& targets, double grad_scale, const Tensor& dlogits);

// router.cu. The router's float tensors are f32 or f64, all of one dtype; expert_bias may be
// undefined (no bias). Semantics as backend.h states them.
void router_scores_topk(Context& ctx, const Tensor& scores, const Tensor& lse,
                        const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                        const Tensor& expert_bias, const RoutingRule& rule);
// Writes slot_row, slot_expert, assignments_per_expert and counts (device i32, 2E + 2
// entries): [0, E) the kept rows per expert after reroutes, E the number rerouted, E + 1 the
// reroute walk's own scratch, [E + 2, 2E + 2) assignments_per_expert again.
void router_plan(Context& ctx, const Tensor& slot_row, const Tensor& slot_expert,
                 const Tensor& assignments_per_expert, const Tensor& topk_idx, const Tensor& gates,
                 const Tensor& logits, const Tensor& expert_bias, const RoutingRule& rule,
                 int32_t* counts);
// out[0] = aux, out[1] = z, out[2] = entropy (device doubles).
void router_losses(Context& ctx, const Tensor& scores, const Tensor& lse,
                   const Tensor& balance_counts, const RoutingRule& rule, double* out);
void router_backward(Context& ctx, const Tensor& dlogits, const Tensor& dgates,
                     const Tensor& scores, const Tensor& lse, const Tensor& logits,
                     const Tensor& topk_idx, const Tensor& balance_counts, const RoutingRule& rule,
                     double d_aux, double d_z);
// The backend's Backend::router_plan_start / finish and router_losses: `check` for what the
// device adds (i32 limits, the reroute walk's expert limit),
// the launches above with their results in scratch slot B, and one host synchronisation each
// (the plan's in finish, which waits for the copy that start enqueued after the launches).
void router_plan_start(Context& ctx, const OpCheck& check, HostCopy& copy, const Tensor& slot_row,
                       const Tensor& slot_expert, const Tensor& assignments_per_expert,
                       const Tensor& topk_idx, const Tensor& gates, const Tensor& logits,
                       const Tensor& expert_bias, const RoutingRule& rule);
RouterPlanCounts router_plan_finish(Context& ctx, HostCopy& copy, int64_t E);
RouterLossValues router_losses(Context& ctx, const Tensor& scores, const Tensor& lse,
                               const Tensor& balance_counts, const RoutingRule& rule);
// Backend::router_losses_into: the launches only, into out (f64 [3] on this device).
void router_losses_into(Context& ctx, const Tensor& out, const Tensor& scores, const Tensor& lse,
                        const Tensor& balance_counts, const RoutingRule& rule);

// router_projection.cu: Backend::router_logits / router_logits_backward for f32 w and bf16 or
// f32 u (du in u's dtype), validated by the caller. Return false with nothing launched for any
// other dtype or a w too large to stage (the caller then runs the reference path). Backward
// uses scratch slot A for the weight gradient's per-chunk partials.
bool router_logits(Context& ctx, const Tensor& logits, const Tensor& u, const Tensor& w);
bool router_logits_backward(Context& ctx, const Tensor& dw, const Tensor& du,
                            const Tensor& dlogits, const Tensor& u, const Tensor& w,
                            double dw_beta);
// Backend::router_input_grad for f32 w and bf16 or f32 rows; false: not such a case.
bool router_input_grad(Context& ctx, const Tensor& dx, const Tensor& dx_perm,
                       const Tensor& slot_row, int64_t K, const Tensor& dlogits, const Tensor& w);

// permute.cu
void permute_rows(Context& ctx, const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                  int64_t K);
void permute_rows_backward(Context& ctx, const Tensor& dx, const Tensor& dx_perm,
                           const Tensor& slot_row, int64_t K);
void unpermute_combine(Context& ctx, const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                       const Tensor& slot_row);
void unpermute_combine_backward(Context& ctx, const Tensor& dy_perm, const Tensor& dgates,
                                const Tensor& dout, const Tensor& y_perm, const Tensor& gates,
                                const Tensor& slot_row);

// grouped_gemm.cu: running Backend::grouped_gemm / grouped_gemm_wgrad on the grouped kernels.
// Which kernels a backend may try, from SY_GROUPED_GEMM (read once per backend): unset or auto
// (sm90, then mma), sm90 or mma (that one alone), cublas (none: the per-segment gemm loop).
enum class GroupedGemmChoice { automatic, sm90, mma, cublas };
GroupedGemmChoice grouped_gemm_choice_from_env();  // throws on any other value

// The segment offsets [G + 1] of a grouped GEMM on the device, from the sizes on the host: one
// asynchronous copy from a ring of pinned slots (a slot is refilled only once its last copy has
// run, which waits only when the host is a whole ring of uploads ahead of the stream), into a
// device buffer that stream order protects. Sizes equal to the last upload's reuse it.
class SegmentOffsets {
 public:
  SegmentOffsets() = default;
  SegmentOffsets(const SegmentOffsets&) = delete;
  SegmentOffsets& operator=(const SegmentOffsets&) = delete;
  ~SegmentOffsets();
  const int32_t* upload(Context& ctx, const char* op, std::span<const int64_t> rows);

 private:
  static constexpr int kSlots = 32;
  int32_t* pinned_ = nullptr;   // [kSlots][capacity_]
  int64_t capacity_ = 0;        // ints per slot
  cudaEvent_t copied_[kSlots] = {};
  bool pending_[kSlots] = {};
  int next_slot_ = 0;
  Tensor device_;
  std::vector<int32_t> host_, last_;
};

// Runs `args` (dev_offsets filled here) on the first grouped kernel that `choice` allows and
// that takes the case; returns its name ("sm90", "mma"), or nullptr when none did: the caller
// then runs the gemm loop.
const char* run_grouped_gemm(Context& ctx, GroupedGemmChoice choice, SegmentOffsets& offsets,
                             GroupedGemmArgs args, std::span<const int64_t> rows);

// adamw.cu
void adamw_update(Context& ctx, const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                  const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                  double weight_decay, int64_t step);
void sgd_update(Context& ctx, const Tensor& param, const Tensor& grad, double lr);

// adamw.cu, the multi-tensor pass. One tensor of it: f32 master-side arrays (a norm pass needs
// only grad, or instead the grad's precomputed squares: numel f64 partials), the bf16 compute
// copy or null, and the Param flags. The grad is f32, or bf16 where grad_bf16 (a weight gradient
// written once by its GEMM, TransformerOptions::bf16_grad_storage): read as its f32 value, and
// written back (zeroed, or scaled and kept) rounded to nearest even. round_bf16
// (Param::bf16_grad): an f32 grad is read as its bf16 rounding (nearest even).
struct MultiTensor {
  float* value = nullptr;
  void* grad = nullptr;
  bool grad_bf16 = false, round_bf16 = false;
  const double* partials = nullptr;  // norm pass: sum these (numel of them) instead of grad^2
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  bf16* compute = nullptr;
  // Set for an f32_split value: value is null, compute holds its high halves, this the low ones.
  uint16_t* value_low = nullptr;
  int64_t numel = 0;
  bool decay = false, expert = false;
  bool operator==(const MultiTensor&) const = default;
};

// The device table of a list of tensors cut into fixed-size chunks (one block each). Kept
// between calls: assign() uploads it again only when the list differs from the last one.
class MultiTensorTable {
 public:
  void assign(Context& ctx, const char* op, std::vector<MultiTensor> tensors);
  int64_t num_chunks() const { return num_chunks_; }
  const void* device_data() const { return device_.data(); }
  size_t chunks_offset() const { return chunks_offset_; }

 private:
  std::vector<MultiTensor> tensors_;
  bool uploaded_ = false;
  std::vector<unsigned char> host_;  // what device_ holds
  Tensor device_;
  int64_t num_chunks_ = 0;
  size_t chunks_offset_ = 0;
};

// The update's launch shape on this GPU. Every shape computes each element as the others do, so
// the choice changes no bit, only the speed, and the fastest differs between cards (the H100 and
// the H200 draw their memory bandwidth from different block shapes: model/cuda/NOTES-adamw.md).
// Unless SY_ADAMW_SHAPE or SY_ADAMW_PARTS pins one, the first passes of a run each try one
// candidate, timed by a pair of events read at the next pass (by then the step's norm read has
// waited for it); from then on the fastest per chunk runs.
class UpdateShapeTuner {
 public:
  UpdateShapeTuner() = default;
  UpdateShapeTuner(const UpdateShapeTuner&) = delete;
  UpdateShapeTuner& operator=(const UpdateShapeTuner&) = delete;
  ~UpdateShapeTuner();

  // The candidate for a pass over `num_chunks` chunks, after taking in the last pass's time;
  // while tuning, the pass's start is recorded on the stream and finish() must follow its launch.
  int start(Context& ctx, int64_t num_chunks);
  void finish(Context& ctx);
  // "wide:4 (chosen, T us a chunk), wide:8 (T), ...", or "" before every candidate has run.
  std::string summary() const;

 private:
  void take_last_time(Context& ctx);
  cudaEvent_t started_ = nullptr, finished_ = nullptr;
  int timing_ = -1;  // the candidate the events time, -1: none
  int64_t timing_chunks_ = 0;
  std::vector<double> ms_per_chunk_;  // per candidate; negative until timed
  int chosen_ = -1;
};

// out[0], out[1] (device doubles) = sum of grad^2 (or of the partials) over the non-expert, the
// expert tensors.
void grad_norm_squares(Context& ctx, const MultiTensorTable& table, double* out);
// Backend::fused_adamw_step over the table's tensors (weight decay where MultiTensor::decay),
// in the shape SY_ADAMW_SHAPE / SY_ADAMW_PARTS pin, else the tuner's (null: the default shape).
void fused_adamw_step(Context& ctx, const MultiTensorTable& table, const AdamWStep& hp,
                      UpdateShapeTuner* tuner = nullptr);

// The backend's Backend::grad_norm_squares and fused_adamw_step: the parameters' table (uploaded
// again only when the list changed), checked by `check` for what the pass needs, and one pass.
// False, with nothing run, when a tensor is not f32 (or a compute copy not bf16): the caller
// then runs the per-tensor path. grad_norm_squares waits for its two sums (a host sync).
bool grad_norm_squares(Context& ctx, MultiTensorTable& table, std::span<Param* const> params,
                       const OpCheck& check, double& shared, double& expert);
bool fused_adamw_step(Context& ctx, MultiTensorTable& table, UpdateShapeTuner& tuner,
                      std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                      std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp,
                      const OpCheck& check);

}  // namespace sy::cuda
