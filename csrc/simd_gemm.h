// The register-tiled GEMM of the fused chart kernel, written once for any vector ISA: S is a
// traits struct of avx2_vec.h or avx512_vec.h, MR the rows of a tile (accumulators = 2 * MR
// vectors, so MR is set by the ISA's register count). Include only inside a namespace of a
// translation unit compiled for that ISA (after its target pragma); this file includes nothing.
//
// C[0:M, 0:cols] = init (zero if null; may be C itself) + A X, with A[r][k] = A[r*rs + k*cs],
// X row-major with stride ldx, cols a multiple of 2 * S::L. One column panel of X stays in L1
// for all rows.

// C[0:MR, 0:2L] = init[0:MR, 0:2L] (zero if null) + A[0:MR, :] X[:, 0:2L].
template <class S, int MR>
inline void gemm_tile(const typename S::T* A, int64_t rs, int64_t cs, int64_t Kd,
                      const typename S::T* X, int64_t ldx, typename S::T* C, int64_t ldc,
                      const typename S::T* init) {
  using V = typename S::V;
  constexpr int64_t L = S::L;
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = init != nullptr ? S::load(init + i * ldc) : S::zero();
    c1[i] = init != nullptr ? S::load(init + i * ldc + L) : S::zero();
  }
  for (int64_t q = 0; q < Kd; ++q) {
    const V x0 = S::load(X + q * ldx), x1 = S::load(X + q * ldx + L);
    const typename S::T* a = A + q * cs;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V w = S::set1(a[i * rs]);
      c0[i] = S::fmadd(w, x0, c0[i]);
      c1[i] = S::fmadd(w, x1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    S::store(C + i * ldc, c0[i]);
    S::store(C + i * ldc + L, c1[i]);
  }
}

// The last rows < MR of a panel: the tile of exactly `rows` rows.
template <class S, int MR>
inline void gemm_rest(int64_t rows, const typename S::T* A, int64_t rs, int64_t cs, int64_t Kd,
                      const typename S::T* X, int64_t ldx, typename S::T* C, int64_t ldc,
                      const typename S::T* init) {
  if constexpr (MR > 0) {
    if (rows == MR)
      gemm_tile<S, MR>(A, rs, cs, Kd, X, ldx, C, ldc, init);
    else
      gemm_rest<S, MR - 1>(rows, A, rs, cs, Kd, X, ldx, C, ldc, init);
  }
}

template <class S, int MR>
void gemm_impl(const typename S::T* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd,
               const typename S::T* X, int64_t ldx, typename S::T* C, int64_t ldc, int64_t cols,
               const typename S::T* init) {
  constexpr int64_t W = 2 * S::L;
  for (int64_t p0 = 0; p0 < cols; p0 += W) {
    int64_t r = 0;
    for (; r + MR <= M; r += MR)
      gemm_tile<S, MR>(A + r * rs, rs, cs, Kd, X + p0, ldx, C + r * ldc + p0, ldc,
                       init == nullptr ? nullptr : init + r * ldc + p0);
    gemm_rest<S, MR - 1>(M - r, A + r * rs, rs, cs, Kd, X + p0, ldx, C + r * ldc + p0, ldc,
                         init == nullptr ? nullptr : init + r * ldc + p0);
  }
}
