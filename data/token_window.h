// One split of a token file (/train or /val) read window by window (issue 13), so that a corpus
// larger than memory trains: the sampler and the validation set ask for the few hundred tokens of
// one sequence at a time. Implementations: in memory (a vector) and on disk (data/token_file.h,
// open_token_file). See docs/data.md, "Token files larger than memory".
#pragma once
#include <cstdint>
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
};

// A vector already in memory; keeps a pointer to `tokens`, which must outlive it.
class TokensInMemory final : public TokenSource {
 public:
  explicit TokensInMemory(const std::vector<int32_t>& tokens) : tokens_(&tokens) {}
  int64_t size() const override { return static_cast<int64_t>(tokens_->size()); }
  void read(int64_t start, int64_t count, int32_t* out) const override;

 private:
  const std::vector<int32_t>* tokens_;
};

// Throws "<what>: tokens [start, start + count) are outside [0, size)" unless the window fits.
void check_window(int64_t start, int64_t count, int64_t size, const char* what);

}  // namespace sy
