// The GMM kernels' vector loops (see gmm_cpu_avx2.h for the layouts), written once over a vector
// type S (avx2_vec.h or avx512_vec.h: T, V, L, load, store, set1, fmadd, fnmadd, mul, zero) and
// included after the target pragma of gmm_cpu_avx2.cpp and gmm_cpu_avx512.cpp, so each file
// compiles them for its instruction set. Register tiling: kVec vectors of patches x 4 columns =
// 4 * kVec independent FMA chains, enough to hide the FMA latency, with kVec loads and 4
// broadcasts per 4 * kVec FMAs. Per lane the operations and their order do not depend on S, so
// both instruction sets give bit-identical results.
#pragma once

#include <cstdint>

#include "gmm_cpu_avx2.h"

namespace patchreg {
namespace gmm_simd {
namespace {  // each including file (instruction set) keeps its own copy

constexpr int64_t kBlock = avx2::kBlockPatches;

template <class S, int64_t kVec>
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

template <class S, int64_t kVec>
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
}  // namespace gmm_simd
}  // namespace patchreg
