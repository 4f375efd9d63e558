// The small byte-level MoE model of the generate and score tests: 2 layers (MoE, then dense), 4
// experts top-2, seq_len 12, its weight matrices 20x their initialisation, so that its next-token
// distributions are far from uniform (sampling, top-k and choices then have clear winners).
#pragma once
#include <memory>

#include "model/transformer.h"

namespace sy::test {

inline TransformerOptions small_byte_moe(DType dtype = DType::f32) {
  TransformerOptions options;
  options.model = {256, 12, 16, 2, 2, 24, true};
  options.moe.num_experts = 4;
  options.moe.routing.top_k = 2;
  options.moe.expert_hidden = 8;
  options.moe_layers = {true, false};
  options.dtype = options.master_dtype = dtype;
  return options;
}

inline std::unique_ptr<Transformer> sharp_model(Backend& backend, TokenExchange& exchange,
                                                const TransformerOptions& options) {
  auto model = std::make_unique<Transformer>(backend, options, &exchange);
  model->init_parameters(5);
  for (Param* p : model->params())
    if (p->value.ndim() > 1) backend.scale(p->value, 20.0);
  model->refresh_compute_weights();
  return model;
}

}  // namespace sy::test
