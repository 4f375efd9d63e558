#include "model/documents.h"

#include <algorithm>

namespace sy {

DocumentRows list_documents(std::span<const int32_t> doc_start, int64_t S) {
  DocumentRows list;
  const int64_t T = static_cast<int64_t>(doc_start.size());
  for (int64_t t = 0; t < T; ++t)
    if (doc_start[t] == t % S) list.offsets.push_back(static_cast<int32_t>(t));
  list.offsets.push_back(static_cast<int32_t>(T));
  for (size_t d = 0; d + 1 < list.offsets.size(); ++d)
    list.longest = std::max<int64_t>(list.longest, list.offsets[d + 1] - list.offsets[d]);
  return list;
}

}  // namespace sy
