#include "model/embedding.h"

namespace sy {

void Embedding::forward(Backend& backend, const Tensor& out, const Tensor& tokens) const {
  backend.embedding_forward(out, tokens, table.compute_value());
}

void Embedding::backward(Backend& backend, const Tensor& dout, const Tensor& tokens) {
  backend.embedding_backward(table.grad, dout, tokens);  // a scatter-add: always accumulates
  table.grad_is_zero = false;
}

}  // namespace sy
