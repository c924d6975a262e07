// The fused chart kernel's loops (charts_kernel.h) compiled for AVX-512, chosen at run time by
// avx512::enabled() (below) before the AVX2 twin (charts_cpu_avx2.cpp). The layers' GEMMs
// (simd_gemm.h) use an 8 x 32 (float) / 8 x 16 (double) register tile: 16 of the 32 vector
// registers accumulate, 2 loads and 8 broadcasts per 16 FMAs, twice the work per instruction of
// the AVX2 tile. The float sigmoid (simd_sigmoid.h) is the AVX2 file's, 16 lanes at a time.
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

#include "simd_sigmoid.h"
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
