// The experts of one MoE layer held by this rank: E_local SwiGLU FFNs stored stacked, each run on
// its contiguous segment of the dispatched rows.
//
// Two ways to run them (`kernel`, from moe.expert_kernel):
//   cublas   one SwiGLU block per expert (model/swiglu.cpp): 7 GEMM calls per expert and pass.
//   grouped  each projection over all segments at once with the Backend's grouped GEMMs, the
//            SwiGLU over all rows:
//              h1 = grouped(x, w1), h3 = grouped(x, w3), hidden = silu(h1) * h3,
//              out = grouped(hidden, w2)
//            backward: dhidden = grouped(dout, w2^T), SwiGLU backward (dh1, dh3 over h1,
//            h3, and hidden rebuilt), dW2 += wgrad(hidden, dout), dW1 += wgrad(x, dh1),
//            dW3 += wgrad(x, dh3),
//            dx = grouped(dh1, w1^T) + grouped(dh3, w3^T).
//   auto     grouped on a CUDA backend with bf16 data, cublas elsewhere.
// On a backend whose grouped ops are the defaults (the CPU) both compute the same bits: the
// default grouped ops are the per-expert GEMMs.
#pragma once
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/model_config.h"
#include "model/param.h"
#include "model/swiglu.h"

namespace sy {

struct Experts {
  Param w1, w3;  // [E_local, D, F_e]
  Param w2;      // [E_local, F_e, D]
  ExpertKernel kernel = ExpertKernel::automatic;  // MoeConfig::expert_kernel (see above)

  // Shared scratch (the Transformer's); null: a private one. The output rows and all backward
  // buffers come from it.
  Workspace* workspace = nullptr;
  // train.recompute layer: h1, h3 live in `workspace` too, and the MoE layer reruns
  // forward on the same received rows before backward.
  bool recompute = false;
  // train.recompute none: hidden is saved from forward too, not rebuilt by backward.
  bool keep_hidden = false;
  SwigluActivations acts;          // views of the grow-only [rows, F_e] buffers
  Tensor out_storage, du_storage;  // views of the grow-only [rows, D] buffers (scratch)

  int64_t num_local() const { return w1.value.dim(0); }
  // x [N, D]: rows grouped by local expert, rows_per_expert[j] rows for expert j. Returns [N, D]:
  // `into` when given (the caller's buffer), else a scratch buffer.
  // `max_rows`: the most rows a call can bring (buffers are allocated for it once).
  Tensor forward(Backend& backend, const Tensor& x, const std::vector<int64_t>& rows_per_expert,
                 int64_t max_rows = 0, const Tensor& into = Tensor());
  // Returns dx [N, D] (overwritten); weight gradients accumulate. An expert with no rows gets
  // no gradient contribution (its grad stays as it was, or is cleared if it was zero or stale).
  Tensor backward(Backend& backend, const Tensor& dout, const Tensor& x,
                  const std::vector<int64_t>& rows_per_expert, int64_t max_rows = 0);
  // Drops h1 and h3 once backward has read them (Attention::release_saved).
  void release_saved();

 private:
  bool grouped(const Backend& backend, const Tensor& x) const;
  SwigluWeights expert_weights(int64_t j) const;
  SwigluWeights expert_grads(int64_t j) const;

  Workspace own_;
  Workspace& scratch() { return workspace ? *workspace : own_; }
  Workspace& saved() { return recompute && workspace ? *workspace : own_; }
};

}  // namespace sy
