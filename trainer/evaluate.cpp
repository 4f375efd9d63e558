#include "trainer/evaluate.h"

#include "data/sampler.h"

namespace sy {

double evaluate(Transformer& model, const std::vector<int32_t>& val_tokens, int64_t batch_size,
                int64_t batches, Communicator& world) {
  if (batches <= 0) return 0.0;
  const int64_t S = model.options().model.seq_len, T = batch_size * S;
  const int64_t W = world.size(), rank = world.rank();
  std::vector<int32_t> inputs(T), targets(T);
  std::vector<double> loss_sum{0.0};
  const int64_t rounds = (batches + W - 1) / W;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t j = round * W + rank;
    const bool padding = j >= batches;
    validation_batch(val_tokens, padding ? 0 : j, batch_size, S, inputs.data(), targets.data());
    const double lm_loss = model.forward_backward(inputs, targets, batch_size, false, 0.0).lm_loss;
    if (!padding) loss_sum[0] += lm_loss;
  }
  world.all_reduce_host(loss_sum, ReduceOp::sum);
  return loss_sum[0] / batches;
}

}  // namespace sy
