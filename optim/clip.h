// Gradient norm and clipping by the global L2 norm (SPEC.md section 4).
//
// The norm is computed in two parts so that a distributed caller can reduce them: the local sums
// of squares (below), then a caller-supplied `finish` that adds up the ranks' shares. Non-expert
// gradients are identical on every rank after their all-reduce, so they count once; expert
// gradients differ across an expert-parallel group, so their squares are summed over it.
#pragma once
#include <functional>
#include <vector>

#include "model/backend.h"
#include "model/param.h"

namespace sy {

// Local sums of squared gradients, split by Param::is_expert: Backend::grad_norm_squares, one
// pass and one host synchronisation on a device.
struct GradSquares {
  double shared = 0.0;  // non-expert parameters
  double expert = 0.0;  // expert parameters held by this rank
};

GradSquares grad_squares(Backend& backend, const std::vector<Param*>& params);

// shared + expert: the squared global norm on a single rank.
double global_grad_norm_squared(Backend& backend, const std::vector<Param*>& params);

// sqrt(finish(local squares)); `finish` reduces across ranks and returns the squared global norm.
// Without one, the squares are this rank's alone (single-rank training).
double global_grad_norm(Backend& backend, const std::vector<Param*>& params,
                        const std::function<double(const GradSquares&)>& finish = nullptr);

// min(1, grad_clip / (total_norm + 1e-6)) when grad_clip > 0, else 1 (also for a NaN norm: the
// caller must notice a non-finite norm). `total_norm` is the global norm before clipping; it is
// what the caller logs as grad_norm. Optimizer::step(..., grad_scale) applies it in its pass.
double clip_factor(double total_norm, double grad_clip);

// Multiplies every gradient by clip_factor(total_norm, grad_clip) when it is below 1 and
// returns it.
double clip_gradients(Backend& backend, std::vector<Param*>& params, double total_norm,
                      double grad_clip);

}  // namespace sy
