// The small MoE that the training, checkpoint and data tests train in seconds on CI's CPUs.
#pragma once
#include <cstdint>

#include "trainer/config.h"

namespace sy::test {

// Vocab 256, seq_len 16, two layers of two heads at d_model `width`; four experts of `width`
// each, top-2; dense layers (where moe.layers leaves some) of `ffn_hidden`, 2 x width unless
// given. Everything else is Config's default, for the test to set.
inline Config tiny_moe(int64_t width, int64_t ffn_hidden = 0) {
  Config c;
  c.model = {256, 16, width, 2, 2, ffn_hidden > 0 ? ffn_hidden : 2 * width, true};
  c.moe.num_experts = 4;
  c.moe.routing.top_k = 2;
  c.moe.expert_hidden = width;
  return c;
}

}  // namespace sy::test
