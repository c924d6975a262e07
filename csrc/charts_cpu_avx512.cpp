// The fused chart kernel's loops (charts_kernel.h) compiled for AVX-512, chosen at run time by
// avx512::enabled() (below) before the AVX2 twin (charts_cpu_avx2.cpp). The layers' GEMMs
// (simd_gemm.h) use an 8 x 32 (float) / 8 x 16 (double) register tile: 16 of the 32 vector
// registers accumulate, 2 loads and 8 broadcasts per 16 FMAs, twice the work per instruction of
// the AVX2 tile. The float sigmoid (simd_sigmoid.h) is the AVX2 file's, 16 lanes at a time.
// Everything else is the portable code, which the compiler vectorises for AVX-512 here.
#include "charts.h"
#include "env_switch.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PATCHREG_HAVE_CHARTS_AVX512 1
#endif

namespace patchreg {
namespace avx512 {

// Before the target pragma, so it runs on any x86-64 CPU.
bool enabled() {
#ifdef PATCHREG_HAVE_CHARTS_AVX512
  static const bool cpu = __builtin_cpu_supports("avx512f");
  // PATCHREG_DISABLE_AVX2 switches off every vector kernel (the tests' portable runs).
  return cpu && !switched_off("PATCHREG_DISABLE_AVX512") && !switched_off("PATCHREG_DISABLE_AVX2");
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

using avx512_vec::F32;
using avx512_vec::F64;
constexpr int kGemmRows = 8;  // rows of the GEMM register tile (2 x kGemmRows accumulators)

#include "charts_simd_loops.h"

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
