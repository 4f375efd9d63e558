// The decoder-only transformer of SPEC.md section 1: parameters, the block stack, and the
// explicit forward and backward walks over one routing group (micro-batch).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/backend.h"
#include "model/buffers.h"
#include "model/embedding.h"
#include "model/lm_head.h"
#include "model/model_config.h"
#include "model/moe/moe_layer.h"
#include "model/rmsnorm.h"
#include "model/swiglu.h"

namespace sy {

struct Block {
  RMSNorm attn_norm;
  Attention attn;
  RMSNorm ffn_norm;
  std::unique_ptr<DenseFFN> dense;  // exactly one of dense, moe
  std::unique_ptr<MoELayer> moe;
  std::unique_ptr<DenseFFN> shared;  // a MoE layer's shared expert (moe.shared_expert_hidden)
};

// What one routing group's forward produced, for the loss and the metrics.
struct GroupStats {
  int64_t tokens = 0;
  double lm_loss = 0.0;      // mean cross-entropy over the group's counted targets (0 if none)
  double lm_loss_sum = 0.0;  // its sum
  int64_t lm_targets = 0;    // the counted targets: tokens but those with kIgnoreTarget
  double aux_loss = 0.0;     // mean over MoE layers, unscaled
  double z_loss = 0.0;       // mean over MoE layers, unscaled
  double loss = 0.0;         // lm + aux_coef * aux + z_coef * z
  int64_t assignments = 0;   // over all MoE layers
  int64_t dropped = 0;
  int64_t rerouted = 0;
  std::vector<std::vector<int64_t>> assignments_per_expert;  // [MoE layer][E], before drops
  std::vector<int64_t> dropped_per_layer, rerouted_per_layer;  // [MoE layer]
  std::vector<double> entropy_per_layer;  // [MoE layer] mean router entropy over the group's tokens
};

// train.recompute (docs/config.md, docs/cuda.md "Memory"): what backward rebuilds instead of
// keeping per layer. norms: the two RMSNorm outputs of every block, rerun from the saved block
// input and mid-block residual right before the backward that reads them (~0.5% of a step).
// attention: the norms, and q, k, v, context and lse (or probs) of every layer, rerun from the
// normalised input. layer: everything of a block but its input, and, in an MoE block, the
// router's results and the rows exchanged (x_recv, y_perm): the attention half, the norms, the
// dense FFN or the experts' SwiGLU are rerun; routing and the token exchange are not. Both give
// bitwise the stored run's loss and gradients (the same ops on the same inputs).
// YAML none | norms | attention | layer (trainer/config.cpp holds the names).
enum class Recompute { none, norms, attention, layer };

// A set of weight gradients (TransformerOptions::bf16_grads, bf16_grad_storage): none; the
// experts' (Param::is_expert); or every weight gradient that a GEMM writes, the experts', the
// attention projections', the dense and shared FFNs' and an untied LM head's. The embedding table
// (a scatter adds into it), the router and the norm gains are never in it. Ordered: each set
// holds the one before it.
enum class Bf16Grads { none, experts, all };
inline const char* bf16_grads_name(Bf16Grads grads) {
  return grads == Bf16Grads::all ? "all" : grads == Bf16Grads::experts ? "experts" : "none";
}

struct TransformerOptions {
  ModelConfig model;
  MoeConfig moe;
  std::vector<bool> moe_layers;  // [n_layers]
  // The compute dtype: activations and the GEMMs' weight operands (Param::compute). f32 or f64
  // on the CPU; f32, bf16 (or f64) on CUDA.
  DType dtype = DType::f32;
  // The master dtype: Param::value, Param::grad and the optimizer state; the router and the
  // norm gains compute in it. f32 or f64, never narrower than the compute dtype (f64 compute
  // implies f64 masters). Mixed precision is dtype bf16 with master f32.
  DType master_dtype = DType::f32;
  Recompute recompute = Recompute::none;
  // The weight gradients whose value is their bf16 rounding, taken once after every sum
  // (Param::bf16_grad), whatever the layout; and those of them held in bf16, for a caller that
  // knows one GEMM writes each whole in a step (one micro-batch a step and no replica to sum
  // with): the rounding then happens in that GEMM, and 2 bytes a parameter are not stored or
  // read. Storage within bf16_grads; both need the bf16 compute dtype. Trainer: run.weight_grads
  // (docs/cuda.md).
  Bf16Grads bf16_grads = Bf16Grads::none;
  Bf16Grads bf16_grad_storage = Bf16Grads::none;
};

class Transformer {
 public:
  // `exchange` serves every MoE layer (may be null for dense models); it fixes which experts
  // this rank holds.
  Transformer(Backend& backend, TransformerOptions options, TokenExchange* exchange);

