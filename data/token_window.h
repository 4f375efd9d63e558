// One split of a token file (/train or /val) read window by window (issue 13), so that a corpus
// larger than memory trains: the sampler and the validation set ask for the few hundred tokens of
// one sequence at a time. Implementations: in memory (a vector) and on disk (data/token_file.h,
// open_token_file). See docs/data.md, "Token files larger than memory".
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sy {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  // out[k] = token start + k for k < count. Throws std::runtime_error if [start, start + count)
  // is not inside [0, size()), or (on disk) if a token read is outside [0, vocab_size), naming
  // the file, the split and the position. Safe to call from several threads at once.
  virtual void read(int64_t start, int64_t count, int32_t* out) const = 0;
  // A hint that [start, start + count) will be read soon: on disk, the kernel starts reading it
  // into the page cache (posix_fadvise WILLNEED) and returns. Never throws; does nothing in memory.
  virtual void prefetch(int64_t /*start*/, int64_t /*count*/) const {}
  // Loss masks (docs/data.md, "Loss masks"): a masked split says which tokens are trained targets.
  virtual bool masked() const { return false; }
  // out[k] = 1 if token start + k is a trained target, else 0, for k < count; all 1 for a split
  // without a mask. Throws like read.
  virtual void read_mask(int64_t start, int64_t count, uint8_t* out) const;
  // Document boundaries (docs/data.md, "Document masking"): the positions where the split's
  // documents start, strictly ascending, the first 0 (none for an empty split), held in memory
  // (8 bytes a document). nullptr: the split records no boundaries.
  virtual const std::vector<int64_t>* document_starts() const { return nullptr; }
};

// targets[k] = kIgnoreTarget (model/backend.h) where token start + k of `split` is not a trained
// target; nothing for a split without a mask.
void mask_targets(const TokenSource& split, int64_t start, int64_t count, int32_t* targets);

// A vector already in memory; keeps a pointer to `tokens`, which must outlive it, to its loss
// mask when `mask` is not empty (one 0 or 1 per token; it must outlive it too) and to its
// document starts when `document_starts` is not null (it must outlive it too).
class TokensInMemory final : public TokenSource {
 public:
  explicit TokensInMemory(const std::vector<int32_t>& tokens) : tokens_(&tokens) {}
  // Throws unless mask is empty or as long as tokens.
  TokensInMemory(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask);
  // Also throws unless document_starts is null or valid for tokens (check_document_starts).
  TokensInMemory(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask,
                 const std::vector<int64_t>* document_starts);
  int64_t size() const override { return static_cast<int64_t>(tokens_->size()); }
  void read(int64_t start, int64_t count, int32_t* out) const override;
  bool masked() const override { return mask_ != nullptr; }
  void read_mask(int64_t start, int64_t count, uint8_t* out) const override;
  const std::vector<int64_t>* document_starts() const override { return document_starts_; }

 private:
  const std::vector<int32_t>* tokens_;
  const std::vector<uint8_t>* mask_ = nullptr;
  const std::vector<int64_t>* document_starts_ = nullptr;
};

// A split with a loss mask beside it: `mask` is a split of the same length whose values are 0 or
// 1 (a token file's /train_mask read as tokens of a vocabulary of 2).
class MaskedTokens final : public TokenSource {
 public:
  // Throws "<name>: the loss mask has M values for N tokens" unless the lengths agree.
  MaskedTokens(std::shared_ptr<const TokenSource> tokens, std::shared_ptr<const TokenSource> mask,
               const std::string& name);
  int64_t size() const override { return tokens_->size(); }
  void read(int64_t start, int64_t count, int32_t* out) const override {
    tokens_->read(start, count, out);
  }
  void prefetch(int64_t start, int64_t count) const override;
  bool masked() const override { return true; }
  void read_mask(int64_t start, int64_t count, uint8_t* out) const override;
  // The token split's: the mask does not change where documents start.
  const std::vector<int64_t>* document_starts() const override {
    return tokens_->document_starts();
  }

 private:
  std::shared_ptr<const TokenSource> tokens_, mask_;
};

// Throws "<what>: tokens [start, start + count) are outside [0, size)" unless the window fits.
void check_window(int64_t start, int64_t count, int64_t size, const char* what);

// Throws unless `starts` are document starts of a split of `size` tokens (document_starts()
// above): "<what>[0] is 5, not 0", "<what>[3] = 7 is not after [2] = 7", "<what>[9] = 400 is not
// inside the split's 330 tokens", "<what> is empty, but the split has 330 tokens". `what` names
// the dataset, e.g. "a.h5: /train_doc_starts".
void check_document_starts(const std::vector<int64_t>& starts, int64_t size,
                           const std::string& what);

}  // namespace sy
