// switchyard inspect: a checkpoint's header (step, optimizer_step, format_version), the tokenizer
// it carries, the config it was written with, its provenance, and every tensor's path, shape and
// L2 norm, read one tensor at a time so that a large checkpoint needs little memory.
#pragma once
#include <cstdio>
#include <string>

namespace sy {

// Prints the report to `out`. Throws CheckpointError ("<file>: <what is wrong>") for a file that
// cannot be read.
void inspect_checkpoint(const std::string& path, std::FILE* out);

// A token file (docs/data.md): its vocabulary, tokenizer, split sizes, with document starts each
// split's document count and, with loss masks, the share of each split's tokens that are trained
// targets (the masks read in windows). Throws
// "<file>: <what is wrong>" like open_token_file.
void inspect_token_file(const std::string& path, std::FILE* out);

}  // namespace sy
