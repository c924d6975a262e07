// The fused chart kernel's loops (charts_kernel.h) compiled for AVX2/FMA, chosen at run time by
// avx2::enabled() (gmm_cpu_avx2.cpp) when the AVX-512 twin (charts_cpu_avx512.cpp) is not. The layers'
// GEMMs (simd_gemm.h) use a 6 x 16 (float) / 6 x 8 (double) register tile: 12 accumulators, 2 loads
// and 6 broadcasts per 12 FMAs; the float sigmoid (simd_sigmoid.h) uses a vectorised exp (Cephes
// polynomial, ~1 ulp). Everything else is the portable code, which the compiler vectorises for
// AVX2 here.
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

using avx2_vec::F32;
using avx2_vec::F64;
constexpr int kGemmRows = 6;  // rows of the GEMM register tile (2 x kGemmRows accumulators)

#include "charts_simd_loops.h"

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
