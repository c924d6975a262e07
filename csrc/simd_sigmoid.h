// The chart kernel's sigmoid, written once for any vector ISA: float lanes through S (a traits
// struct of avx2_vec.h or avx512_vec.h), double and the tail scalar. Include only inside a
// namespace of a translation unit compiled for that ISA, after `using ..._vec::F32`; this file
// includes nothing.

// exp on S::L floats: Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial, ~1 ulp).
template <class S>
inline typename S::V exp_ps(typename S::V x) {
  x = S::min(S::max(x, S::set1(-87.3f)), S::set1(88.3f));
  const typename S::V fx = S::floor(S::fmadd(x, S::set1(1.44269504088896341f), S::set1(0.5f)));
  x = S::fnmadd(fx, S::set1(0.693359375f), x);
  x = S::fnmadd(fx, S::set1(-2.12194440e-4f), x);
  typename S::V y = S::set1(1.9875691500e-4f);
  y = S::fmadd(y, x, S::set1(1.3981999507e-3f));
  y = S::fmadd(y, x, S::set1(8.3334519073e-3f));
  y = S::fmadd(y, x, S::set1(4.1665795894e-2f));
  y = S::fmadd(y, x, S::set1(1.6666665459e-1f));
  y = S::fmadd(y, x, S::set1(5.0000001201e-1f));
  y = S::fmadd(y, S::mul(x, x), x);
  y = S::add(y, S::set1(1.0f));
  return S::mul(y, S::pow2i(fx));
}

inline void sigmoid(const float* h, float* s, int64_t count) {
  using V = typename F32::V;
  const V one = F32::set1(1.0f), two = F32::set1(2.0f), zero = F32::zero();
  int64_t i = 0;
  for (; i + F32::L <= count; i += F32::L) {
    // 1 / (1 + e) by the approximate reciprocal and one Newton step (cheaper than a division)
    const V den = F32::add(one, exp_ps<F32>(F32::sub(zero, F32::load(h + i))));
    const V r = F32::rcp(den);
    F32::store(s + i, F32::mul(r, F32::fnmadd(den, r, two)));
  }
  for (; i < count; ++i) s[i] = 1.0f / (1.0f + __builtin_expf(-h[i]));
}

inline void sigmoid(const double* h, double* s, int64_t count) {
  for (int64_t i = 0; i < count; ++i) s[i] = 1.0 / (1.0 + __builtin_exp(-h[i]));
}
