// AVX2/FMA vector traits shared by the AVX2 translation units (gmm_cpu_avx2.cpp,
// charts_cpu_avx2.cpp). Include only after `#pragma GCC target("avx2,fma")` and <immintrin.h>:
// these inline functions exist only in AVX2-compiled code, so no portable caller can pick them up.
#pragma once

#include <cstdint>

namespace patchreg {
namespace avx2_vec {

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int64_t L = 8;
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(T a) { return _mm256_set1_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V floor(V a) { return _mm256_floor_ps(a); }
  static V rcp(V a) { return _mm256_rcp_ps(a); }  // approximate 1 / a
  // 2^n for integral n (|n| < 127): n + 127 placed in the exponent field.
  static V pow2i(V n) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
};

struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int64_t L = 4;
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(T a) { return _mm256_set1_pd(a); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V zero() { return _mm256_setzero_pd(); }
};

}  // namespace avx2_vec
}  // namespace patchreg
