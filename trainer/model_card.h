// The model card printed at the start of a run: sizes, sparsity, memory and compute per token,
// computed from the config alone (so they are the same on every rank and before allocation).
#pragma once
#include <cstdint>
#include <string>

#include "trainer/config.h"

namespace sy {

struct ModelCard {
  int64_t total_params = 0;         // every parameter, experts counted once each
  int64_t expert_params = 0;        // the stacked expert tensors, all experts
  int64_t active_params = 0;        // used by one token: non-expert + top_k experts per MoE layer
  int64_t params_per_rank = 0;      // non-expert + this rank's E/P experts
  int64_t moe_layers = 0;
  double sparsity = 0.0;            // top_k / num_experts (1 for dense)
  double param_optimizer_bytes_per_rank = 0.0;  // fp32 value + grad (+ two AdamW moments)
  double train_flops_per_token = 0.0;           // forward + backward
};

ModelCard make_model_card(const Config& config);
std::string format_model_card(const Config& config, const ModelCard& card);

}  // namespace sy
