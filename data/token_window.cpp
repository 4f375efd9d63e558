#include "data/token_window.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "model/backend.h"

namespace sy {

void check_window(int64_t start, int64_t count, int64_t size, const char* what) {
  if (start < 0 || count < 0 || start > size || count > size - start)
    throw std::runtime_error(std::string(what) + ": tokens [" + std::to_string(start) + ", " +
                             std::to_string(start + count) + ") are outside [0, " +
                             std::to_string(size) + ")");
}

void check_document_starts(const std::vector<int64_t>& starts, int64_t size,
                           const std::string& what) {
  if (starts.empty()) {
    if (size == 0) return;
    throw std::runtime_error(what + " is empty, but the split has " + std::to_string(size) +
                             " tokens");
  }
  if (starts[0] != 0)
    throw std::runtime_error(what + "[0] is " + std::to_string(starts[0]) + ", not 0");
  const auto at = [&](size_t k) {
    return what + "[" + std::to_string(k) + "] = " + std::to_string(starts[k]);
  };
  for (size_t k = 0; k < starts.size(); k++) {
    if (k > 0 && starts[k] <= starts[k - 1])
      throw std::runtime_error(at(k) + " is not after [" + std::to_string(k - 1) +
                               "] = " + std::to_string(starts[k - 1]));
    if (starts[k] >= size)
      throw std::runtime_error(at(k) + " is not inside the split's " + std::to_string(size) +
                               " tokens");
  }
}

void TokensInMemory::read(int64_t start, int64_t count, int32_t* out) const {
  check_window(start, count, size(), "token window");
  std::copy_n(tokens_->data() + start, count, out);
}

void TokenSource::read_mask(int64_t start, int64_t count, uint8_t* out) const {
  check_window(start, count, size(), "token window");
  std::fill_n(out, count, uint8_t{1});
}

void mask_targets(const TokenSource& split, int64_t start, int64_t count, int32_t* targets) {
  if (!split.masked()) return;
  std::vector<uint8_t> mask(count);
  split.read_mask(start, count, mask.data());
  for (int64_t k = 0; k < count; k++)
    if (!mask[k]) targets[k] = kIgnoreTarget;
}

TokensInMemory::TokensInMemory(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask)
    : tokens_(&tokens), mask_(mask.empty() ? nullptr : &mask) {
  if (!mask.empty() && mask.size() != tokens.size())
    throw std::runtime_error("token window: a loss mask of " + std::to_string(mask.size()) +
                             " values for " + std::to_string(tokens.size()) + " tokens");
}

TokensInMemory::TokensInMemory(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask,
                               const std::vector<int64_t>* document_starts)
    : TokensInMemory(tokens, mask) {
  if (document_starts)
    check_document_starts(*document_starts, size(), "token window: document starts");
  document_starts_ = document_starts;
}

void TokensInMemory::read_mask(int64_t start, int64_t count, uint8_t* out) const {
  if (!mask_) return TokenSource::read_mask(start, count, out);
  check_window(start, count, size(), "token window");
  std::copy_n(mask_->data() + start, count, out);
}

MaskedTokens::MaskedTokens(std::shared_ptr<const TokenSource> tokens,
                           std::shared_ptr<const TokenSource> mask, const std::string& name)
    : tokens_(std::move(tokens)), mask_(std::move(mask)) {
  if (tokens_->size() != mask_->size())
    throw std::runtime_error(name + ": the loss mask has " + std::to_string(mask_->size()) +
                             " values for " + std::to_string(tokens_->size()) + " tokens");
}

void MaskedTokens::prefetch(int64_t start, int64_t count) const {
  tokens_->prefetch(start, count);
  mask_->prefetch(start, count);
}

void MaskedTokens::read_mask(int64_t start, int64_t count, uint8_t* out) const {
  std::vector<int32_t> values(count);
  mask_->read(start, count, values.data());  // checked against the mask's vocabulary of 2
  for (int64_t k = 0; k < count; k++) out[k] = static_cast<uint8_t>(values[k]);
}

}  // namespace sy
