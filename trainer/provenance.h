// A checkpoint's provenance (docs/checkpoint.md, "Layout"): the root attribute `provenance`,
// "key: value" lines in YAML (strings double-quoted) saying what wrote the file: the run id,
// Switchyard's version and commit, the HDF5 and MPI libraries, the compiler, the rank layout,
// the backend and the UTC time.
#pragma once
#include <string>

#include "trainer/config.h"

namespace sy {

// The provenance text of a checkpoint written now by a run of `ranks` ranks, `expert_parallel`
// per EP group. `run_id`, when given, is its first line ("run_id: ..."); the last is `created`.
std::string checkpoint_provenance(const Config& config, int ranks, int expert_parallel,
                                  const std::string& run_id);

// The run id in a checkpoint's provenance ("" when it has none).
std::string provenance_run_id(const std::string& provenance);

// The current UTC time in strftime `format` (default ISO 8601, as `created` writes it).
std::string utc_now(const char* format = "%Y-%m-%dT%H:%M:%SZ");

}  // namespace sy
