// AVX-512 inner loops of the CPU GMM kernels: gmm_simd_loops.h compiled for AVX-512F, chosen at
// run time by avx512_gmm::enabled() before the AVX2 twin (gmm_cpu_avx2.cpp). 3 vectors of 16
// floats (8 doubles) x 4 columns of U: 12 accumulators of the 32 registers, twice the lanes per FMA
// of AVX2. Everything after the target pragma is compiled for AVX-512 and only reached when
// enabled() is true; enabled() itself comes before the pragma so it runs on any x86-64 CPU.
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
  // PATCHREG_DISABLE_AVX2 switches off every vector kernel (the tests' portable runs).
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

}  // namespace avx512_gmm
}  // namespace patchreg

#else  // no AVX-512 loops in this build: enabled() is false, so these are never called.

namespace patchreg {
namespace avx512_gmm {
void project_block(const float*, const int32_t*, const int32_t*, const float*, int64_t,
                   const float*, float*, float*) {}
void project_block(const double*, const int32_t*, const int32_t*, const double*, int64_t,
                   const double*, double*, double*) {}
void gradient_block(const float*, const int32_t*, const int32_t*, int64_t, const float*,
                    const float*, const float*, float*) {}
void gradient_block(const double*, const int32_t*, const int32_t*, int64_t, const double*,
                    const double*, const double*, double*) {}
}  // namespace avx512_gmm
}  // namespace patchreg

#endif
