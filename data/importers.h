// Readers for corpora in other projects' formats (issue 13): JSONL text, nanoGPT's uint16
// train.bin/val.bin and Megatron-LM's indexed dataset (.bin/.idx). prepare_data (data/prepare.h)
// turns what they return into a token file. The exact reading rules are in docs/data.md.
// Every problem throws std::runtime_error, one line naming the file and the position.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

// The first floor((1 - val_fraction) * documents) documents are training, the rest validation.
// Throws when that leaves no training document (too few documents for the fraction); `input`
// names the corpus in the message.
int64_t train_document_count(int64_t documents, double val_fraction, const std::string& input);

// JSONL: one JSON object per line, the document its string member `field`. Blank lines (only
// spaces, tabs, '\r') are skipped. Returns the documents of every file, in the order given.
// Throws "<file>: line N: ..." for invalid JSON, a line that is not an object, a missing member or
// one that is not a string; "<files>: no documents" when there is none.
std::vector<std::string> read_jsonl_documents(const std::vector<std::string>& files,
                                              const std::string& field);

// Token ids read from token-level formats, already split.
struct ImportedTokens {
  std::vector<int32_t> train, val;
  int64_t documents = 0;      // 0 where the format has no documents (nanoGPT)
  int64_t val_documents = 0;
};

// nanoGPT: `input` is a folder holding train.bin and val.bin, or the path of train.bin (val.bin
// beside it). Both are little-endian uint16 tokens, each < vocab_size. train.bin must hold at
// least one token; val.bin may be empty.
ImportedTokens read_nanogpt(const std::string& input, int64_t vocab_size);

// Megatron-LM indexed dataset PREFIX.bin + PREFIX.idx (`prefix` may also end in .bin or .idx).
// Tokens of integer dtype, each in [0, vocab_size); documents kept whole, the last ones (by
// train_document_count) becoming validation.
ImportedTokens read_megatron(const std::string& prefix, int64_t vocab_size, double val_fraction);

}  // namespace sy
