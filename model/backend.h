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

#include "model/model_config.h"
#include "model/param.h"
#include "model/routing_policy.h"
#include "model/tensor.h"

namespace sy {

// A target whose prediction is not trained (a prompt token in supervised fine-tuning: docs/data.md,
// "Loss masks"): cross-entropy gives it loss 0 and a zero gradient row.
inline constexpr int32_t kIgnoreTarget = -1;

// The routing policy (model/routing_policy.h) as the router ops apply it to one routing group
// (Router::rule). The ops read top_k, score, drop_policy and overflow from the policy, and the
// two resolved values below; not normalize_topk.
struct RoutingRule : RoutingPolicy {
  bool normalize = false;  // gates renormalised over the K selected scores (policy.normalizes())
  int64_t capacity = -1;   // assignments per expert per routing group; < 0: dropless
};

struct RouterPlanCounts {
  std::vector<int64_t> tokens_per_expert;       // [E] kept rows (after reroutes)
  int64_t rerouted = 0;                         // assignments moved to another expert
  std::vector<int64_t> assignments_per_expert;  // [E] the tensor of that name, on the host
};

struct RouterLossValues {
  double aux = 0.0, z = 0.0;
  double entropy = 0.0;  // mean over tokens of the router distribution's entropy (nats)
};

// One AdamW step of many tensors (Backend::fused_adamw_step); torch semantics, SPEC.md section 4.
struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;          // 1-based, for the bias correction
  double grad_scale = 1.0;   // the clip factor, folded into the update
  bool zero_grads = false;   // leave every grad zero afterwards
  // The grads' contents are unspecified afterwards (the next backward overwrites them): a pass
  // may skip writing them back. Ignored when zero_grads.
  bool discard_grads = false;
};

// Document masking's documents listed (Backend, "Document masking"): `offsets` i32 [D+1] on the
// backend's device, the row t = b*S + s at which each of the batch's D documents starts, in
// order, then B*S (a document never crosses a sequence's end); `longest`, the most tokens of any
// of them. Undefined offsets: not listed.
struct DocumentList {
  Tensor offsets;
  int64_t longest = 0;
};

// What Backend::profile_region returns: its destructor closes the region.
class ProfileRegion {
 public:
  virtual ~ProfileRegion() = default;
};

