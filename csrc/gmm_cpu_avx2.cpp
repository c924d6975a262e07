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

void project_block(const float* cols, const int32_t* lo, const int32_t* hi, const float* off,
                   int64_t d, const float* xt, float* y, float* quad) {
  gmm_simd::project_impl<F32, kVec>(cols, lo, hi, off, d, xt, y, quad);
}
void project_block(const double* cols, const int32_t* lo, const int32_t* hi, const double* off,
                   int64_t d, const double* xt, double* y, double* quad) {
  gmm_simd::project_impl<F64, kVec>(cols, lo, hi, off, d, xt, y, quad);
}
void gradient_block(const float* rows, const int32_t* lo, const int32_t* hi, int64_t d,
                    const float* y, const float* scale, const float* weight, float* g) {
  gmm_simd::gradient_impl<F32, kVec>(rows, lo, hi, d, y, scale, weight, g);
}
void gradient_block(const double* rows, const int32_t* lo, const int32_t* hi, int64_t d,
                    const double* y, const double* scale, const double* weight, double* g) {
  gmm_simd::gradient_impl<F64, kVec>(rows, lo, hi, d, y, scale, weight, g);
}

}  // namespace avx2
}  // namespace patchreg

#else  // no AVX2 kernels in this build: enabled() is false, so these are never called.

namespace patchreg {
namespace avx2 {
void project_block(const float*, const int32_t*, const int32_t*, const float*, int64_t,
                   const float*, float*, float*) {}
void project_block(const double*, const int32_t*, const int32_t*, const double*, int64_t,
                   const double*, double*, double*) {}
void gradient_block(const float*, const int32_t*, const int32_t*, int64_t, const float*,
                    const float*, const float*, float*) {}
void gradient_block(const double*, const int32_t*, const int32_t*, int64_t, const double*,
                    const double*, const double*, double*) {}
}  // namespace avx2
}  // namespace patchreg

#endif
