// AVX2/FMA and AVX-512 inner loops of the CPU GMM kernels (gmm_cpu.cpp), chosen at run time.
// Implemented in gmm_cpu_avx2.cpp and gmm_cpu_avx512.cpp, the only files compiled for those
// instruction sets (loops: gmm_simd_loops.h): they include no ATen or standard-library templates,
// so no inline function is ever emitted in two instruction sets.
//
// Layouts (G = ceil(d / 4) groups of 4 columns or rows, padding entries are zero):
//   xt    (d, 96)       one block of kBlockPatches = 96 patches, transposed;
//   cols  (G, d, 4)     cols[(g*d + i)*4 + c] = U[i][4g + c]  (projection y = U^T (x - mu));
//   rows  (G, d, 4)     rows[(g*d + j)*4 + r] = U[4g + r][j]  (gradient g -= U y);
//   lo/hi (G)           the range of i (resp. j) holding the group's nonzeros;
//   off   (4G)          U^T mu, zero-padded;
//   y, g  (4G, 96)      padded rows, so the kernels never branch on d % 4.
#pragma once

#include <cstdint>

namespace patchreg {
namespace avx2 {

// Patches per block of the CPU kernels (a multiple of the AVX2 tiles: 3 vectors of 8 floats or 4 doubles).
constexpr int64_t kBlockPatches = 96;

// True when this build has the AVX2 kernels, the CPU runs AVX2 and FMA, and the environment
// variable PATCHREG_DISABLE_AVX2 is unset or "0" (tests use it to run the portable loops).
bool enabled();

// The loops of one instruction set for one dtype T, as function pointers (gmm_cpu.cpp picks a set
// once per call of an op):
//   project:  quad[n] = ||U^T (x_n - mu)||^2 for the kBlockPatches patches of the block; y
//             (nullable) receives U^T (x - mu);
//   gradient: g[i][n] = g[i][n] * scale[n] + weight[n] * (-(U y)[i][n]); scale == nullptr: no rescaling.
template <typename T>
struct BlockLoops {
  void (*project)(const T* cols, const int32_t* lo, const int32_t* hi, const T* off, int64_t d, const T* xt,
                  T* y, T* quad);
  void (*gradient)(const T* rows, const int32_t* lo, const int32_t* hi, int64_t d, const T* y, const T* scale,
                   const T* weight, T* g);
};

// The AVX2 loops (T picks the dtype; the argument's value is unused).
BlockLoops<float> loops(float);
BlockLoops<double> loops(double);

}  // namespace avx2

// The same loops for AVX-512 (16 floats or 8 doubles a vector), bit-identical to the AVX2 ones.
namespace avx512_gmm {

// True when this build has the AVX-512 GMM loops, the CPU runs AVX-512F, and neither
// PATCHREG_DISABLE_AVX512 nor PATCHREG_DISABLE_AVX2 is set to something other than "0".
bool enabled();

avx2::BlockLoops<float> loops(float);
avx2::BlockLoops<double> loops(double);

}  // namespace avx512_gmm
}  // namespace patchreg
