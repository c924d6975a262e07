// The kernels' run-time switches (PATCHREG_DISABLE_AVX2, PATCHREG_DISABLE_AVX512, PATCHREG_DISABLE_AMX):
// read per call, so tests can flip them. Include before any `#pragma GCC target`, so this compiles
// for the baseline ISA.
#pragma once

#include <cstdlib>

namespace patchreg {

// True when the environment variable `name` is set to anything but "" or "0".
inline bool switched_off(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && env[0] != '\0' && !(env[0] == '0' && env[1] == '\0');
}

}  // namespace patchreg
