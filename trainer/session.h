// What a run holds: the backend, the process groups, the token exchange and the model, built
// from a config. Shared by train and eval, so that each builds the model the same way.
#pragma once
#include <mpi.h>

#include <memory>

#include "model/backend.h"
#include "model/moe/token_exchange.h"
#include "model/transformer.h"
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
std::unique_ptr<Backend> make_backend(const RunConfig& run);

// Collective over `world`: builds the groups, checks that every rank has the same config, and
// builds and initialises the model (from config.seed) with this rank's experts. Problems found
// on any rank are raised on all of them as CollectiveError.
ModelSession make_model_session(const Config& config, MPI_Comm world);

}  // namespace sy
