// Validation loss as SPEC.md section 5 defines it: batch j holds the micro_batch_size sequences
// starting at offsets (j*B + i) * S of the validation split; each batch is one routing group;
// val_loss is the mean of the batches' lm_loss. Under W ranks, batch j is evaluated by rank
// j mod W.
#pragma once
#include <cstdint>
#include <vector>

#include "model/transformer.h"
#include "parallel/communicator.h"

namespace sy {

// Collective over `world`: every rank runs the same number of forwards (a rank short of a batch
// in the last round repeats batch 0 and discards it), so that the expert all-to-alls pair up.
double evaluate(Transformer& model, const std::vector<int32_t>& val_tokens, int64_t batch_size,
                int64_t batches, Communicator& world);

}  // namespace sy
