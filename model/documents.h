// Document masking's documents listed from doc_start (model/backend.h, "Document masking"): the
// host side of Backend's DocumentList, which the transformer uploads beside doc_start.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace sy {

struct DocumentRows {
  std::vector<int32_t> offsets;  // [D+1]: the row t = b*S + s where each document starts, then B*S
  int64_t longest = 0;           // the most tokens of any one document
};

// doc_start [B*S] (each token's document's first position in its sequence) as its documents.
// A row starts a document where doc_start[t] = t mod S; every sequence's first row does.
DocumentRows list_documents(std::span<const int32_t> doc_start, int64_t S);

}  // namespace sy
