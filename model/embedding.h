// Token embedding: x[t] = table[tokens[t]]. No position embedding (rotary lives in attention).
#pragma once
#include "model/backend.h"
#include "model/param.h"

namespace sy {

struct Embedding {
  Param table;  // [V, D]; also the LM head when embeddings are tied

  // out: [T, D]; tokens: i32 [T]
  void forward(Backend& backend, const Tensor& out, const Tensor& tokens) const;
  // table.grad += scatter of dout by tokens
  void backward(Backend& backend, const Tensor& dout, const Tensor& tokens);
};

}  // namespace sy