  // Every matrix from N(0, 0.02), norm gains 1; each tensor, and each expert's slice, from its
  // own counter-based stream keyed by (seed, path, global expert index).
  // Ends with refresh_compute_weights().
  void init_parameters(uint64_t seed);
  void zero_grads();
  // Copies every master weight into its compute copy (bf16 training; nothing to do when the
  // compute dtype is the master dtype). Call after every optimizer step and after loading
  // weights into Param::value.
  void refresh_compute_weights();
  DType master_dtype() const { return master_dtype_; }

  // One routing group: inputs and targets [B*S]. With compute_grad, parameter gradients
  // accumulate the gradient of loss * loss_scale.
  // A target kIgnoreTarget (model/backend.h) is not trained on: its loss and gradient are 0.
  // lm_target_scale: the weight of each counted target's cross-entropy in the gradient; by
  // default loss_scale / (B*S), the group's mean (supervised fine-tuning passes 1 / the step's
  // count of counted targets: docs/data.md, "Loss masks"). The router losses take loss_scale.
  // doc_start [B*S] (empty: none): document masking, each token's document start in its
  // sequence (model/backend.h; docs/data.md, "Document masking").
  GroupStats forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets,
                              int64_t batch, bool compute_grad, double loss_scale,
                              std::optional<double> lm_target_scale = std::nullopt,
                              std::span<const int32_t> doc_start = {});

  // Called by backward with each block's parameters once their gradients are final for the
  // step (blocks from the last down, every rank in the same order), so that their reduction
  // over the ranks can start behind the rest of the backward (trainer/train_loop.cpp). The
  // embedding, the final norm and the head are not handed over. Unset: nothing is called.
  using GradsFinished = std::function<void(std::span<Param* const>)>;
  void set_grads_finished(GradsFinished hook) { grads_finished_ = std::move(hook); }

  std::vector<Param*> params();  // canonical order, stable
  // Forward only: the logits [V] at `position` of sequence `sequence`, for sampling.
  // inputs: [batch * seq_len] tokens (causal: positions after `position` do not matter).
  std::vector<double> logits_at(std::span<const int32_t> inputs, int64_t batch, int64_t sequence,
                                int64_t position);

  // Forward only over one sequence of 1 to seq_len tokens, unpadded (its tokens are the routing
  // group): the summed cross-entropy, -log p(target), over the targets that are not
  // kIgnoreTarget (trainer/score.cpp: a choice's log-likelihood given its context).
  double sequence_loss_sum(std::span<const int32_t> inputs, std::span<const int32_t> targets);

  // Generation with a key/value cache (trainer/generate.cpp). decode_prompt runs `prompt` (1 to
  // seq_len tokens) as one sequence and keeps every layer's keys and values; decode_next runs one
  // more token at the next position, its attention over those kept. Each returns the logits [V]
  // at its last token, those of logits_at over the whole text within the backend's rounding
  // (the sums run over other shapes). Each call routes its tokens as one group: the prompt's
  // together, then each new token alone (with a capacity factor a lone token is never dropped,
  // where logits_at would route the whole window as one group). The cache holds seq_len
  // positions: decode_next after that many throws. Forward only.
  std::vector<double> decode_prompt(std::span<const int32_t> prompt);
  std::vector<double> decode_next(int32_t token);
  int64_t decoded_tokens() const { return decoded_; }