// Every op is a non-virtual method that checks the op's contract, once, whatever the backend
// (model/op_checks.cpp), then calls the backend's virtual X_impl (protected, at the end); the
// router projection and the fused optimizer pass stay virtual (said where they are declared).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The start of an error message about op `op` on this backend: "cpu gemm", "cuda gemm (rank 0,
  // device 0)".
  virtual std::string error_context(const char* op) const { return name() + " " + op; }
  // The device's highest memory use so far, in bytes (0 where not tracked, e.g. the CPU).
  virtual size_t peak_memory_bytes() const { return 0; }
  // Bytes this run can use on the device: free on it plus what this backend already holds (its
  // cache and live tensors); 0 where the backend does not know (the CPU: the trainer reads the
  // host's, trainer/memory_estimate.h). For the memory check before the first step.
  virtual size_t available_memory_bytes() const { return 0; }
  // The accelerator this backend runs on (its CUDA device ordinal); -1 on the CPU.
  virtual int device_index() const { return -1; }
  // The stream that every op of this backend is ordered on (a cudaStream_t on CUDA), for
  // stream-ordered communication (NCCL); nullptr on the CPU.
  virtual void* native_stream() { return nullptr; }
  // Waits until every op issued so far has finished (timing; a no-op on the CPU).
  virtual void synchronize() {}
  // Profiles what the caller enqueues on this backend's stream from now until the returned
  // region is destroyed, as op `op`, in the CUDA backend's per-op profile (SY_CUDA_PROFILE):
  // for work the backend does not run itself, a communicator's collectives. Null where there is
  // no profile (the CPU, or profiling off). Backend ops run inside a region count in both.
  virtual std::unique_ptr<ProfileRegion> profile_region(const std::string& /*op*/) {
    return nullptr;
  }
  // A training step ended (the trainer calls it once a step): the CUDA events profile, printed
  // at exit under SY_CUDA_PROFILE=events, divides its totals by the steps it saw.
  virtual void profile_step() {}

  // ---- memory -------------------------------------------------------------------------------
  Tensor alloc(const Shape& shape, DType dtype);  // uninitialised
  Tensor zeros(const Shape& shape, DType dtype);
  void fill(const Tensor& x, double value);
  void copy(const Tensor& dst, const Tensor& src);  // same numel; converts dtype
  // Host transfers, converting to/from the tensor's dtype. Sizes must equal numel().
  void write(const Tensor& dst, std::span<const float> host);
  void write(const Tensor& dst, std::span<const double> host);
  void write(const Tensor& dst, std::span<const int32_t> host);
  std::vector<double> read(const Tensor& src);
  std::vector<int32_t> read_i32(const Tensor& src);
  // Raw byte copies between a tensor and host memory of nbytes() (communication staging).
  void copy_to_host(void* host, const Tensor& src);
  void copy_from_host(const Tensor& dst, const void* host);
  // Page-locks the host range [host, host + bytes) for this device's copies until the returned
  // handle's last copy is dropped (which unlocks it; that needs no backend, so the handle may
  // outlive it). On CUDA (cudaHostRegister) copy_to_host into a locked range is one DMA at the
  // bus's speed instead of a copy staged through the driver's pageable bounce buffers (on the
  // H200 machine ~14 GB/s against ~50, which bounded checkpoint.async's snapshot). Null where
  // locking buys nothing (the CPU: the default). Throws std::runtime_error naming the range
  // where the system refuses (ulimit -l, not enough memory): callers go on with pageable
  // memory. Ranges must not share a page. Callable from any thread; the caller keeps the range
  // allocated while it is locked.
  virtual std::shared_ptr<void> pin_host_memory(void* /*host*/, size_t /*bytes*/) {
    return nullptr;
  }

  // ---- linear algebra -----------------------------------------------------------------------
  // C[M,N] = alpha * op(A) @ op(B) + beta * C, op = transpose where asked. 2-D tensors.
  void gemm(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
            double alpha, double beta);
  void add(const Tensor& y, const Tensor& x, double alpha);  // y += alpha * x
  // out = a + b (the residual sums), bitwise copy(out, a) then add(out, b, 1.0) in one pass.
  void add_into(const Tensor& out, const Tensor& a, const Tensor& b);
  void scale(const Tensor& y, double alpha);  // y *= alpha
  double sum_squares(const Tensor& x);        // accumulated in f64
  // out[i] = sum_squares(xs[i]) for every tensor, with one host synchronisation on a device.
  void sum_squares_many(std::span<const Tensor> xs, std::span<double> out);

  // ---- grouped GEMMs over expert segments (the MoE expert FFN, model/moe/experts.cpp) ---------
  // The rows of A form G = rows_per_group.size() consecutive segments: segment g is rows
  // [o_g, o_g + rows_per_group[g]), o_g the sum of the sizes before it; sizes may be 0 and sum
  // to the rows of A. Dtypes as gemm(): A and B in one dtype, C in it or f32 with bf16 A and B.
  //   grouped_gemm:       C[seg g] (= or, with accumulate, +=) A[seg g] @ op(B[g])
  //                       A [M, K], B [G, K, N] (or [G, N, K] with trans_b), C [M, N]
  //   grouped_gemm_wgrad: C[g] (= or +=) A[seg g]^T @ B[seg g]
  //                       A [M, K], B [M, N], C [G, K, N]; an empty segment's C[g] is zeroed
  //                       (left as it is with accumulate)
  //   grouped_gemm_pair:  C[seg g] = A[seg g] @ op(B[g]) + A2[seg g] @ op(B2[g])
  //                       A [M, K], A2 [M, K2], B and B2 as in grouped_gemm, C [M, N] (the
  //                       expert FFN's dx = dh1 w1^T + dh3 w3^T); the default is grouped_gemm
  //                       into C, then grouped_gemm adding into C (C rounded twice); a backend
  //                       may sum both products before rounding C once (CUDA's Hopper kernel)
  // The defaults (model/grouped_gemm.cpp) run one gemm() per non-empty segment, the reference;
  // CUDA runs bf16 data as one grouped kernel (docs/cuda.md).
  // grouped_gemm_wgrad with `squares` and without accumulate: a backend whose kernel can sum C's
  // squares as it writes C sets *squares to f64 partials whose sum in index order is the sum of
  // the squares of every element of C as stored (f32 or bf16), and returns true (the gradient
  // norm's share of an expert weight gradient, Param::grad_squares); where it cannot (the
  // defaults) it returns false and leaves *squares as it was. *squares is reused when its size
  // fits.
  void grouped_gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool trans_b,
                    std::span<const int64_t> rows_per_group, bool accumulate);
  bool grouped_gemm_wgrad(const Tensor& C, const Tensor& A, const Tensor& B,
                          std::span<const int64_t> rows_per_group, bool accumulate,
                          Tensor* squares = nullptr);
  void grouped_gemm_pair(const Tensor& C, const Tensor& A, const Tensor& B, const Tensor& A2,
                         const Tensor& B2, bool trans_b, std::span<const int64_t> rows_per_group);

  // ---- embedding ----------------------------------------------------------------------------
  // out[T,D] = table[tokens[t]]; backward: dtable[tokens[t]] += dout[t] (dtable stat of dout).
  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table);
  void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens);

  // ---- RMSNorm: out = x * rstd * gain, rstd[T] = 1/sqrt(mean(x^2) + eps) ---------------------
  // rstd, gain and dgain are stat. eps: model.norm_eps (backward needs only rstd).
  void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& gain,
                       double eps = kDefaultNormEps);
  // The residual sum and the norm of it in one op: sum = a + b (bitwise add_into), then
  // rmsnorm_forward(out, rstd, sum, gain). A device reads a and b once instead of the sum again.
  void add_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd,
                           const Tensor& a, const Tensor& b, const Tensor& gain,
                           double eps = kDefaultNormEps);
  // dx = (overwritten), or with accumulate dx += (the residual stream's gradient: the CPU gives
  // the bits of the norm's dx added by add(); a device may round the sum once); dgain += .
  void rmsnorm_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                        const Tensor& gain, const Tensor& rstd, bool accumulate = false);

  // ---- attention ----------------------------------------------------------------------------
  // Document masking (data.document_mask, docs/data.md "Document masking"): `doc_start`, when
  // defined, is i32 [B*S] on this backend's device. Token t = b*S + s belongs to the document
  // that starts at position doc_start[t] of sequence b (0 <= doc_start[t] <= s; the same value
  // for every token of one document). Rotary turns token t by its position in its document,
  // s - doc_start[t], and attention lets query s see the keys j with doc_start[t] <= j <= s.
  // Undefined (the default): each sequence is one document, doc_start 0 everywhere; the ops
  // below give exactly what they gave before document masking existed.
  // The flash ops may also take the same documents listed (DocumentList, above), so
  // that a device can run each document as a sequence of its own without reading doc_start back.
  //
  // Rotary embedding in place on x[B*S, H*Dh] (rotate-half, angle s * f_i, the f_i of
  // `rotary`: model/rope.h, from model.rope_*); backward applies the inverse rotation to the
  // gradient in place. `first_position` (generation with a key/value cache: the new tokens
  // follow the cached ones) moves every sequence's positions on: token s turns by the angle of
  // first_position + s. Not with doc_start.
  void rope_forward(const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary = {},
                    const Tensor& doc_start = {}, int64_t first_position = 0);
  void rope_backward(const Tensor& dx, int64_t B, int64_t S, int64_t H, const Rotary& rotary = {},
                     const Tensor& doc_start = {});
  // The same on q and k (same shape) together, as one launch on a device; results as the two
  // separate calls give them.
  void rope_forward_qk(const Tensor& q, const Tensor& k, int64_t B, int64_t S, int64_t H,
                       const Rotary& rotary = {}, const Tensor& doc_start = {},
                       int64_t first_position = 0);
  void rope_backward_qk(const Tensor& dq, const Tensor& dk, int64_t B, int64_t S, int64_t H,
                        const Rotary& rotary = {}, const Tensor& doc_start = {});
  // Grouped-query attention's key and value heads, shared by groups of query heads: out[T, H*Dh]
  // holds head j of x[T, Hkv*Dh] as heads j*G .. j*G+G-1 (G = H / Hkv; transformers' repeat_kv).
  // Backward: dx[t, head j] = the sum over g = 0 .. G-1, in that order, of dout[t, head j*G+g]
  // (overwritten; accumulated in stat dtype). `kv_heads` is Hkv.
  void repeat_kv_heads(const Tensor& out, const Tensor& x, int64_t kv_heads);
  void repeat_kv_heads_backward(const Tensor& dx, const Tensor& dout, int64_t kv_heads);
  // Causal softmax attention per (batch, head). q,k,v,out: [B*S, H*Dh]; probs: [B, H, S, S]
  // (saved for backward; entries above the diagonal, and with doc_start left of it, are 0:
  // backward needs no doc_start, the zeros carry the mask).
  void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k,
                         const Tensor& v, int64_t B, int64_t S, int64_t H,
                         const Tensor& doc_start = {});
  void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                          const Tensor& dout, const Tensor& q, const Tensor& k,
                          const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                          int64_t H);
  // Generation with a key/value cache: the causal attention of n new queries over the keys and
  // values of every position so far. q, out: [n, H*Dh], query i at position first_position + i;
  // k, v: [L, H*Dh], the keys (rotary applied) and values of positions 0 .. L-1, with
  // L >= first_position + n. Query i sees the keys j <= first_position + i, with flash's scale
  // and softmax; out (=). Forward only: nothing is kept for a backward. Deterministic.
  void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                        int64_t H, int64_t first_position);
  // Flash attention: the same causal softmax attention (scale 1/sqrt(Dh), query s sees keys
  // <= s, and with doc_start none before its document's start) without an [S, S] matrix.
  // q,k,v,out: [B*S, H*Dh] (row t = b*S+s, head h at columns h*Dh..), rotary already applied;
  // lse: [B, H, S] stat, the logsumexp of each query's scaled visible scores (saved for backward;
  // P = exp(q k^T / sqrt(Dh) - lse)). dq, dk, dv (=) from dout and the forward's out and lse
  // (backward takes the forward's doc_start). Deterministic: the same inputs give the same bits.
  // CPU: f32, f64, any even Dh. CUDA: bf16 on tensor cores for Dh 64 and 128, a plain kernel
  // for other even Dh <= 256 (and for f32, f64); larger Dh is an error.
  // `documents` (defined only with doc_start): doc_start's documents listed; a backend may ignore
  // it (the CPU does), and the results are those of doc_start either way, within the backend's
  // tolerances.
  void flash_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q,
                               const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                               const Tensor& doc_start = {}, const DocumentList& documents = {});
  void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                const Tensor& dout, const Tensor& q, const Tensor& k,
                                const Tensor& v, const Tensor& out, const Tensor& lse, int64_t B,
                                int64_t S, int64_t H, const Tensor& doc_start = {},
                                const DocumentList& documents = {});
  // Whether the flash_attention ops that follow may run on a vendor library (CUDA: cuDNN's fused
  // attention, bf16, deterministic engines unless set_deterministic(false); the own kernels where
  // cuDNN declines). A backend setting that the attention layer sets before its calls; other
  // backends ignore it.
  virtual void prefer_cudnn_attention(bool prefer) {}
  // run.deterministic: whether every op must repeat bit for bit on the same device and build
  // (true, the default). false lets a backend pick faster kernels whose sums run in a timing-
  // dependent order (CUDA: cuDNN's attention backward accumulating dQ); others ignore it.
  virtual void set_deterministic(bool deterministic) {}
  // Whether f32 master weights that have a bf16 compute copy are held as DType::f32_split (the
  // compute copy is then their high halves: 2 bytes a parameter less to hold, and to write in
  // every optimizer step). A backend that says true supports f32_split in alloc, fill, copy (to
  // and from f32, to bf16), read, write, the host copies, sum_squares and the optimizer ops.
  virtual bool splits_bf16_masters() const { return false; }

  // ---- SwiGLU: out = silu(a) * b ------------------------------------------------------------
  void swiglu_forward(const Tensor& out, const Tensor& a, const Tensor& b);
  // da, db may be a, b themselves, and hidden may be dout (in place: every input of an element
  // is read before its outputs are written). `hidden`, when defined, receives silu(a) * b again,
  // bitwise as swiglu_forward writes it: backward rebuilds the forward's product instead of
  // keeping it per layer.
  void swiglu_backward(const Tensor& da, const Tensor& db, const Tensor& dout,
                       const Tensor& a, const Tensor& b, const Tensor& hidden);
  void swiglu_backward(const Tensor& da, const Tensor& db, const Tensor& dout, const Tensor& a,
                       const Tensor& b) {
    swiglu_backward(da, db, dout, a, b, Tensor());
  }

  // ---- cross-entropy ------------------------------------------------------------------------
  // losses[T] (stat) = logsumexp(logits[t]) - logits[t, targets[t]]. If compute_grad, logits is
  // overwritten in place with dlogits = (softmax - onehot) * grad_scale. A target kIgnoreTarget
  // gives loss 0 and a zero gradient row; other targets must lie in [0, V).
  void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                     bool compute_grad, double grad_scale);
  // Training's form when the GEMMs want the gradient in another dtype than the logits (bf16
  // from the f32 logits of the LM head): losses as above, dlogits [N, V] (its own dtype) =
  // (softmax - onehot) * grad_scale, bitwise cross_entropy then copy; logits may be clobbered.
  void cross_entropy_into(const Tensor& losses, const Tensor& logits,
                          const Tensor& targets, double grad_scale, const Tensor& dlogits);

  // ---- router (SPEC.md section 2, docs/load-balancing.md) ------------------------------------
  // The router's projection. w [D, E] is in the router's dtype; u [T, D] (the normalised input)
  // in the compute dtype or w's; widen(u) is u in w's dtype (exact: bf16 widens exactly).
  //   router_logits:          logits[T,E] (w's dtype) (=) widen(u) @ w, summed in w's dtype.
  //   router_logits_backward: dw[D,E] = dw_beta * dw + widen(u)^T @ dlogits (dw_beta 0
  //                           overwrites: whatever dw held, NaN included, is not read);
  //                           du[T,D] (u's dtype) += dlogits[T,E] @ w^T, summed in w's dtype and
  //                           rounded once into du's dtype. du must not alias u. With du
  //                           undefined, dw alone (router_input_grad then adds the du term).
  //   router_input_grad:      dx[T,D] (=) sum over kept k of dx_perm[slot_row[t*K+k]] (as
  //                           permute_rows_backward) + dlogits[T,E] @ w^T: the MoE layer's whole
  //                           input gradient, its experts' path and its router's, in one op. The
  //                           default runs permute_rows_backward, then router_logits_backward's
  //                           du term, so the CPU's bits are theirs; CUDA adds both terms in f32
  //                           and rounds dx once (one pass over the rows instead of three).
  // The defaults (model/moe/router.cpp: a copy of u into w's dtype when the dtypes differ, gemm()
  // and add()) are the reference; CUDA reads bf16 or f32 rows in one pass each way (docs/cuda.md).
  // These three, like the fused optimizer pass below, stay virtual: their defaults are the
  // reference that tests call by name (backend.Backend::router_logits); every implementation
  // starts with check_router_logits(_backward) or check_router_input_grad (model/op_checks.h).
  virtual void router_logits(const Tensor& logits, const Tensor& u, const Tensor& w);
  virtual void router_logits_backward(const Tensor& dw, const Tensor& du, const Tensor& dlogits,
                                      const Tensor& u, const Tensor& w, double dw_beta);
  virtual void router_input_grad(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                                 int64_t K, const Tensor& dlogits, const Tensor& w);
  // The router's float tensors are all of one dtype (f32 in training: the router is fp32
  // everywhere; f64 in gradient checks). `expert_bias` [E] (same dtype) may be undefined: no bias.
  //
  // scores[T,E]: softmax(logits) or sigmoid(logits) (rule.score); lse[T] = logsumexp(logits)
  // (the z-loss, whatever the score); topk_idx[T,K]: the K largest selection scores
  // logits[t,e] + expert_bias[e], largest first, ties to the lower index; gates[T,K] =
  // scores[t, idx] / sum over the K selected scores (rule.normalize) or scores[t, idx]. The bias
  // steers the selection only: the gates come from the unbiased scores.
  void router_scores_topk(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                          const Tensor& gates, const Tensor& logits,
                          const Tensor& expert_bias, const RoutingRule& rule);
  // Capacity, drops, reroutes and the permutation (rule.capacity < 0: dropless).
  //   Ranking: position: assignments (t, k) ordered by (k, t); probability: by gate, highest
  //   first, then (k, t). Each expert keeps the first rule.capacity of its assignments in that
  //   order.
  //   Reroute (rule.overflow == reroute): the assignments over capacity, taken one at a time in
  //   the same ranking (across experts), each moves to the expert with the largest selection
  //   score logits[t,e] + expert_bias[e] (ties: lower index) that is none of the token's K
  //   choices, holds none of its other assignments, and is below capacity; if there is none it is
  //   dropped. A rerouted assignment keeps its gate.
  // Outputs:
  //   slot_expert[T*K]: the expert that runs assignment t*K+k (topk_idx unless rerouted);
  //   slot_row[T*K]: the permuted row of assignment t*K+k, or -1 if dropped; the kept ones
  //                number the rows 0.. grouped by slot_expert, ascending, and within an expert
  //                by assignment t*K+k;
  //   assignments_per_expert[E]: the routing's choices (topk_idx) counted before drops and
  //                reroutes (for f_e, expert_load and the bias update).
  // Returns the kept rows per expert (after reroutes), the count rerouted and
  // assignments_per_expert, on the host: the counts that must cross to the host, in one copy.
  RouterPlanCounts router_plan(const Tensor& slot_row, const Tensor& slot_expert,
                               const Tensor& assignments_per_expert, const Tensor& topk_idx,
                               const Tensor& gates, const Tensor& logits, const Tensor& expert_bias,
                               const RoutingRule& rule);
  // router_plan in two calls, so that the device has work while the host waits for the counts:
  // router_plan_start enqueues the plan (the same outputs, checked alike) and the counts' copy;
  // router_plan_finish waits for that copy and returns what router_plan returns. In between a
  // caller enqueues what does not need the counts on the host (the router's losses; a dropless
  // layer's permute). One plan at a time: start twice, or finish without a start, is an error.
  void router_plan_start(const Tensor& slot_row, const Tensor& slot_expert,
                         const Tensor& assignments_per_expert, const Tensor& topk_idx,
                         const Tensor& gates, const Tensor& logits, const Tensor& expert_bias,
                         const RoutingRule& rule);
  RouterPlanCounts router_plan_finish();
  // balance_counts[E] (i32) gives f_e = balance_counts[e] / sum_e balance_counts: this group's
  // assignments_per_expert, or their sum over the groups of one micro-step (aux_loss_scope
  // global). With q[t] = scores[t] (softmax) or scores[t] / sum_e scores[t,e] (sigmoid):
  // aux = E * sum_e f_e * mean_t q[t,e], z = mean_t lse_t^2, entropy = mean_t -sum_e q log q.
  RouterLossValues router_losses(const Tensor& scores, const Tensor& lse,
                                 const Tensor& balance_counts, const RoutingRule& rule);
  // The same values written to out (f64 [3]: aux, z, entropy) where they are computed: on CUDA
  // without waiting for them, so that a caller reads many layers' values in one copy later.
  void router_losses_into(const Tensor& out, const Tensor& scores, const Tensor& lse,
                          const Tensor& balance_counts, const RoutingRule& rule);
  // dlogits[T,E] (=) from the gate gradients dgates[T,K] (through the scores and the top-k
  // normalisation), plus d_aux * d(aux)/dlogits and d_z * d(z)/dlogits (aux as router_losses
  // defines it, with the same balance_counts).
  void router_backward(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                       const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                       const Tensor& balance_counts, const RoutingRule& rule,
                       double d_aux, double d_z);

  // ---- permute / unpermute ------------------------------------------------------------------
  // x_perm[slot_row[t*K+k]] = x[t] for kept k. The R rows are the kept assignments, each named by
  // exactly one (as router_plan's permutation makes them), so every row is written.
  void permute_rows(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row, int64_t K);
  // dx[t] (=) sum over kept k of dx_perm[slot_row[t*K+k]]
  void permute_rows_backward(const Tensor& dx, const Tensor& dx_perm,
                             const Tensor& slot_row, int64_t K);
  // out[t] (=) sum over kept k of gates[t,k] * y_perm[slot_row[t*K+k]]   (gates, dgates: stat)
  void unpermute_combine(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                         const Tensor& slot_row);
  // dy_perm[row(t,k)] (=) gates[t,k] * dout[t];  dgates[t,k] (=) <dout[t], y_perm[row(t,k)]>
  // (0 for dropped assignments). The R rows are the kept assignments, each named by exactly one
  // (as router_plan's permutation makes them), so every row is written and none is cleared
  // first; the CPU checks that the kept count is R.
  void unpermute_combine_backward(const Tensor& dy_perm, const Tensor& dgates,
                                  const Tensor& dout, const Tensor& y_perm,
                                  const Tensor& gates, const Tensor& slot_row);

  // ---- optimizer ----------------------------------------------------------------------------
  // AdamW (torch semantics; SPEC.md section 4); `step` is 1-based for bias correction.
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                    const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                    double eps, double weight_decay, int64_t step);
  void sgd_update(const Tensor& param, const Tensor& grad, double lr);

  // ---- the fused optimizer pass (optim/optimizer.h, optim/clip.h) -----------------------------
  // The defaults (model/cpu/adamw.cpp) run the per-tensor ops above in order and are the
  // reference; a device backend may do each in one multi-tensor pass (CUDA: f32 masters).
  //
  // Sums of the squared grads of `params`, accumulated in f64: `shared` over the params that are
  // not Param::is_expert, `expert` over those that are. One host synchronisation on a device. A
  // fixed order: the same grads give the same bits run to run (the order may differ from
  // sum_squares', so the two agree to about 1e-12 relative, not bitwise).
  virtual void grad_norm_squares(std::span<Param* const> params, double& shared, double& expert);
  // For every params[i], with m = exp_avgs[i] and v = exp_avg_sqs[i] (same shape, master dtype):
  //   grad *= hp.grad_scale                     (the clip factor; skipped when it is 1)
  //   adamw_update(value, grad, m, v, hp.lr, hp.beta1, hp.beta2, hp.eps,
  //                Param::decay ? hp.weight_decay : 0, hp.step)
  //   copy(compute, value)                      (when compute is defined and not value itself)
  //   fill(grad, 0)                             (when hp.zero_grads)
  // With hp.discard_grads (and not zero_grads) the grads may be left scaled or as they were.
  // A bf16 grad (TransformerOptions::bf16_grad_storage) is widened first, and an f32 one whose
  // value is its bf16 rounding (Param::bf16_grad) rounded and widened: the scale and the update
  // run on that f32 value, and a scaled grad kept is stored back in its dtype. grad_norm_squares
  // reads the same values. Equal bitwise to those per-tensor ops in f32; a fused pass reads and
  // writes each element once.
  virtual void fused_adamw_step(std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                                std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp);
 protected:
  // What a backend implements. Each public op above checks its contract (the rules written
  // beside its declaration, checked in model/op_checks.cpp) and then calls its X_impl, so that an
  // implementation checks only what its device adds: dtypes it cannot compute in, index ranges,
  // i32 limits and aliasing rules of its kernels. A default here is the reference way to do the
  // op with other ops.
  // memory
  virtual Tensor alloc_impl(const Shape& shape, DType dtype) = 0;
  virtual void fill_impl(const Tensor& x, double value) = 0;
  virtual void copy_impl(const Tensor& dst, const Tensor& src) = 0;
  virtual void write_impl(const Tensor& dst, std::span<const float> host) = 0;
  virtual void write_impl(const Tensor& dst, std::span<const double> host) = 0;
  virtual void write_impl(const Tensor& dst, std::span<const int32_t> host) = 0;
  virtual std::vector<double> read_impl(const Tensor& src) = 0;
  virtual std::vector<int32_t> read_i32_impl(const Tensor& src) = 0;
  virtual void copy_to_host_impl(void* host, const Tensor& src) = 0;
  virtual void copy_from_host_impl(const Tensor& dst, const void* host) = 0;
  // linear algebra
  virtual void gemm_impl(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B,
                         bool trans_b, double alpha, double beta) = 0;
  virtual void add_impl(const Tensor& y, const Tensor& x, double alpha) = 0;
  virtual void add_into_impl(const Tensor& out, const Tensor& a, const Tensor& b) {
    copy(out, a);
    add(out, b, 1.0);
  }
  virtual void scale_impl(const Tensor& y, double alpha) = 0;
  virtual double sum_squares_impl(const Tensor& x) = 0;
  virtual void sum_squares_many_impl(std::span<const Tensor> xs, std::span<double> out) {
    for (size_t i = 0; i < xs.size(); ++i) out[i] = sum_squares(xs[i]);
  }
  virtual void grouped_gemm_impl(const Tensor& C, const Tensor& A, const Tensor& B, bool trans_b,
                                 std::span<const int64_t> rows_per_group, bool accumulate);
  virtual bool grouped_gemm_wgrad_impl(const Tensor& C, const Tensor& A, const Tensor& B,
                                       std::span<const int64_t> rows_per_group, bool accumulate,
                                       Tensor* squares);
  virtual void grouped_gemm_pair_impl(const Tensor& C, const Tensor& A, const Tensor& B,
                                      const Tensor& A2, const Tensor& B2, bool trans_b,
                                      std::span<const int64_t> rows_per_group);
  // embedding, RMSNorm
  virtual void embedding_forward_impl(const Tensor& out, const Tensor& tokens,
                                      const Tensor& table) = 0;
  virtual void embedding_backward_impl(const Tensor& dtable, const Tensor& dout,
                                       const Tensor& tokens) = 0;
  virtual void rmsnorm_forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x,
                                    const Tensor& gain, double eps) = 0;
  virtual void add_rmsnorm_forward_impl(const Tensor& sum, const Tensor& out, const Tensor& rstd,
                                        const Tensor& a, const Tensor& b, const Tensor& gain,
                                        double eps) {
    add_into(sum, a, b);
    rmsnorm_forward(out, rstd, sum, gain, eps);
  }
  virtual void rmsnorm_backward_impl(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                                     const Tensor& x, const Tensor& gain, const Tensor& rstd,
                                     bool accumulate) = 0;
  // attention (doc_start: as in the public ops, possibly undefined)
  virtual void rope_forward_impl(const Tensor& x, int64_t B, int64_t S, int64_t H,
                                 const Rotary& rotary, const Tensor& doc_start,
                                 int64_t first_position) = 0;
  virtual void rope_backward_impl(const Tensor& dx, int64_t B, int64_t S, int64_t H,
                                  const Rotary& rotary, const Tensor& doc_start) = 0;
  virtual void rope_forward_qk_impl(const Tensor& q, const Tensor& k, int64_t B, int64_t S,
                                    int64_t H, const Rotary& rotary, const Tensor& doc_start,
                                    int64_t first_position) {
    rope_forward(q, B, S, H, rotary, doc_start, first_position);
    rope_forward(k, B, S, H, rotary, doc_start, first_position);
  }
  virtual void rope_backward_qk_impl(const Tensor& dq, const Tensor& dk, int64_t B, int64_t S,
                                     int64_t H, const Rotary& rotary, const Tensor& doc_start) {
    rope_backward(dq, B, S, H, rotary, doc_start);
    rope_backward(dk, B, S, H, rotary, doc_start);
  }
  virtual void repeat_kv_heads_impl(const Tensor& out, const Tensor& x, int64_t kv_heads) = 0;
  virtual void repeat_kv_heads_backward_impl(const Tensor& dx, const Tensor& dout,
                                             int64_t kv_heads) = 0;
  virtual void attention_forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q,
                                      const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                      int64_t H, const Tensor& doc_start) = 0;
  virtual void attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                       const Tensor& dout, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                                       int64_t H) = 0;
  virtual void attention_decode_impl(const Tensor& out, const Tensor& q, const Tensor& k,
                                     const Tensor& v, int64_t H, int64_t first_position) = 0;
  virtual void flash_attention_forward_impl(const Tensor& out, const Tensor& lse, const Tensor& q,
                                            const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                            int64_t H, const Tensor& doc_start,
                                            const DocumentList& documents) = 0;
  virtual void flash_attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                             const Tensor& dout, const Tensor& q, const Tensor& k,
                                             const Tensor& v, const Tensor& out, const Tensor& lse,
                                             int64_t B, int64_t S, int64_t H,
                                             const Tensor& doc_start,
                                             const DocumentList& documents) = 0;
  // SwiGLU, cross-entropy
  virtual void swiglu_forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
  virtual void swiglu_backward_impl(const Tensor& da, const Tensor& db, const Tensor& dout,
                                    const Tensor& a, const Tensor& b, const Tensor& hidden) = 0;
  virtual void cross_entropy_impl(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                                  bool compute_grad, double grad_scale) = 0;
  virtual void cross_entropy_into_impl(const Tensor& losses, const Tensor& logits,
                                       const Tensor& targets, double grad_scale,
                                       const Tensor& dlogits) {
    cross_entropy(losses, logits, targets, true, grad_scale);
    copy(dlogits, logits);
  }
  // router
  virtual void router_scores_topk_impl(const Tensor& scores, const Tensor& lse,
                                       const Tensor& topk_idx, const Tensor& gates,
                                       const Tensor& logits, const Tensor& expert_bias,
                                       const RoutingRule& rule) = 0;
  virtual RouterPlanCounts router_plan_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                            const Tensor& assignments_per_expert,
                                            const Tensor& topk_idx, const Tensor& gates,
                                            const Tensor& logits, const Tensor& expert_bias,
                                            const RoutingRule& rule) = 0;
  // Default: the whole of router_plan_impl in start, its counts handed over by finish.
  virtual void router_plan_start_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                      const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                      const Tensor& gates, const Tensor& logits,
                                      const Tensor& expert_bias, const RoutingRule& rule);
  virtual RouterPlanCounts router_plan_finish_impl();
  virtual RouterLossValues router_losses_impl(const Tensor& scores, const Tensor& lse,
                                              const Tensor& balance_counts,
                                              const RoutingRule& rule) = 0;
  // Default: router_losses_impl, then a write of its three values.
  virtual void router_losses_into_impl(const Tensor& out, const Tensor& scores, const Tensor& lse,
                                       const Tensor& balance_counts, const RoutingRule& rule);
  virtual void router_backward_impl(const Tensor& dlogits, const Tensor& dgates,
                                    const Tensor& scores, const Tensor& lse, const Tensor& logits,
                                    const Tensor& topk_idx, const Tensor& balance_counts,
                                    const RoutingRule& rule, double d_aux, double d_z) = 0;
  // permute / unpermute, optimizer
  virtual void permute_rows_impl(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                                 int64_t K) = 0;
  virtual void permute_rows_backward_impl(const Tensor& dx, const Tensor& dx_perm,
                                          const Tensor& slot_row, int64_t K) = 0;
  virtual void unpermute_combine_impl(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                                      const Tensor& slot_row) = 0;
  virtual void unpermute_combine_backward_impl(const Tensor& dy_perm, const Tensor& dgates,
                                               const Tensor& dout, const Tensor& y_perm,
                                               const Tensor& gates, const Tensor& slot_row) = 0;
  virtual void adamw_update_impl(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                                 const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                                 double eps, double weight_decay, int64_t step) = 0;
  virtual void sgd_update_impl(const Tensor& param, const Tensor& grad, double lr) = 0;

 private:
  bool plan_started_ = false;        // between router_plan_start and router_plan_finish
  RouterPlanCounts started_counts_;  // the default start_impl's result
};

// The reference backend. `threads` limits BLAS threads (0: leave as is).
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace sy
