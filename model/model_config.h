// The sections of the config that shape the model (SPEC.md sections 1-2). They live with the
// model so that model/ depends on nothing above it; trainer/config.h loads and validates them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t seq_len = 128;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t ffn_hidden = 512;   // dense SwiGLU width F
  bool tie_embeddings = true;
  // How attention computes softmax(q k^T) v: auto | cudnn | flash | reference (model/attention.h).
  std::string attention_kernel = "auto";
};

struct MoeConfig {
  int64_t num_experts = 0;            // 0: dense model
  int64_t top_k = 2;
  int64_t expert_hidden = 256;        // F_e
  std::string layers = "all";         // "all", "every_<n>", or "list" (then layer_list is used)
  std::vector<int64_t> layer_list;    // when YAML gives an explicit list
  double capacity_factor = 0.0;       // <= 0: dropless
  int normalize_topk = -1;            // -1: default (true iff top_k > 1); 0/1 explicit
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  // Load balancing beyond the Switch aux loss (docs/load-balancing.md).
  double bias_update_rate = 0.0;           // aux-loss-free balancing; 0: off
  std::string aux_loss_scope = "micro_batch";  // micro_batch | global
  std::string router_score = "softmax";    // softmax | sigmoid
  std::string drop_policy = "position";    // position | probability
  std::string overflow = "drop";           // drop | reroute
  // How the expert FFN runs its GEMMs (model/moe/experts.h): auto | grouped | cublas.
  std::string expert_kernel = "auto";

  // Default: normalised when top_k > 1, and always for sigmoid scores (they do not sum to 1).
  bool normalize() const {
    return normalize_topk < 0 ? top_k > 1 || router_score == "sigmoid" : normalize_topk != 0;
  }
};

}  // namespace sy
