// The experts of one MoE layer held by this rank: E_local SwiGLU FFNs stored stacked, each run on
// its contiguous segment of the dispatched rows.
#pragma once
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#include "model/swiglu.h"

namespace sy {

struct Experts {
  Param w1, w3;  // [E_local, D, F_e]
  Param w2;      // [E_local, F_e, D]

  SwigluActivations acts;  // [rows, F_e], grow-only
  Tensor out_storage, du_storage;

  int64_t num_local() const { return w1.value.dim(0); }
  // x [N, D]: rows grouped by local expert, rows_per_expert[j] rows for expert j. Returns [N, D].
  // `max_rows`: the most rows a call can bring (buffers are allocated for it once).
  Tensor forward(Backend& backend, const Tensor& x, const std::vector<int64_t>& rows_per_expert,
                 int64_t max_rows = 0);
  // Returns dx [N, D] (overwritten); weight gradients accumulate. An expert with no rows gets
  // no gradient contribution (its grad stays as it was).
  Tensor backward(Backend& backend, const Tensor& dout, const Tensor& x,
                  const std::vector<int64_t>& rows_per_expert, int64_t max_rows = 0);

 private:
  SwigluWeights expert_weights(int64_t j) const;
  SwigluWeights expert_grads(int64_t j) const;
};

}  // namespace sy
