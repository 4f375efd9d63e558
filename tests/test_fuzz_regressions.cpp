// Every input kept under tests/data/fuzz/<target>/ (what the libFuzzer targets of bench/fuzz
// found, the fixed hangs included) goes to the normal build's reader in a child process: it must
// end in an exception (or load) within kSecondsPerInput, never crash or hang. A child per input
// turns a hang into one failing case with the file's name instead of a ctest timeout.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "data/parquet_input.h"
#include "data/token_file.h"
#include "trainer/checkpoint.h"

namespace fs = std::filesystem;

namespace {

constexpr int kSecondsPerInput = 10;  // the readers take milliseconds; a hang is for ever

std::vector<std::string> inputs_of(const std::string& target) {
  // ctest runs the suites from the source tree (tests/CMakeLists.txt).
  const fs::path dir = fs::path("tests/data/fuzz") / target;
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

// Runs read(path) in a child: "" when it threw or returned, else what went wrong.
std::string run_isolated(const std::function<void(const std::string&)>& read,
                         const std::string& path) {
  const pid_t child = ::fork();
  if (child < 0) return "fork failed";
  if (child == 0) {
    try {
      read(path);
    } catch (const std::exception& error) {
      // The one clear line must name the file.
      ::_exit(std::string(error.what()).find(path) == std::string::npos ? 3 : 0);
    }
    ::_exit(0);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kSecondsPerInput);
  int status = 0;
  while (::waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      return "still running after " + std::to_string(kSecondsPerInput) + " s (a hang)";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (WEXITSTATUS(status) == 3) return "the error message does not name the file";
  if (WEXITSTATUS(status) != 0) return "exit status " + std::to_string(WEXITSTATUS(status));
  return "";
}

void expect_clean(const std::string& target, const std::function<void(const std::string&)>& read) {
  const std::vector<std::string> files = inputs_of(target);
  ASSERT_FALSE(files.empty()) << "no inputs under tests/data/fuzz/" << target;
  for (const std::string& file : files) {
    const std::string problem = run_isolated(read, file);
    EXPECT_EQ(problem, "") << file;
  }
}

}  // namespace

TEST(FuzzRegressions, TokenFileInputsFailCleanly) {
  expect_clean("token_file", [](const std::string& path) {
    try {
      (void)sy::read_token_file_tokenizer(path);
    } catch (const std::exception&) {
    }
    (void)sy::read_token_file(path);
  });
}

TEST(FuzzRegressions, CheckpointInputsFailCleanly) {
  expect_clean("checkpoint", [](const std::string& path) {
    (void)sy::read_checkpoint_header(path);
    sy::scan_checkpoint_tensors(path, [](const std::vector<sy::TensorInfo>&) {},
                                [](const sy::TensorInfo&) {});
  });
}

TEST(FuzzRegressions, ParquetInputsFailCleanly) {
  expect_clean("parquet", [](const std::string& path) {
    sy::ParquetStrings strings(path, "text");
    for (std::string value; strings.next(value);) {
    }
  });
}
