// One MoE FFN layer, in the stages the literature names:
//   route -> permute -> dispatch -> experts -> combine -> unpermute
// and backward in reverse (dispatch and combine swap roles). The exchange decides where the
// experts run; the layer never talks to a communicator itself. Rows travel in the compute dtype;
// the router's tensors and the gates are in the router's dtype (fp32).
#pragma once
#include "model/backend.h"
#include "model/moe/experts.h"
#include "model/moe/router.h"
#include "model/moe/stage_timer.h"
#include "model/moe/token_exchange.h"

namespace sy {

struct MoELayer {
  Router router;
  Experts experts;
  TokenExchange* exchange = nullptr;
  MoEStageTimer* timer = nullptr;  // benchmarks only
  // aux_loss_scope global, set by the model for training forwards: f_e over the world's groups.
  bool balance_over_world = false;

  // Shared scratch (the Transformer's); null: a private one. Everything below but the router's
  // results, x_recv and y_perm (what backward reads) comes from it: x_perm and out are dead
  // once the forward has used them, the rest lives in one backward.
  Workspace* workspace = nullptr;

  ExchangePlan plan;
  // Rows grouped by global expert (this rank's kept assignments) and as received by the experts:
  // views of grow-only buffers sized for the worst case. Saved: x_recv, y_perm.
  Tensor x_perm_storage, x_recv_storage, y_perm_storage, y_recv_storage;
  Tensor dy_perm_storage, dy_recv_storage, dx_perm_storage;
  Tensor out, du, dgates;

  // u: the normalised input [T, D]. Returns out [T, D].
  const Tensor& forward(Backend& backend, const Tensor& u);
  // Returns du [T, D] (overwritten); parameter gradients accumulate.
  const Tensor& backward(Backend& backend, const Tensor& dout, const Tensor& u, double d_aux,
                         double d_z);

  // train.recompute layer: the experts' h1, h3 are not kept (experts.recompute); this
  // reruns the experts on the saved x_recv, before backward. Routing and the token exchange are
  // not rerun: the router's results, x_recv and y_perm stay saved.
  void recompute_experts(Backend& backend);
  // Drops x_recv, y_perm and the experts' h1, h3 once backward has read them
  // (Attention::release_saved). The router's results ([T, E] and [T, K]) stay.
  void release_saved();

  // The most rows the experts here can receive from a group of `tokens` tokens per rank: every
  // buffer is allocated for it on the first forward, so that no routing ever allocates again.
  int64_t max_rows_received(int64_t tokens) const;

 private:
  Workspace own_;
  Workspace& scratch() { return workspace ? *workspace : own_; }
};

}  // namespace sy
