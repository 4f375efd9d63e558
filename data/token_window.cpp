#include "data/token_window.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sy {

void check_window(int64_t start, int64_t count, int64_t size, const char* what) {
  if (start < 0 || count < 0 || start > size || count > size - start)
    throw std::runtime_error(std::string(what) + ": tokens [" + std::to_string(start) + ", " +
                             std::to_string(start + count) + ") are outside [0, " +
                             std::to_string(size) + ")");
}

void TokensInMemory::read(int64_t start, int64_t count, int32_t* out) const {
  check_window(start, count, size(), "token window");
  std::copy_n(tokens_->data() + start, count, out);
}

}  // namespace sy
