// Gradient synchronisation (SPEC.md section 3). Each rank's backward already scaled its groups'
// gradients by 1/(W*A); summing them over the right group gives the step's gradient:
// non-expert gradients over all W ranks, expert gradients over the expert-data-parallel group
// (the ranks that hold the same experts).
#pragma once
#include <vector>

#include "model/param.h"
#include "parallel/process_groups.h"

namespace sy {

// `backend`: the one the gradients live on; it profiles the all-reduces (profile_region).
void synchronize_gradients(Backend& backend, const std::vector<Param*>& params,
                           ProcessGroups& groups);

// The global gradient L2 norm with every parameter counted once: non-expert gradients are equal
// on all ranks after synchronisation; expert gradients are summed over the EP group, which
// holds each expert once.
double distributed_grad_norm(Backend& backend, const std::vector<Param*>& params,
                             ProcessGroups& groups);

}  // namespace sy
