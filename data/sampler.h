// Training and validation batches (docs/data.md, Sampling). A training batch is a pure function of
// (seed, step): the sampler holds no position, so resuming at step s needs only s.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/mixture_interleave.h"
#include "data/token_window.h"

namespace sy {

class StepSampler {
 public:
  // Keeps a pointer to train_tokens, which must outlive the sampler. Throws if the split is
  // shorter than seq_len + 1 tokens (one sequence plus its shifted target).
  StepSampler(const std::vector<int32_t>& train_tokens, int64_t seq_len, uint64_t seed);
  // The same batches from a split read window by window (one read of seq_len + 1 tokens per
  // sequence), e.g. a token file on disk (open_token_file).
  StepSampler(std::shared_ptr<const TokenSource> train_tokens, int64_t seq_len, uint64_t seed);
  // A mixture (data.train_paths): each sequence comes from source j with probability
  // weights[j] / sum(weights), drawn per (step, sequence) from a stream of its own, then from a
  // window of that source drawn as above. One source is exactly the constructor above. Throws
  // naming `names[j]` for a source shorter than seq_len + 1 tokens, and for weights that are
  // negative, not finite, all zero or not one per source.
  StepSampler(std::vector<std::shared_ptr<const TokenSource>> sources, std::vector<double> weights,
              std::vector<std::string> names, int64_t seq_len, uint64_t seed);

  // Start of sequence `sequence` of step `step`: uniform in [0, N - S - 1], drawn by
  // CounterRng(key_combine(key_combine(key_combine(hash_string("sampler"), seed), step),
  // sequence)).below(N - S); with sample_epochs(), its epoch window's start.
  int64_t offset(int64_t step, int64_t sequence) const;
  // The source of sequence `sequence` of step `step` (0 with one source, no draw): the first j
  // with u < (w_0 + .. + w_j) / sum(w), u = CounterRng(key_combine(key_combine(key_combine(
  // hash_string("sampler mixture"), seed), step), sequence)).uniform(); with sample_epochs(),
  // the interleave's source of the run's sequence instead.
  int64_t source(int64_t step, int64_t sequence) const { return window(step, sequence).first; }

  // Routing group `group_index` of step `step`: sequences [g*B, (g+1)*B) of the step's batch.
  // inputs and targets each receive B*S tokens, token t of sequence b at [b*S + t]; the targets
  // are the inputs shifted by one token, kIgnoreTarget where a masked source's loss mask is 0.
  // It then hints the same group of step + 1 to the token source (TokenSource::prefetch): the
  // draws are known in advance, so a file on disk is read while this step computes.
  // With mask_documents(), doc_start (B*S values, same layout) receives each token's document
  // start in its sequence (document_window), and targets that would cross into the next
  // document are kIgnoreTarget; doc_start must then not be null.
  void group(int64_t step, int64_t group_index, int64_t batch_size, int32_t* inputs,
             int32_t* targets, int32_t* doc_start = nullptr) const;

  // data.document_mask: group() masks documents from now on. Throws "<name>: records no
  // document boundaries (...)" for the first source without them.
  void mask_documents();
  bool masks_documents() const { return mask_documents_; }

  // data.sampling: epoch (docs/data.md, "Epochs"): from now on each source is cut into
  // epoch_windows(j) windows of S + 1 tokens starting at multiples of S. The run's q-th
  // sequence, q = step * sequences_per_step + sequence, is the n-th of its source j (one
  // source: j = 0, n = q; a mixture: MixtureInterleave's source and ordinal of q), and takes
  // window P_e(n mod W_j) of that source's epoch e = n / W_j, P_e a KeyedPermutation of the W_j
  // windows keyed by (seed, e, and j past source 0): every window once an epoch of its source,
  // in a new order each epoch, still a pure function of (seed, step, sequence). Throws for
  // sequences_per_step < 1 and for a mixture weight too small for the interleave's period.
  void sample_epochs(int64_t sequences_per_step);
  bool samples_epochs() const { return sequences_per_step_ > 0; }
  // W_j = (N_j - 1) / S: the windows of source j that epoch sampling takes.
  int64_t epoch_windows(int64_t source = 0) const;
  // The epochs of source j that `steps` steps take: steps * sequences_per_step * share_j / W_j
  // (share_j = 1 for one source; epoch sampling only).
  double epochs_after(int64_t steps, int64_t source = 0) const;
  // The share of the run's sequences that source j takes (epoch sampling: the interleave's).
  double share(int64_t source) const;
  const std::string& source_name(int64_t source) const { return names_[source]; }

