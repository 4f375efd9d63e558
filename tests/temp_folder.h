// A fresh folder under the system temp directory for each test, removed afterwards, with the
// helpers that tests writing input files need, and a check of one-line errors. Not for tests under mpirun (each rank would make
// its own: see dist_harness.h's shared_temp_dir).
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy::test {

class TempFolderTest : public ::testing::Test {
 protected:
  // `prefix` names the folder (<temp>/<prefix>_<pid>_<clock>), so leftovers say whose they are.
  explicit TempFolderTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override {
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    folder_ = std::filesystem::temp_directory_path() /
              (prefix_ + "_" + std::to_string(getpid()) + "_" + std::to_string(now));
    std::filesystem::create_directories(folder_);
  }
  void TearDown() override {
    std::error_code error;
    std::filesystem::remove_all(folder_, error);
  }
  std::string path(const std::string& name) const { return (folder_ / name).string(); }
  // Writes `contents` to `name` inside the folder (parent folders made as needed).
  void write_file(const std::string& name, const std::string& contents) const {
    std::filesystem::create_directories((folder_ / name).parent_path());
    std::ofstream out(folder_ / name, std::ios::binary);
    out << contents;
  }

  std::filesystem::path folder_;

 private:
  std::string prefix_;
};

// Expects `body` to throw std::runtime_error whose one-line message contains every fragment.
template <typename Body>
void expect_error(Body body, const std::vector<std::string>& fragments) {
  try {
    body();
    FAIL() << "no exception; expected one mentioning " << fragments.front();
  } catch (const std::runtime_error& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& fragment : fragments)
      EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

}  // namespace sy::test
