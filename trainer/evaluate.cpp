#include "trainer/evaluate.h"

#include "data/sampler.h"

namespace sy {

double evaluate(Transformer& model, const std::vector<int32_t>& val_tokens, int64_t batch_size,
                int64_t batches) {
  const int64_t S = model.options().model.seq_len, T = batch_size * S;
  std::vector<int32_t> inputs(T), targets(T);
  double loss_sum = 0.0;
  for (int64_t j = 0; j < batches; ++j) {
    validation_batch(val_tokens, j, batch_size, S, inputs.data(), targets.data());
    loss_sum += model.forward_backward(inputs, targets, batch_size, false, 0.0).lm_loss;
  }
  return batches > 0 ? loss_sum / batches : 0.0;
}

}  // namespace sy
