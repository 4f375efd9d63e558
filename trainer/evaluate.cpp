#include "trainer/evaluate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numbers>
#include <stdexcept>

#include "data/sampler.h"

namespace sy {

ValidationSet read_validation_set(const TokenSource& val, int64_t sequences, int64_t seq_len,
                                  bool documents, const std::string& name) {
  ValidationSet set;
  set.tokens = read_validation_tokens(val, sequences, seq_len);
  set.mask = read_validation_mask(val, sequences, seq_len);
  if (!documents) return set;
  const std::vector<int64_t>* starts = val.document_starts();
  if (!starts) throw std::runtime_error(no_documents_error(name));
  set.documents = true;
  const auto end =
      std::lower_bound(starts->begin(), starts->end(), static_cast<int64_t>(set.tokens.size()));
  set.doc_starts.assign(starts->begin(), end);
  return set;
}

Validation evaluate(Transformer& model, const ValidationSet& set, int64_t sequences,
                    Communicator& world) {
  Validation result;
  if (sequences <= 0) return result;
  const int64_t S = model.options().model.seq_len;
  const std::string problem =
      validation_fit_problem(sequences, S, static_cast<int64_t>(set.tokens.size()));
  if (!problem.empty()) throw std::runtime_error(problem);
  const int64_t W = world.size(), rank = world.rank();
  std::vector<int32_t> inputs(S), targets(S), doc_start(set.documents ? S : 0);
  // [sequences]: slot i holds sequence i's loss on the rank that evaluated it and 0 elsewhere, so
  // the all-reduce adds only zeros to each loss (exact in any order). Masked: its loss summed
  // over its counted targets, and their count in the second half.
  const bool masked = !set.mask.empty() || set.documents;
  std::vector<double> sequence_loss(masked ? 2 * sequences : sequences, 0.0);
  const int64_t rounds = (sequences + W - 1) / W;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t i = round * W + rank;
    const bool padding = i >= sequences;
    validation_batch(set.tokens, set.mask, padding ? 0 : i, 1, S, inputs.data(), targets.data());
    if (set.documents)
      document_window(set.doc_starts, (padding ? 0 : i) * S, S, doc_start.data(), targets.data());
    const GroupStats stats =
        model.forward_backward(inputs, targets, 1, false, 0.0, std::nullopt, doc_start);
    if (padding) continue;
    if (!masked) {
      sequence_loss[i] = stats.lm_loss;
    } else {
      sequence_loss[i] = stats.lm_loss_sum;
      sequence_loss[sequences + i] = static_cast<double>(stats.lm_targets);
    }
  }
  world.all_reduce_host(sequence_loss, ReduceOp::sum);
  double sum = 0.0, targets_counted = 0.0;  // in sequence order: the same additions whatever W
  for (int64_t i = 0; i < sequences; ++i) sum += sequence_loss[i];
  if (!masked) {
    result.loss = sum / static_cast<double>(sequences);
    result.targets = sequences * S;
  } else {
    // The mean over every counted target of the set, as training's objective weighs them.
    for (int64_t i = 0; i < sequences; ++i) targets_counted += sequence_loss[sequences + i];
    result.loss = targets_counted > 0 ? sum / targets_counted : 0.0;
    result.targets = static_cast<int64_t>(targets_counted);
  }
  result.sequences = sequences;
  result.tokens = sequences * S;
  return result;
}

LossInUnits loss_in_units(double loss, const std::string& tokenizer) {
  if (tokenizer == "bytes") return {"bits_per_byte", loss / std::numbers::ln2};
  return {"perplexity", std::exp(loss)};
}

std::string file_key(const std::string& prefix, const std::string& path,
                     std::vector<std::string>& taken) {
  const std::string stem = prefix + "/" + std::filesystem::path(path).stem().string();
  std::string key = stem;
  for (int n = 2; std::find(taken.begin(), taken.end(), key) != taken.end(); ++n)
    key = stem + "_" + std::to_string(n);
  taken.push_back(key);
  return key;
}

MixtureValidation read_mixture_validation(const DataConfig& data,
                                          const std::vector<TokenFile>& files, int64_t sequences,
                                          int64_t seq_len) {
  MixtureValidation result;
  if (sequences <= 0) return result;
  std::vector<std::string> keys;
  for (size_t i = 0; i < data.train_paths.size(); ++i) {
    const std::string& path = data.train_paths[i];
    if (names_data_path(data, path)) continue;  // its /val is the validation set itself
    const TokenFile& file = files.at(i);
    const std::string fit = validation_fit_problem(sequences, seq_len, file.val->size());
    if (!fit.empty()) {
      result.notes.push_back(path + " (data.train_paths): no val_loss of its own, " + fit);
      continue;
    }
    result.files.push_back(
        {file_key("val_loss", path, keys),
         read_validation_set(*file.val, sequences, seq_len, data.document_mask, path + " /val")});
  }
  return result;
}

std::vector<std::pair<std::string, double>> evaluate_mixture(Transformer& model,
                                                             const MixtureValidation& mixture,
                                                             int64_t sequences,
                                                             Communicator& world) {
  std::vector<std::pair<std::string, double>> losses;
  for (const FileValidation& file : mixture.files)
    losses.emplace_back(file.key, evaluate(model, file.set, sequences, world).loss);
  return losses;
}

}  // namespace sy
