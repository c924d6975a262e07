// The body shared by the vector translation units of the chart kernel (charts_cpu_avx2.cpp,
// charts_cpu_avx512.cpp): the scalar helpers, the register-tiled GEMM with kGemmRows rows per tile,
// the vector sigmoid, charts_kernel.h's loops and the run_blocks entry points. Include inside
// namespace patchreg::charts::<isa>k after `using <isa>_vec::F32; using <isa>_vec::F64;` and
// `constexpr int kGemmRows = ...;`; this file includes nothing from the standard library.

inline double kexp(double v) { return __builtin_exp(v); }
inline double klog(double v) { return __builtin_log(v); }
inline double ksqrt(double v) { return __builtin_sqrt(v); }

#include "simd_gemm.h"

inline void gemm(const float* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const float* X,
                 int64_t ldx, float* C, int64_t ldc, int64_t cols, const float* init) {
  gemm_impl<F32, kGemmRows>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}
inline void gemm(const double* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const double* X,
                 int64_t ldx, double* C, int64_t ldc, int64_t cols, const double* init) {
  gemm_impl<F64, kGemmRows>(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}

#include "simd_sigmoid.h"
#ifdef PATCHREG_CHARTS_AMX_LOOPS
#include "charts_amx_gemm.h"
#endif
#include "charts_kernel.h"

#ifndef PATCHREG_CHARTS_AMX_LOOPS
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}
#endif
