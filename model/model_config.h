// The sections of the config that shape the model (SPEC.md sections 1-2). They live with the
// model so that model/ depends on nothing above it; trainer/config.cpp parses the YAML into them
// (every choice-valued key into its enum, once) and validates them.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "model/rope.h"
#include "model/routing_policy.h"

namespace sy {

// The default of model.norm_eps (Llama's): RMSNorm x / sqrt(mean x^2 + eps). model.rope_theta's
// is kDefaultRopeTheta (model/rope.h).
inline constexpr double kDefaultNormEps = 1e-5;

// model.attention_kernel: how attention computes softmax(q k^T) v (model/attention.h).
// automatic: YAML `auto`.
enum class AttentionKernel { automatic, cudnn, flash, reference };

// model.qk_norm: RMSNorm over the q and k projections before rotary. full: over the whole
// projection, gains [H*Dh] and [Hkv*Dh] (OLMoE); per_head: over each head's Dh values, one gain
// [Dh] shared by the heads of q and one by those of k (Qwen3, Gemma 3).
enum class QkNorm { none, full, per_head };

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t seq_len = 128;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t ffn_hidden = 512;   // dense SwiGLU width F
  bool tie_embeddings = true;
  AttentionKernel attention_kernel = AttentionKernel::automatic;
  // Key/value heads of grouped-query attention: each serves n_heads / n_kv_heads query heads
  // (wk, wv are [D, n_kv_heads * Dh]). 0: n_heads (multi-head attention). Last, so that the
  // brace initialisers of the fields above stay as they are.
  int64_t n_kv_heads = 0;
  double rope_theta = kDefaultRopeTheta;  // rotary base: angle s * rope_theta^(-2i/Dh)
  double norm_eps = kDefaultNormEps;      // every RMSNorm's epsilon
  QkNorm qk_norm = QkNorm::none;          // gains attn/q_norm, attn/k_norm
  // Dh, each head's width. 0: d_model / n_heads. Another value decouples the heads from the
  // residual stream (Qwen3): wq is [D, H*Dh], wk and wv [D, Hkv*Dh], wo [H*Dh, D].
  int64_t head_dim = 0;
  // The rotary's scaling (model/rope.h: Rotary's fields of the same names).
  RopeScaling rope_scaling = RopeScaling::none;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 8192;

  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t head_width() const { return head_dim > 0 ? head_dim : d_model / n_heads; }  // Dh
  int64_t q_width() const { return n_heads * head_width(); }                          // H*Dh
  int64_t kv_width() const { return kv_heads() * head_width(); }                      // Hkv*Dh
  Rotary rotary() const {
    Rotary r(rope_theta);
    r.scaling = rope_scaling;
    r.factor = rope_factor;
    r.low_freq_factor = rope_low_freq_factor;
    r.high_freq_factor = rope_high_freq_factor;
    r.original_max_position = rope_original_max_position;
    return r;
  }
};

// moe.expert_kernel: how the expert FFN runs its GEMMs (model/moe/experts.h). automatic: `auto`.
enum class ExpertKernel { automatic, grouped, cublas };
// moe.aux_loss_scope: over which routing choices the Switch loss counts f_e
// (docs/load-balancing.md): this rank's micro-batch, or every rank's group of the micro-step.
enum class AuxLossScope { micro_batch, global };

// moe.layers: which layers hold an MoE FFN. YAML `all`, `every_<n>` (layers l with
// (l + 1) % n == 0), or a sequence of layer indices.
struct MoeLayers {
  enum class Kind { all, every, list };
  Kind kind = Kind::all;
  int64_t every = 0;           // kind every: n
  std::vector<int64_t> list;   // kind list: the indices as given

  static MoeLayers every_nth(int64_t n) { return {Kind::every, n, {}}; }
  static MoeLayers listed(std::vector<int64_t> layers) {
    return {Kind::list, 0, std::move(layers)};
  }
  bool operator==(const MoeLayers&) const = default;
};

struct MoeConfig {
  int64_t num_experts = 0;            // 0: dense model
  // top_k, router_score, normalize_topk, drop_policy, overflow (model/routing_policy.h).
  RoutingPolicy routing;
  int64_t expert_hidden = 256;        // F_e
  // F_s: one SwiGLU FFN of this width that every token of a MoE layer passes through, its output
  // added to the routed experts' (shared experts, as in DeepSeekMoE; n shared experts of width
  // F are one of width n F). 0: none.
  int64_t shared_expert_hidden = 0;
  MoeLayers layers;
  double capacity_factor = 0.0;       // <= 0: dropless
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  // Load balancing beyond the Switch aux loss (docs/load-balancing.md).
  double bias_update_rate = 0.0;      // aux-loss-free balancing; 0: off
  AuxLossScope aux_loss_scope = AuxLossScope::micro_batch;
  ExpertKernel expert_kernel = ExpertKernel::automatic;
};

}  // namespace sy
