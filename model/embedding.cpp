#include "model/embedding.h"

namespace sy {

void Embedding::forward(Backend& backend, const Tensor& out, const Tensor& tokens) const {
  backend.embedding_forward(out, tokens, table.compute_value());
}

void Embedding::backward(Backend& backend, const Tensor& dout, const Tensor& tokens) {
  if (table.take_grad_needs_clear()) backend.fill(table.grad, 0.0);
  backend.embedding_backward(table.grad, dout, tokens);  // a scatter-add: always accumulates
}

}  // namespace sy
