// AVX2/FMA inner loops of the CPU GMM kernels; see gmm_cpu_avx2.h for the layouts.
// Register tiling: 2 vectors of patches x 4 columns = 8 accumulators, enough independent FMA
// chains to hide the FMA latency, with 2 loads and 4 broadcasts per 8 FMAs.
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

namespace patchreg {
namespace avx2 {
namespace {

constexpr int64_t kBlock = kBlockPatches;

using avx2_vec::F32;
using avx2_vec::F64;

// Tile of kVec vectors of patches x 4 columns (rows) of U: 4 * kVec independent accumulators.
constexpr int64_t kVec = 3;

template <class S>
inline void project_impl(const typename S::T* cols, const int32_t* lo, const int32_t* hi,
                         const typename S::T* off, int64_t d, const typename S::T* xt,
                         typename S::T* y, typename S::T* quad) {
  using V = typename S::V;
  constexpr int64_t L = S::L, W = kVec * S::L;
  static_assert(kBlock % W == 0, "the block must hold whole tiles");
  const int64_t G = (d + 3) / 4;
  for (int64_t s = 0; s < kBlock; s += W) {
    V q[kVec];
#pragma GCC unroll 4
    for (int64_t v = 0; v < kVec; ++v) q[v] = S::zero();
    for (int64_t g = 0; g < G; ++g) {
      const auto* u = cols + g * d * 4;
      V a[4][kVec];
#pragma GCC unroll 4
      for (int64_t c = 0; c < 4; ++c)
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) a[c][v] = S::set1(-off[4 * g + c]);
      for (int64_t i = lo[g]; i < hi[g]; ++i) {
        V x[kVec];
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) x[v] = S::load(xt + i * kBlock + s + v * L);
#pragma GCC unroll 4
        for (int64_t c = 0; c < 4; ++c) {
          const V w = S::set1(u[i * 4 + c]);
#pragma GCC unroll 4
          for (int64_t v = 0; v < kVec; ++v) a[c][v] = S::fmadd(w, x[v], a[c][v]);
        }
      }
#pragma GCC unroll 4
      for (int64_t c = 0; c < 4; ++c)
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) q[v] = S::fmadd(a[c][v], a[c][v], q[v]);
      if (y != nullptr) {
#pragma GCC unroll 4
        for (int64_t c = 0; c < 4; ++c)
#pragma GCC unroll 4
          for (int64_t v = 0; v < kVec; ++v) S::store(y + (4 * g + c) * kBlock + s + v * L, a[c][v]);
      }
    }
#pragma GCC unroll 4
    for (int64_t v = 0; v < kVec; ++v) S::store(quad + s + v * L, q[v]);
  }
}

template <class S>
inline void gradient_impl(const typename S::T* rows, const int32_t* lo, const int32_t* hi,
                          int64_t d, const typename S::T* y, const typename S::T* scale,
                          const typename S::T* weight, typename S::T* g) {
  using V = typename S::V;
  constexpr int64_t L = S::L, W = kVec * S::L;
  const int64_t G = (d + 3) / 4;
  for (int64_t s = 0; s < kBlock; s += W) {
    for (int64_t r = 0; r < G; ++r) {
      const auto* u = rows + r * d * 4;
      V a[4][kVec];
#pragma GCC unroll 4
      for (int64_t c = 0; c < 4; ++c)
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) a[c][v] = S::zero();
      for (int64_t j = lo[r]; j < hi[r]; ++j) {
        V yv[kVec];
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) yv[v] = S::load(y + j * kBlock + s + v * L);
#pragma GCC unroll 4
        for (int64_t c = 0; c < 4; ++c) {
          const V w = S::set1(u[j * 4 + c]);
#pragma GCC unroll 4
          for (int64_t v = 0; v < kVec; ++v) a[c][v] = S::fmadd(w, yv[v], a[c][v]);
        }
      }
#pragma GCC unroll 4
      for (int64_t c = 0; c < 4; ++c) {
        auto* gi = g + (4 * r + c) * kBlock + s;
#pragma GCC unroll 4
        for (int64_t v = 0; v < kVec; ++v) {
          V gv = S::load(gi + v * L);
          if (scale != nullptr) gv = S::mul(gv, S::load(scale + s + v * L));
          S::store(gi + v * L, S::fnmadd(S::load(weight + s + v * L), a[c][v], gv));
        }
      }
    }
  }
}

}  // namespace

void project_block(const float* cols, const int32_t* lo, const int32_t* hi, const float* off,
                   int64_t d, const float* xt, float* y, float* quad) {
  project_impl<F32>(cols, lo, hi, off, d, xt, y, quad);
}
void project_block(const double* cols, const int32_t* lo, const int32_t* hi, const double* off,
                   int64_t d, const double* xt, double* y, double* quad) {
  project_impl<F64>(cols, lo, hi, off, d, xt, y, quad);
}
void gradient_block(const float* rows, const int32_t* lo, const int32_t* hi, int64_t d,
                    const float* y, const float* scale, const float* weight, float* g) {
  gradient_impl<F32>(rows, lo, hi, d, y, scale, weight, g);
}
void gradient_block(const double* rows, const int32_t* lo, const int32_t* hi, int64_t d,
                    const double* y, const double* scale, const double* weight, double* g) {
  gradient_impl<F64>(rows, lo, hi, d, y, scale, weight, g);
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
