#include "data/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "data/permutation.h"
#include "model/backend.h"
#include "model/rng.h"

namespace sy {
namespace {

// Domain separation: the sampler's streams start from this key, so that they never coincide
// with the parameter-initialisation streams drawn from the same seed.
uint64_t sampler_domain() { return hash_string("sampler"); }

// window holds seq_len + 1 tokens: the inputs, and the same shifted by one as targets.
void split_window(const int32_t* window, int64_t seq_len, int32_t* inputs, int32_t* targets) {
  for (int64_t t = 0; t < seq_len; t++) {
    inputs[t] = window[t];
    targets[t] = window[t + 1];
  }
}

}  // namespace

StepSampler::StepSampler(const std::vector<int32_t>& train_tokens, int64_t seq_len, uint64_t seed)
    : StepSampler(std::make_shared<TokensInMemory>(train_tokens), seq_len, seed) {}

StepSampler::StepSampler(std::shared_ptr<const TokenSource> train_tokens, int64_t seq_len,
                         uint64_t seed)
    : StepSampler(std::vector<std::shared_ptr<const TokenSource>>{std::move(train_tokens)}, {1.0},
                  {"training split"}, seq_len, seed) {}

StepSampler::StepSampler(std::vector<std::shared_ptr<const TokenSource>> sources,
                         std::vector<double> weights, std::vector<std::string> names,
                         int64_t seq_len, uint64_t seed)
    : sources_(std::move(sources)),
      names_(std::move(names)),
      weights_(std::move(weights)),
      seq_len_(seq_len),
      stream_key_(key_combine(sampler_domain(), seed)),
      mixture_key_(key_combine(hash_string("sampler mixture"), seed)),
      epoch_key_(key_combine(hash_string("sampler epoch"), seed)) {
  if (seq_len < 1)
    throw std::runtime_error("sampler: sequence length " + std::to_string(seq_len) +
                             " must be at least 1");
  if (sources_.empty()) throw std::runtime_error("sampler: no training source");
  if (weights_.size() != sources_.size() || names_.size() != sources_.size())
    throw std::runtime_error("sampler: " + std::to_string(sources_.size()) + " sources but " +
                             std::to_string(weights_.size()) + " weights");
  double total = 0.0;
  for (size_t j = 0; j < sources_.size(); ++j) {
    const int64_t tokens = sources_[j] ? sources_[j]->size() : 0;
    if (tokens < seq_len + 1)
      throw std::runtime_error(names_[j] + " has " + std::to_string(tokens) +
                               " tokens; sequences of " + std::to_string(seq_len) + " need " +
                               std::to_string(seq_len + 1));
    if (!(weights_[j] >= 0) || !std::isfinite(weights_[j]))
      throw std::runtime_error(names_[j] + ": weight " + std::to_string(weights_[j]) +
                               " must be finite and >= 0");
    total += weights_[j];
  }
  if (!(total > 0)) throw std::runtime_error("sampler: the weights sum to 0");
  double running = 0.0;
  for (double w : weights_) cumulative_.push_back((running += w) / total);
  cumulative_.back() = 1.0;  // rounding must not leave u in [sum, 1) without a source
}

int64_t StepSampler::drawn_source(int64_t step, int64_t sequence) const {
  if (sources_.size() == 1) return 0;
  const uint64_t key = key_combine(key_combine(mixture_key_, static_cast<uint64_t>(step)),
                                   static_cast<uint64_t>(sequence));
  const double u = CounterRng(key).uniform();
  const auto found = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
  return std::min<int64_t>(found - cumulative_.begin(), num_sources() - 1);
}

std::string StepSampler::describe_sources() const {
  std::string out;
  for (size_t j = 0; j < sources_.size(); ++j) {
    char percent[32];
    std::snprintf(percent, sizeof percent, " %.3g%%", 100.0 * share(static_cast<int64_t>(j)));
    out += (j ? ", " : "") + names_[j] + percent;
  }
  return out;
}

std::pair<int64_t, int64_t> StepSampler::window(int64_t step, int64_t sequence) const {
  if (step < 0 || sequence < 0)
    throw std::runtime_error("sampler: step " + std::to_string(step) + " and sequence " +
                             std::to_string(sequence) + " must be non-negative");
  if (samples_epochs()) {
    if (sequence >= sequences_per_step_)
      throw std::logic_error("sampler: sequence " + std::to_string(sequence) + " of a step of " +
                             std::to_string(sequences_per_step_));
    const int64_t q = step * sequences_per_step_ + sequence;
    const int64_t j = interleave_ ? interleave_->source(q) : 0;
    const int64_t n = interleave_ ? interleave_->ordinal(q) : q;
    const int64_t windows = epoch_windows(j);
    // Source 0 keeps the key of a one-source run: the same file alone gives the same order.
    uint64_t key = key_combine(epoch_key_, static_cast<uint64_t>(n / windows));
    if (j > 0) key = key_combine(key, static_cast<uint64_t>(j));
    const KeyedPermutation order(static_cast<uint64_t>(windows), key);
    return {j, static_cast<int64_t>(order(static_cast<uint64_t>(n % windows))) * seq_len_};
  }
  const int64_t j = drawn_source(step, sequence);
  const uint64_t key = key_combine(key_combine(stream_key_, static_cast<uint64_t>(step)),
                                   static_cast<uint64_t>(sequence));
  CounterRng rng(key);
  // below(N - S) is in [0, N - S - 1]: the last target, at offset + S, is token N - 1 at most.
  return {j,
          static_cast<int64_t>(rng.below(static_cast<uint64_t>(sources_[j]->size() - seq_len_)))};
}

bool StepSampler::masked() const {
  return std::any_of(sources_.begin(), sources_.end(),
                     [](const auto& source) { return source->masked(); });
}

int64_t StepSampler::offset(int64_t step, int64_t sequence) const {
  return window(step, sequence).second;
}

void StepSampler::mask_documents() {
  for (size_t j = 0; j < sources_.size(); ++j)
    if (!sources_[j]->document_starts()) throw std::runtime_error(no_documents_error(names_[j]));
  mask_documents_ = true;
}

void StepSampler::sample_epochs(int64_t sequences_per_step) {
  if (sequences_per_step < 1)
    throw std::logic_error("sampler: " + std::to_string(sequences_per_step) + " sequences a step");
  if (sources_.size() > 1) interleave_.emplace(weights_, names_);
  sequences_per_step_ = sequences_per_step;
}

int64_t StepSampler::epoch_windows(int64_t source) const {
  return (sources_[source]->size() - 1) / seq_len_;
}

double StepSampler::share(int64_t source) const {
  if (interleave_) return interleave_->share(source);
  return cumulative_[source] - (source ? cumulative_[source - 1] : 0.0);
}

double StepSampler::epochs_after(int64_t steps, int64_t source) const {
  return static_cast<double>(steps) * static_cast<double>(sequences_per_step_) * share(source) /
         static_cast<double>(epoch_windows(source));
}

void StepSampler::group(int64_t step, int64_t group_index, int64_t batch_size, int32_t* inputs,
                        int32_t* targets, int32_t* doc_start) const {
  if (group_index < 0 || batch_size < 1)
    throw std::runtime_error("sampler: group " + std::to_string(group_index) + " of size " +
                             std::to_string(batch_size) + " is not a valid routing group");
  if (mask_documents_ && !doc_start)
    throw std::logic_error("sampler: document masking needs a doc_start buffer");
  std::vector<int32_t> tokens(seq_len_ + 1);
  for (int64_t b = 0; b < batch_size; b++) {
    const auto [j, start] = window(step, group_index * batch_size + b);
    sources_[j]->read(start, seq_len_ + 1, tokens.data());
    split_window(tokens.data(), seq_len_, inputs + b * seq_len_, targets + b * seq_len_);
    mask_targets(*sources_[j], start + 1, seq_len_, targets + b * seq_len_);
    if (mask_documents_)
      document_window(*sources_[j]->document_starts(), start, seq_len_, doc_start + b * seq_len_,
                      targets + b * seq_len_);
  }
  for (int64_t b = 0; b < batch_size; b++) {
    const auto [j, start] = window(step + 1, group_index * batch_size + b);
    sources_[j]->prefetch(start, seq_len_ + 1);
  }
}

void document_window(const std::vector<int64_t>& starts, int64_t start, int64_t seq_len,
                     int32_t* doc_start, int32_t* targets) {
  // The first document start after `start`; the window's first token belongs to the document
  // before it, which begins at position 0 of the window as far as the window can see.
  auto next = std::upper_bound(starts.begin(), starts.end(), start);
  int32_t current = 0;
  for (int64_t s = 0; s < seq_len; ++s) {
    if (next != starts.end() && *next == start + s) {
      current = static_cast<int32_t>(s);
      ++next;
    }
    doc_start[s] = current;
    // The target of position s is token start + s + 1: the first token of the next document.
    if (next != starts.end() && *next == start + s + 1) targets[s] = kIgnoreTarget;
  }
}

std::string no_documents_error(const std::string& name) {
  return name +
         ": records no document boundaries, which data.document_mask needs (prepare it "
         "again with this version's prepare-data: docs/data.md, \"Document masking\")";
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
  validation_batch(TokensInMemory(val_tokens), batch_index, batch_size, seq_len, inputs, targets);
}

void validation_batch(const TokenSource& val_tokens, int64_t batch_index, int64_t batch_size,
                      int64_t seq_len, int32_t* inputs, int32_t* targets) {
  if (batch_index < 0 || batch_size < 1 || seq_len < 1)
    throw std::runtime_error("validation batch " + std::to_string(batch_index) + " of " +
                             std::to_string(batch_size) + " x " + std::to_string(seq_len) +
                             " is not valid");
  const int64_t num_tokens = val_tokens.size();
  const int64_t num_batches = batch_index + 1;
  const int64_t needed = num_batches * batch_size * seq_len + 1;
  if (num_tokens < needed)
    throw std::runtime_error("validation split has " + std::to_string(num_tokens) + " tokens; " +
                             std::to_string(num_batches) + " batches of " +
                             std::to_string(batch_size) + " x " + std::to_string(seq_len) +
                             " need " + std::to_string(needed));
  // The batch's sequences are neighbours in the split: one read covers them all.
  std::vector<int32_t> window(batch_size * seq_len + 1);
  val_tokens.read(batch_index * batch_size * seq_len, batch_size * seq_len + 1, window.data());
  for (int64_t i = 0; i < batch_size; i++)
    split_window(window.data() + i * seq_len, seq_len, inputs + i * seq_len, targets + i * seq_len);
  mask_targets(val_tokens, batch_index * batch_size * seq_len + 1, batch_size * seq_len, targets);
}

std::vector<int32_t> read_validation_tokens(const TokenSource& val_tokens, int64_t sequences,
                                            int64_t seq_len) {
  if (sequences <= 0 || seq_len < 1) return {};
  const int64_t count = std::min(val_tokens.size(), sequences * seq_len + 1);
  std::vector<int32_t> tokens(count);
  val_tokens.read(0, count, tokens.data());
  return tokens;
}

std::vector<uint8_t> read_validation_mask(const TokenSource& val_tokens, int64_t sequences,
                                          int64_t seq_len) {
  if (!val_tokens.masked() || sequences <= 0 || seq_len < 1) return {};
  const int64_t count = std::min(val_tokens.size(), sequences * seq_len + 1);
  std::vector<uint8_t> mask(count);
  val_tokens.read_mask(0, count, mask.data());
  return mask;
}

void validation_batch(const std::vector<int32_t>& val_tokens, const std::vector<uint8_t>& val_mask,
                      int64_t batch_index, int64_t batch_size, int64_t seq_len, int32_t* inputs,
                      int32_t* targets) {
  validation_batch(TokensInMemory(val_tokens, val_mask), batch_index, batch_size, seq_len, inputs,
                   targets);
}

}  // namespace sy