  int64_t seq_len() const { return seq_len_; }
  int64_t num_tokens() const { return sources_[0]->size(); }  // of source 0
  int64_t num_sources() const { return static_cast<int64_t>(sources_.size()); }
  // Whether any source has a loss mask (some targets may be kIgnoreTarget).
  bool masked() const;
  // "a.h5 70%, b.h5 30%": each source's name and share of the sequences.
  std::string describe_sources() const;

 private:
  // Which source sequence `sequence` of step `step` comes from, and where it starts there.
  std::pair<int64_t, int64_t> window(int64_t step, int64_t sequence) const;
  // source()'s weighted draw (random sampling).
  int64_t drawn_source(int64_t step, int64_t sequence) const;

  std::vector<std::shared_ptr<const TokenSource>> sources_;
  std::vector<double> cumulative_;  // (w_0 + .. + w_j) / sum(w); the last is 1
  std::vector<std::string> names_;
  std::vector<double> weights_;
  int64_t seq_len_;
  uint64_t stream_key_;   // key_combine(sampler domain, seed): the per-run root of all draws
  uint64_t mixture_key_;  // the same for the source draws
  uint64_t epoch_key_;    // the same for epoch sampling's permutations
  bool mask_documents_ = false;
  int64_t sequences_per_step_ = 0;  // > 0: epoch sampling
  std::optional<MixtureInterleave> interleave_;  // epoch sampling of a mixture
};

// Document masking (docs/data.md, "Document masking") of the window of seq_len + 1 tokens that
// starts at token `start` of a split whose documents start at `starts` (ascending): doc_start[s],
// s < seq_len, is the position in the window where token start + s's document begins (0 for a
// document that began before the window), and targets[s] becomes kIgnoreTarget where token
// start + s + 1 starts a document: a document's first token is not predicted from the one
// before it.
void document_window(const std::vector<int64_t>& starts, int64_t start, int64_t seq_len,
                     int32_t* doc_start, int32_t* targets);

// The error for a token file's split without document boundaries, naming it.
std::string no_documents_error(const std::string& name);

// The validation set is a property of the data: sequence i is tokens [i*S, (i+1)*S) of the
// validation split (targets shifted by one), for i < eval.tokens / S, whatever the batch shape.
// Returns "" when `sequences` of seq_len fit in a split of val_tokens tokens, else the error for
// the user, naming what would fit ("eval.tokens 40960 needs 10 sequences of 4096 tokens; the
// validation split has 4118 tokens: at most 1 sequence; set eval.tokens <= 4096").
std::string validation_fit_problem(int64_t sequences, int64_t seq_len, int64_t val_tokens);

// Validation batch j: the B sequences starting at token offsets (j*B + i) * S, i = 0..B-1,
// with targets shifted by one (kIgnoreTarget where a masked split's mask is 0); same [b*S + t]
// layout as StepSampler::group. Throws
// "validation split has N tokens; J batches of B x S need M" if the split is too short.
void validation_batch(const std::vector<int32_t>& val_tokens, int64_t batch_index,
                      int64_t batch_size, int64_t seq_len, int32_t* inputs, int32_t* targets);
// The same with the split's loss mask (empty: none; else one value per token).
void validation_batch(const std::vector<int32_t>& val_tokens, const std::vector<uint8_t>& val_mask,
                      int64_t batch_index, int64_t batch_size, int64_t seq_len, int32_t* inputs,
                      int32_t* targets);
// The same from a split read by window: one read of the batch's B*S + 1 tokens.
void validation_batch(const TokenSource& val_tokens, int64_t batch_index, int64_t batch_size,
                      int64_t seq_len, int32_t* inputs, int32_t* targets);

// The tokens the first `sequences` validation sequences need, [0, sequences * S + 1) of the split
// (fewer if the split is shorter; none if sequences <= 0), read in one window: the validation set
// kept in memory while the split stays on disk.
std::vector<int32_t> read_validation_tokens(const TokenSource& val_tokens, int64_t sequences,
                                            int64_t seq_len);
// Their loss mask, or nothing for a split without one.
std::vector<uint8_t> read_validation_mask(const TokenSource& val_tokens, int64_t sequences,
                                          int64_t seq_len);

// How many validation batches of batch_size x seq_len the split holds (0 if none).
int64_t max_validation_batches(int64_t val_tokens, int64_t batch_size, int64_t seq_len);

}  // namespace sy
