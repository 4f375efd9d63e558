#include "trainer/session.h"

#include <stdexcept>

#include "parallel/local_exchange.h"

namespace sy {

std::unique_ptr<Backend> make_backend(const RunConfig& run) {
  if (run.backend == "cpu") {
    if (run.precision != "fp32")
      throw std::runtime_error("run.precision: the cpu backend computes in fp32, got '" +
                               run.precision + "'");
    return make_cpu_backend();
  }
  if (run.backend == "cuda")
    throw std::runtime_error("run.backend: cuda is not available in this build (CPU only)");
  throw std::runtime_error("run.backend: unknown backend '" + run.backend + "'");
}

ModelSession make_model_session(const Config& config) {
  ModelSession session;
  session.backend = make_backend(config.run);
  if (config.moe.num_experts > 0)
    session.exchange = std::make_unique<LocalExchange>(*session.backend, config.moe.num_experts);
  TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
  session.model =
      std::make_unique<Transformer>(*session.backend, std::move(options), session.exchange.get());
  session.model->init_parameters(config.seed);
  return session;
}

}  // namespace sy
