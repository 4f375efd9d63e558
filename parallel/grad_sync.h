// Gradient synchronisation (SPEC.md section 3). Each rank's backward already scaled its groups'
// gradients by 1/(W*A); summing them over the right group gives the step's gradient:
// non-expert gradients over all W ranks, expert gradients over the expert-data-parallel group
// (the ranks that hold the same experts).
#pragma once
#include <span>
#include <vector>

#include "model/param.h"
#include "parallel/process_groups.h"

namespace sy {

// `backend`: the one the gradients live on; it profiles the all-reduces (profile_region).
void synchronize_gradients(Backend& backend, const std::vector<Param*>& params,
                           ProcessGroups& groups);

// The same sums, started while backward still runs (parallel.overlap_grad_reduce): the model
// hands over each layer's parameters as their gradients become final (in backward's order,
// the same on every rank) and reduce() starts their all-reduces on the communicators' side
// streams; finish() starts those of the parameters not handed over and makes the backward's
// stream wait for them all. Each sum has synchronize_gradients's bits. When nothing was handed
// over (overlap off, or communicators that cannot reduce in the background: MPI, where
// overlaps() is false and the caller should hand nothing over), finish() is
// synchronize_gradients.
class GradientReducer {
 public:
  GradientReducer(Backend& backend, ProcessGroups& groups) : backend_(backend), groups_(groups) {}
  bool overlaps() const;
  void reduce(std::span<Param* const> params);
  void finish(const std::vector<Param*>& params);

 private:
  Backend& backend_;
  ProcessGroups& groups_;
  std::vector<const Param*> started_;  // handed over this step, in order
};

// The global gradient L2 norm with every parameter counted once: non-expert gradients are equal
// on all ranks after synchronisation; expert gradients are summed over the EP group, which
// holds each expert once.
double distributed_grad_norm(Backend& backend, const std::vector<Param*>& params,
                             ProcessGroups& groups);

}  // namespace sy