  // The routers of the MoE layers, in layer order (their forward results, for tests and metrics).
  std::vector<const Router*> routers() const;
  // Aux-loss-free balancing (moe.bias_update_rate > 0): after a step, with load_counts[l][e] the
  // choices of MoE layer l over the whole step (all groups, all ranks; before drops),
  // b_e += rate * sign(mean_e load - load_e). Every rank applies the same update.
  void update_expert_bias(const std::vector<std::vector<double>>& load_counts);
  // The expert biases as checkpoint state: ("layers/<l>/moe/expert_bias", tensor [E]) per MoE
  // layer; empty when bias balancing is off.
  std::vector<std::pair<std::string, Tensor>> expert_biases();
  const TransformerOptions& options() const { return options_; }
  int64_t num_moe_layers() const;

 private:
  // A compute copy is made only where compute_copy and the dtypes differ (GEMM weights; not
  // the norm gains, not the router).
  Param make_param(const std::string& path, const Shape& shape, bool is_expert = false,
                   bool compute_copy = true);
  // `seq` tokens a sequence (0: model.seq_len). decode: generation (decode_prompt), B = 1, the
  // tokens at positions decoded_ .. of the cached sequence.
  void forward(int64_t batch, bool training, int64_t seq = 0, bool decode = false);
  // The logits [V] of row `row` of the final residual (after forward).
  std::vector<double> logits_of_row(int64_t row);
  // decode_prompt and decode_next: `tokens` at the cache's next positions.
  std::vector<double> decode_tokens(std::span<const int32_t> tokens);
  void backward(int64_t batch, double loss_scale);
  // The memory plan of a training step (docs/cuda.md "Memory"): a gradient not written yet this
  // step (zero or stale) is dropped before the forward, and allocated again (stale: the first op
  // writes it) right before the backward of the layer that owns it; each block's saved
  // activations are dropped right after its backward. Peak memory is then the larger of the
  // weights and optimizer state plus the activations, or plus the gradients, not the sum.
  void release_unwritten_grads();
  void acquire_grads(const std::vector<Param*>& params);
  // Whether `param`'s gradient is in `set` (Bf16Grads), and the dtype it is held in: the master
  // dtype, or bf16 (TransformerOptions::bf16_grad_storage).
  bool in_grad_set(const Param& param, Bf16Grads set) const;
  DType grad_dtype(const Param& param) const;
  // A parameter of `params` that no op of this pass wrote gets a zero gradient (a stale one
  // must not reach the sync and the optimizer as it is).
  void zero_unwritten_grads(const std::vector<Param*>& params);
  void release_saved(int64_t layer);
  // The block's [T, D] residual after attention: per layer, or one shared buffer under
  // recompute layer (rebuilt in backward by recompute_block).
  Tensor residual_mid(int64_t layer, int64_t tokens);
  // Recompute layer: reruns block `layer`'s forward from its saved input, all but the routing
  // and the exchange.
  void recompute_block(int64_t layer, const AttentionShape& shape);

  Backend& backend_;
  TransformerOptions options_;
  DType master_dtype_ = DType::f32;
  int64_t first_local_expert_ = 0;

  Embedding embedding_;
  std::vector<Block> blocks_;
  RMSNorm final_norm_;
  LMHead lm_head_;

  Tensor inputs_, targets_;
  Tensor doc_start_;  // i32 [T] of the current forward; undefined without document masking
  DocumentList documents_;   // doc_start_'s documents listed, offsets in document_offsets_
  Tensor document_offsets_;  // i32 [D+1]
  // f64 [MoE layers, 3]: each router's aux, z and entropy (Router::losses_out), read in one copy.
  Tensor router_losses_;
  Tensor sample_logits_;                  // [1, V], for logits_at and decode_*
  std::vector<KVCache> kv_cache_;         // [L], decode_*: each [seq_len, H*Dh]
  int64_t decoded_ = 0;                   // positions in kv_cache_
  std::vector<Tensor> residual_;          // [L+1] block inputs (and the final output), [T, D]
  std::vector<Tensor> residual_mid_;      // [L] after attention, [T, D]
  Tensor dresidual_;                      // [T, D]
  // Scratch shared by every layer (backward buffers, forward temporaries, recomputed
  // activations): one layer's worth. Behind a pointer: the layers hold its address.
  std::unique_ptr<Workspace> workspace_ = std::make_unique<Workspace>();
  GradsFinished grads_finished_;
};

}  // namespace sy
