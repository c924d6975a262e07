// The fused chart kernel's loops (charts_kernel.h) compiled for AVX2/FMA, chosen at run time by
// avx2::enabled() (gmm_cpu_avx2.cpp) when the AVX-512 twin (charts_cpu_avx512.cpp) is not. The layers'
// GEMMs (simd_gemm.h) use a 6 x 16 (float) / 6 x 8 (double) register tile: 12 accumulators, 2 loads
// and 6 broadcasts per 12 FMAs; the float sigmoid uses
// a vectorised exp (Cephes polynomial, ~1 ulp). Everything else is the portable code, which
// the compiler vectorises for AVX2 here.
#include "charts.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PATCHREG_HAVE_CHARTS_AVX2 1
#endif

#ifdef PATCHREG_HAVE_CHARTS_AVX2
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "avx2_vec.h"

namespace patchreg {
namespace charts {
namespace avx2k {

inline double kexp(double v) { return __builtin_exp(v); }
inline double klog(double v) { return __builtin_log(v); }
inline double ksqrt(double v) { return __builtin_sqrt(v); }

using avx2_vec::F32;
using avx2_vec::F64;

#include "simd_gemm.h"

inline void gemm(const float* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const float* X,
                 int64_t ldx, float* C, int64_t ldc, int64_t cols, const float* init) {
  gemm_impl<F32, 6>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}
inline void gemm(const double* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const double* X,
                 int64_t ldx, double* C, int64_t ldc, int64_t cols, const double* init) {
  gemm_impl<F64, 6>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}

// exp on 8 floats: Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial).
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 fx = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

inline void sigmoid(const float* h, float* s, int64_t count) {
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    // 1 / (1 + e) by the approximate reciprocal and one Newton step (~1 ulp, cheaper than a division)
    const __m256 den = _mm256_add_ps(one, exp_ps(_mm256_sub_ps(zero, _mm256_loadu_ps(h + i))));
    const __m256 r = _mm256_rcp_ps(den);
    _mm256_storeu_ps(s + i, _mm256_mul_ps(r, _mm256_fnmadd_ps(den, r, two)));
  }
  for (; i < count; ++i) s[i] = 1.0f / (1.0f + __builtin_expf(-h[i]));
}

inline void sigmoid(const double* h, double* s, int64_t count) {
  for (int64_t i = 0; i < count; ++i) s[i] = 1.0 / (1.0 + __builtin_exp(-h[i]));
}

#include "charts_kernel.h"

void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}

}  // namespace avx2k
}  // namespace charts
}  // namespace patchreg

#else  // no AVX2 kernels in this build: avx2::enabled() is false, so these are never called.

namespace patchreg {
namespace charts {
namespace avx2k {
void run_blocks(const Problem<float>&, int64_t, int64_t, float*, double*) {}
void run_blocks(const Problem<double>&, int64_t, int64_t, double*, double*) {}
}  // namespace avx2k
}  // namespace charts
}  // namespace patchreg

#endif
