#include "trainer/provenance.h"

#include <ctime>

#include "data/hdf5_io.h"
#include "parallel/mpi_communicator.h"
#include "trainer/version.h"
#include "trainer/yaml_quote.h"

namespace sy {

namespace {

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace

std::string utc_now(const char* format) {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  gmtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof text, format, &parts);
  return text;
}

std::string checkpoint_provenance(const Config& config, int ranks, int expert_parallel,
                                  const std::string& run_id) {
  std::string out;
  if (!run_id.empty()) out += "run_id: " + yaml_quote(run_id) + "\n";
  out += "switchyard: " + yaml_quote(SY_VERSION) + "\n";
  out += "git_commit: " + yaml_quote(SY_GIT_COMMIT) + "\n";
  out += "hdf5: " + yaml_quote(h5::library_version()) + "\n";
  out += "mpi: " + yaml_quote(mpi_library_version()) + "\n";
  out += "compiler: " + yaml_quote(compiler_version()) + "\n";
  out += "ranks: " + std::to_string(ranks) + "\n";
  out += "expert_parallel: " + std::to_string(expert_parallel) + "\n";
  out += "backend: " + yaml_quote(to_string(config.run.backend)) + "\n";
  out += "created: " + yaml_quote(utc_now()) + "\n";
  return out;
}

std::string provenance_run_id(const std::string& provenance) {
  const std::string key = "run_id: ";
  size_t start = provenance.rfind("\n" + key);
  start = provenance.rfind(key, 0) == 0 ? 0 : (start == std::string::npos ? start : start + 1);
  if (start == std::string::npos) return "";
  std::string value = provenance.substr(start + key.size());
  value = value.substr(0, value.find('\n'));
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
    value = value.substr(1, value.size() - 2);
  return value;
}

}  // namespace sy
