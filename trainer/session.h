// What a run holds: the backend, the token exchange and the model, built from a config.
// Shared by train, eval and (later) generate, so that each builds the model the same way.
#pragma once
#include <memory>

#include "model/backend.h"
#include "model/moe/token_exchange.h"
#include "model/transformer.h"
#include "trainer/config.h"

namespace sy {

struct ModelSession {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<TokenExchange> exchange;
  std::unique_ptr<Transformer> model;
};

// The backend named by run.backend; a clear error where it is not built or not available.
std::unique_ptr<Backend> make_backend(const RunConfig& run);

// Builds and initialises the model (from config.seed) on a world of one.
ModelSession make_model_session(const Config& config);

}  // namespace sy
