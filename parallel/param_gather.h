// Whole tensors from their expert-parallel shards: the experts of a layer are split over the
// P ranks of an EP group, so rank 0's EP group (world ranks 0..P-1) holds every expert once.
#pragma once
#include <vector>

#include "model/backend.h"
#include "parallel/process_groups.h"

namespace sy {

// Collective over the EP group. On world rank 0: the full tensor (experts stacked by global
// index) as doubles. On every other rank: empty. `is_expert`: `local` is this rank's [E/P, ...]
// slice; otherwise `local` is replicated and rank 0's copy is returned.
std::vector<double> gather_to_rank0(const Tensor& local, bool is_expert, ProcessGroups& groups,
                                    Backend& backend);

}  // namespace sy
