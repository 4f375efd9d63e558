// The version and git commit this build reports (--version, metrics.log, checkpoint manifests).
// trainer/CMakeLists.txt sets both on sy_trainer from what the configuration found; the
// fallbacks keep a build outside CMake compiling.
#pragma once

#ifndef SY_VERSION
#define SY_VERSION "unknown"
#endif
#ifndef SY_GIT_COMMIT
#define SY_GIT_COMMIT "unknown"
#endif
