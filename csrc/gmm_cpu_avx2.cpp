// AVX2/FMA inner loops of the CPU GMM kernels; see gmm_cpu_avx2.h for the layouts and
// gmm_simd_loops.h for the loops themselves.
// Everything after the target pragma is compiled for AVX2 and only reached when enabled() is true;
// enabled() itself comes before the pragma so it runs on any x86-64 CPU.
#include "gmm_cpu_avx2.h"

#include "env_switch.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PATCHREG_HAVE_AVX2_KERNELS 1
#endif

namespace patchreg {
namespace avx2 {

bool enabled() {
#ifdef PATCHREG_HAVE_AVX2_KERNELS
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu && !switched_off("PATCHREG_DISABLE_AVX2");
#else
  return false;
#endif
}

}  // namespace avx2
}  // namespace patchreg

#ifdef PATCHREG_HAVE_AVX2_KERNELS
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "avx2_vec.h"
#include "gmm_simd_loops.h"

namespace patchreg {
namespace avx2 {
namespace {

using avx2_vec::F32;
using avx2_vec::F64;

// 3 vectors of patches x 4 columns of U: 12 accumulators of the 16 AVX2 registers.
constexpr int64_t kVec = 3;

}  // namespace

avx2::BlockLoops<float> loops(float) {
  return {&gmm_simd::project_impl<F32, kVec>, &gmm_simd::gradient_impl<F32, kVec>};
}
avx2::BlockLoops<double> loops(double) {
  return {&gmm_simd::project_impl<F64, kVec>, &gmm_simd::gradient_impl<F64, kVec>};
}

}  // namespace avx2
}  // namespace patchreg

#else  // no such loops in this build: enabled() is false and the loops are null.

namespace patchreg {
namespace avx2 {
avx2::BlockLoops<float> loops(float) { return {nullptr, nullptr}; }
avx2::BlockLoops<double> loops(double) { return {nullptr, nullptr}; }
}  // namespace avx2
}  // namespace patchreg

#endif
