// Validation loss over a validation set that is a property of the data (docs/config.md, eval):
// sequence i is tokens [i*S, (i+1)*S) of the validation split, i < sequences, and each sequence
// is its own routing group, so that its loss depends only on the weights and its tokens, not on
// micro_batch_size, the rank count or the expert layout. val_loss is the mean of the per-sequence
// losses, added in sequence order on every rank: bitwise the same number under every layout.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/data_config.h"
#include "data/token_file.h"
#include "model/transformer.h"
#include "parallel/communicator.h"

namespace sy {

struct Validation {
  double loss = 0.0;      // mean cross-entropy per counted target, nats
  int64_t sequences = 0;  // of model.seq_len tokens each
  int64_t tokens = 0;     // sequences * seq_len
  int64_t targets = 0;    // the counted targets: tokens, or with a loss mask those it keeps
};

// The validation set in memory: the first sequences * seq_len + 1 tokens of the split, and their
// loss mask (empty for a split without one). With document masking (data.document_mask), the
// documents that start among those tokens; read_validation_set then throws for a split that
// records no boundaries, naming it `name`.
struct ValidationSet {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  bool documents = false;
  std::vector<int64_t> doc_starts;
};
ValidationSet read_validation_set(const TokenSource& val, int64_t sequences, int64_t seq_len,
                                  bool documents = false, const std::string& name = "");

// Collective over `world`: sequence i is evaluated by rank i mod W; every rank runs the same
// number of forwards (a rank with no sequence left in the last round repeats sequence 0 and
// discards it), so that the expert all-to-alls pair up. Throws validation_fit_problem's error
// when the split is too short. With a loss mask val_loss is the sum of the sequences' losses
// over the sum of their counted targets (both added in sequence order), not a mean of means.
Validation evaluate(Transformer& model, const ValidationSet& set, int64_t sequences,
                    Communicator& world);

// The loss in the units a reader compares: "bits_per_byte" (loss / ln 2) for the bytes
// tokenizer, where a token is a byte; "perplexity" (exp(loss)) for any other.
struct LossInUnits {
  std::string name;
  double value = 0.0;
};
LossInUnits loss_in_units(double loss, const std::string& tokenizer);

// "<prefix>/<file name>" for a mixture's file at `path`, with "_2", "_3", ... past the first
// of a name already in `taken` ("val_loss/code" for corpora/code.h5, "val_loss/code_2" for a
// second file of that name); appends it to `taken`.
std::string file_key(const std::string& prefix, const std::string& path,
                     std::vector<std::string>& taken);

// A mixture's own validation sets (data.train_paths, docs/data.md, Mixtures): every file but
// data.path, with the first `sequences` sequences of its /val, keyed "val_loss/<file name>"
// ("val_loss/code" for corpora/code.h5, "val_loss/code_2" for a second file of that name). A file
// whose /val is too short gets a note instead of a key. `files`: open_train_files(data, ...).
struct FileValidation {
  std::string key;
  ValidationSet set;
};
struct MixtureValidation {
  std::vector<FileValidation> files;
  std::vector<std::string> notes;
};
MixtureValidation read_mixture_validation(const DataConfig& data,
                                          const std::vector<TokenFile>& files, int64_t sequences,
                                          int64_t seq_len);
// evaluate() on each of those sets: (key, val_loss) in their order. Collective, like evaluate.
std::vector<std::pair<std::string, double>> evaluate_mixture(Transformer& model,
                                                             const MixtureValidation& mixture,
                                                             int64_t sequences,
                                                             Communicator& world);

}  // namespace sy
