// The fused chart kernel's loops (charts_kernel.h) compiled for AVX-512, chosen at run time by
// avx512::enabled() (below) before the AVX2 twin (charts_cpu_avx2.cpp). The layers' GEMMs
// (simd_gemm.h) use an 8 x 32 (float) / 8 x 16 (double) register tile: 16 of the 32 vector
// registers accumulate, 2 loads and 8 broadcasts per 16 FMAs, twice the work per instruction of
// the AVX2 tile. The float sigmoid uses the same Cephes exp as the AVX2 file, 16 lanes at a time.
// Everything else is the portable code, which the compiler vectorises for AVX-512 here.
#include "charts.h"

#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PATCHREG_HAVE_CHARTS_AVX512 1
#endif

namespace patchreg {
namespace avx512 {

// Before the target pragma, so it runs on any x86-64 CPU.
bool enabled() {
#ifdef PATCHREG_HAVE_CHARTS_AVX512
  static const bool cpu = __builtin_cpu_supports("avx512f");
  auto off = [](const char* name) {
    const char* env = std::getenv(name);
    return env != nullptr && env[0] != '\0' && !(env[0] == '0' && env[1] == '\0');
  };
  // PATCHREG_DISABLE_AVX2 switches off every vector kernel (the tests' portable runs).
  return cpu && !off("PATCHREG_DISABLE_AVX512") && !off("PATCHREG_DISABLE_AVX2");
#else
  return false;
#endif
}

}  // namespace avx512
}  // namespace patchreg

#ifdef PATCHREG_HAVE_CHARTS_AVX512
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* temporaries.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "avx512_vec.h"

namespace patchreg {
namespace charts {
namespace avx512k {

inline double kexp(double v) { return __builtin_exp(v); }
inline double klog(double v) { return __builtin_log(v); }
inline double ksqrt(double v) { return __builtin_sqrt(v); }

using avx512_vec::F32;
using avx512_vec::F64;

#include "simd_gemm.h"

inline void gemm(const float* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const float* X,
                 int64_t ldx, float* C, int64_t ldc, int64_t cols, const float* init) {
  gemm_impl<F32, 8>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}
inline void gemm(const double* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const double* X,
                 int64_t ldx, double* C, int64_t ldc, int64_t cols, const double* init) {
  gemm_impl<F64, 8>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}

// exp on 16 floats: Cephes expf, as exp_ps in charts_cpu_avx2.cpp.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 fx = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127));
  return _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(e, 23)));
}

inline void sigmoid(const float* h, float* s, int64_t count) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f), zero = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    // 1 / (1 + e) by the 14-bit reciprocal and one Newton step (cheaper than a division)
    const __m512 den = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(zero, _mm512_loadu_ps(h + i))));
    const __m512 r = _mm512_rcp14_ps(den);
    _mm512_storeu_ps(s + i, _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, two)));
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

}  // namespace avx512k
}  // namespace charts
}  // namespace patchreg

#else  // no AVX-512 kernels in this build: avx512::enabled() is false, so these are never called.

namespace patchreg {
namespace charts {
namespace avx512k {
void run_blocks(const Problem<float>&, int64_t, int64_t, float*, double*) {}
void run_blocks(const Problem<double>&, int64_t, int64_t, double*, double*) {}
}  // namespace avx512k
}  // namespace charts
}  // namespace patchreg

#endif
