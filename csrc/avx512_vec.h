// AVX-512 vector traits, the 512-bit twins of avx2_vec.h, for the AVX-512 translation unit
// (charts_cpu_avx512.cpp). Include only after `#pragma GCC target("avx512f,...")` and <immintrin.h>.
#pragma once

#include <cstdint>

namespace patchreg {
namespace avx512_vec {

struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int64_t L = 16;
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(T a) { return _mm512_set1_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static V rcp(V a) { return _mm512_rcp14_ps(a); }  // approximate 1 / a
  // 2^n for integral n (|n| < 127): n + 127 placed in the exponent field.
  static V pow2i(V n) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
};

struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int64_t L = 8;
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(T a) { return _mm512_set1_pd(a); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V zero() { return _mm512_setzero_pd(); }
};

}  // namespace avx512_vec
}  // namespace patchreg
