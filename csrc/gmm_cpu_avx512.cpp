// AVX-512 inner loops of the CPU GMM kernels: gmm_simd_loops.h compiled for AVX-512F, chosen at
// run time by avx512_gmm::enabled() before the AVX2 twin (gmm_cpu_avx2.cpp).
// Everything after the target pragma is compiled for AVX-512 and only reached when enabled() is true;
// enabled() itself comes before the pragma so it runs on any x86-64 CPU.
#include "gmm_cpu_avx2.h"

#include "env_switch.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PATCHREG_HAVE_GMM_AVX512 1
#endif

namespace patchreg {
namespace avx512_gmm {

bool enabled() {
#ifdef PATCHREG_HAVE_GMM_AVX512
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma");
  // PATCHREG_DISABLE_AVX2 switches off every vector loop (the tests' portable runs).
  return cpu && !switched_off("PATCHREG_DISABLE_AVX512") && !switched_off("PATCHREG_DISABLE_AVX2");
#else
  return false;
#endif
}

}  // namespace avx512_gmm
}  // namespace patchreg

#ifdef PATCHREG_HAVE_GMM_AVX512
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* temporaries.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "avx512_vec.h"
#include "gmm_simd_loops.h"

namespace patchreg {
namespace avx512_gmm {
namespace {

using avx512_vec::F32;
using avx512_vec::F64;

// 3 vectors of 16 floats (8 doubles) x 4 columns of U: 12 accumulators of the 32 registers, twice the
// lanes per FMA of AVX2.
constexpr int64_t kVec = 3;

}  // namespace

avx2::BlockLoops<float> loops(float) {
  return {&gmm_simd::project_impl<F32, kVec>, &gmm_simd::gradient_impl<F32, kVec>};
}
avx2::BlockLoops<double> loops(double) {
  return {&gmm_simd::project_impl<F64, kVec>, &gmm_simd::gradient_impl<F64, kVec>};
}

}  // namespace avx512_gmm
}  // namespace patchreg

#else  // no such loops in this build: enabled() is false and the loops are null.

namespace patchreg {
namespace avx512_gmm {
avx2::BlockLoops<float> loops(float) { return {nullptr, nullptr}; }
avx2::BlockLoops<double> loops(double) { return {nullptr, nullptr}; }
}  // namespace avx512_gmm
}  // namespace patchreg

#endif
