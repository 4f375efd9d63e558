// The CUDA backend's environment switches (model/cuda/env_choice.h): a value from the list (or a
// whole number within bounds) is returned, unset or empty reads as unset, and anything else is an
// error naming the variable, what it takes and what it got. Plain C++: runs in every build.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "model/cuda/env_choice.h"

namespace sy::cuda {
namespace {

constexpr const char* kName = "SY_TEST_ENV_CHOICE";

TEST(EnvChoice, UnsetOrEmptyIsNull) {
  unsetenv(kName);
  EXPECT_EQ(env_choice(kName, {"0", "1"}), nullptr);
  setenv(kName, "", 1);
  EXPECT_EQ(env_choice(kName, {"0", "1"}), nullptr);
  EXPECT_FALSE(env_is(kName, "0"));
  unsetenv(kName);
}

TEST(EnvChoice, AllowedValueIsReturned) {
  setenv(kName, "events", 1);
  EXPECT_STREQ(env_choice(kName, {"0", "1", "events", "nvtx"}), "events");
  setenv(kName, "0", 1);
  EXPECT_TRUE(env_is(kName, "0"));
  EXPECT_FALSE(env_is(kName, "1"));
  unsetenv(kName);
}

TEST(EnvChoice, OtherValueIsAnErrorNamingTheVariable) {
  setenv(kName, "evnts", 1);
  try {
    env_choice(kName, {"0", "1", "events", "nvtx"});
    ADD_FAILURE() << "a value outside the list was taken";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "SY_TEST_ENV_CHOICE must be one of 0, 1, events, nvtx, got 'evnts'");
  }
  setenv(kName, "yes", 1);
  EXPECT_THROW(env_is(kName, "1"), std::invalid_argument);
  unsetenv(kName);
}

TEST(EnvWholeNumber, BoundedWholeNumbersOnly) {
  unsetenv(kName);
  EXPECT_FALSE(env_whole_number(kName, 100, "things").has_value());
  setenv(kName, "0", 1);
  EXPECT_EQ(env_whole_number(kName, 100, "things"), 0);
  setenv(kName, "100", 1);
  EXPECT_EQ(env_whole_number(kName, 100, "things"), 100);
  for (const char* bad :
       {"101", "-1", "+7", "12x", "1.5", "lots", " 7", "99999999999999999999999"}) {
    setenv(kName, bad, 1);
    try {
      env_whole_number(kName, 100, "things");
      ADD_FAILURE() << "'" << bad << "' was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), std::string("SY_TEST_ENV_CHOICE must be a whole number from "
                                                   "0 to 100 (things), got '") + bad + "'");
    }
  }
  unsetenv(kName);
}

}  // namespace
}  // namespace sy::cuda
