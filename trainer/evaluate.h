// Validation loss as SPEC.md section 5 defines it: batch j holds the micro_batch_size sequences
// starting at offsets (j*B + i) * S of the validation split; each batch is one routing group;
// val_loss is the mean of the batches' lm_loss.
#pragma once
#include <cstdint>
#include <vector>

#include "model/transformer.h"

namespace sy {

double evaluate(Transformer& model, const std::vector<int32_t>& val_tokens, int64_t batch_size,
                int64_t batches);

}  // namespace sy
