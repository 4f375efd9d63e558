#include "data/sampler.h"

#include <stdexcept>
#include <string>

#include "model/rng.h"

namespace sy {
namespace {

// Domain separation: the sampler's streams start from this key, so that they never coincide
// with the parameter-initialisation streams drawn from the same seed.
uint64_t sampler_domain() { return hash_string("sampler"); }

void copy_sequence(const std::vector<int32_t>& tokens, int64_t start, int64_t seq_len,
                   int32_t* inputs, int32_t* targets) {
  const int32_t* source = tokens.data() + start;
  for (int64_t t = 0; t < seq_len; t++) {
    inputs[t] = source[t];
    targets[t] = source[t + 1];
  }
}

}  // namespace

StepSampler::StepSampler(const std::vector<int32_t>& train_tokens, int64_t seq_len, uint64_t seed)
    : train_tokens_(&train_tokens),
      seq_len_(seq_len),
      stream_key_(key_combine(sampler_domain(), seed)) {
  if (seq_len < 1)
    throw std::runtime_error("sampler: sequence length " + std::to_string(seq_len) +
                             " must be at least 1");
  const int64_t num_tokens = static_cast<int64_t>(train_tokens.size());
  if (num_tokens < seq_len + 1)
    throw std::runtime_error("training split has " + std::to_string(num_tokens) +
                             " tokens; sequences of " + std::to_string(seq_len) + " need " +
                             std::to_string(seq_len + 1));
}

int64_t StepSampler::offset(int64_t step, int64_t sequence) const {
  if (step < 0 || sequence < 0)
    throw std::runtime_error("sampler: step " + std::to_string(step) + " and sequence " +
                             std::to_string(sequence) + " must be non-negative");
  const uint64_t key = key_combine(key_combine(stream_key_, static_cast<uint64_t>(step)),
                                   static_cast<uint64_t>(sequence));
  CounterRng rng(key);
  // below(N - S) is in [0, N - S - 1]: the last target, at offset + S, is token N - 1 at most.
  return static_cast<int64_t>(rng.below(static_cast<uint64_t>(num_tokens() - seq_len_)));
}

void StepSampler::group(int64_t step, int64_t group_index, int64_t batch_size, int32_t* inputs,
                        int32_t* targets) const {
  if (group_index < 0 || batch_size < 1)
    throw std::runtime_error("sampler: group " + std::to_string(group_index) + " of size " +
                             std::to_string(batch_size) + " is not a valid routing group");
  for (int64_t b = 0; b < batch_size; b++) {
    const int64_t start = offset(step, group_index * batch_size + b);
    copy_sequence(*train_tokens_, start, seq_len_, inputs + b * seq_len_, targets + b * seq_len_);
  }
}

std::string validation_fit_problem(int64_t sequences, int64_t seq_len, int64_t val_tokens) {
  const int64_t fit = max_validation_batches(val_tokens, 1, seq_len);
  if (sequences <= fit) return "";
  const auto plural = [](int64_t n, const char* word) {
    return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
  };
  std::string text = "eval.tokens " + std::to_string(sequences * seq_len) + " needs " +
                     plural(sequences, "sequence") + " of " + std::to_string(seq_len) +
                     " tokens; the validation split has " + std::to_string(val_tokens) +
                     " tokens: at most " + plural(fit, "sequence");
  // A sequence needs one token more than its length: the target of its last position.
  return text + (fit > 0 ? "; set eval.tokens <= " + std::to_string(fit * seq_len)
                         : "; set eval.tokens: 0, or a shorter model.seq_len");
}

int64_t max_validation_batches(int64_t val_tokens, int64_t batch_size, int64_t seq_len) {
  if (batch_size < 1 || seq_len < 1 || val_tokens < 1) return 0;
  // Batch j needs tokens up to (j+1)*B*S inclusive (the last target).
  return (val_tokens - 1) / (batch_size * seq_len);
}

void validation_batch(const std::vector<int32_t>& val_tokens, int64_t batch_index,
                      int64_t batch_size, int64_t seq_len, int32_t* inputs, int32_t* targets) {
  if (batch_index < 0 || batch_size < 1 || seq_len < 1)
    throw std::runtime_error("validation batch " + std::to_string(batch_index) + " of " +
                             std::to_string(batch_size) + " x " + std::to_string(seq_len) +
                             " is not valid");
  const int64_t num_tokens = static_cast<int64_t>(val_tokens.size());
  const int64_t num_batches = batch_index + 1;
  const int64_t needed = num_batches * batch_size * seq_len + 1;
  if (num_tokens < needed)
    throw std::runtime_error("validation split has " + std::to_string(num_tokens) + " tokens; " +
                             std::to_string(num_batches) + " batches of " +
                             std::to_string(batch_size) + " x " + std::to_string(seq_len) +
                             " need " + std::to_string(needed));
  for (int64_t i = 0; i < batch_size; i++) {
    const int64_t start = (batch_index * batch_size + i) * seq_len;
    copy_sequence(val_tokens, start, seq_len, inputs + i * seq_len, targets + i * seq_len);
  }
}

}  // namespace sy
