// What a run holds: the backend, the process groups, the token exchange and the model, built
// from a config. Shared by train and eval, so that each builds the model the same way.
#pragma once
#include <memory>

#include "model/backend.h"
#include "model/moe/token_exchange.h"
#include "model/transformer.h"
#include "parallel/launch.h"
#include "parallel/process_groups.h"
#include "trainer/config.h"

namespace sy {

struct ModelSession {
  // Declaration order is destruction order reversed: the model uses the exchange, which uses
  // the groups, which use the backend.
  std::unique_ptr<Backend> backend;
  ProcessGroups groups;
  std::unique_ptr<TokenExchange> exchange;
  std::unique_ptr<Transformer> model;
};

// The backend named by run.backend; a clear error where it is not built or not available.
// cuda takes device `local_rank` modulo the visible devices (local_rank: this rank's index on
// its host, host_local_rank) and names world rank `rank` in its errors.
std::unique_ptr<Backend> make_backend(const RunConfig& run, int rank = 0, int local_rank = 0);

// Collective over `world`: builds the groups, checks that every rank has the same config, and
// builds and initialises the model (from config.seed) with this rank's experts. Problems found
// on any rank are raised on all of them as CollectiveError.
ModelSession make_model_session(const Config& config, CommHandle world);

}  // namespace sy
