// The AMX block GEMM of the fused chart kernel (included by charts_simd_loops.h inside
// charts_cpu_amx.cpp only, after gemm() and before charts_kernel.h): the decoder's residual-block
// layers on the d tangent column groups run as bfloat16 x bfloat16 -> float32 AMX tile products;
// the value columns, every other layer and everything elementwise stay in float32. So x_hat and
// the residual |x - x_hat|^2 / sigma^2 are float32 arithmetic; only J = d x_hat / dz (hence
// log det J^T J) and the reverse pass through the tangents see bfloat16 rounding (weights and the
// layer inputs, 8-bit mantissa; products and sums exact to float32).
// Tile layout: C tiles 16 rows x 16 floats; A (weights, row-major bf16) 16 rows x 32; B (the layer
// input in VNNI order: Xv[q/2][p][q%2]) 16 pairs of rows x 16 columns.



struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Eight 16 x 64-byte tiles. Loaded before every GEMM: the configuration is per thread and
// another library (oneDNN) may have changed it in between.
inline void amx_configure() {
  TileConfig c = {};
  c.palette = 1;
  for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;
  // GCC drops the stores above as dead without this: it does not see ldtilecfg read them.
  asm volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

// xv[q2][p][j] = bf16(X[2 q2 + j][p]) for q2 < Kd/2, p < cols (round to nearest even, as torch).
inline void pack_vnni(const float* X, int64_t ldx, int64_t Kd, int64_t cols, uint16_t* xv) {
  alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(order);
  for (int64_t q2 = 0; q2 < Kd / 2; ++q2) {
    const float* a = X + 2 * q2 * ldx;
    const float* b = a + ldx;
    uint16_t* o = xv + 2 * q2 * cols;
    for (int64_t p = 0; p < cols; p += 16) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(b + p), _mm512_loadu_ps(a + p));
      _mm512_storeu_si512(o + 2 * p, _mm512_permutexvar_epi16(idx, (__m512i)v));
    }
  }
}

// C[0:M, 0:cols] = init (zero if null) + A Xv, A bf16 (M x Kd, row stride lda), xv from pack_vnni;
// M, Kd and cols multiples of 32.
inline void amx_gemm(const uint16_t* A, int64_t lda, int64_t M, int64_t Kd, const uint16_t* xv,
                     int64_t cols, float* C, int64_t ldc, const float* init) {
  amx_configure();
  const int64_t sa = 2 * lda, sb = 4 * cols, sc = 4 * ldc;  // row strides in bytes
  for (int64_t p0 = 0; p0 < cols; p0 += 32)
    for (int64_t r0 = 0; r0 < M; r0 += 32) {
      float* c = C + r0 * ldc + p0;
      if (init != nullptr) {
        const float* i0 = init + r0 * ldc + p0;
        _tile_loadd(0, i0, sc);
        _tile_loadd(1, i0 + 16, sc);
        _tile_loadd(2, i0 + 16 * ldc, sc);
        _tile_loadd(3, i0 + 16 * ldc + 16, sc);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t kb = 0; kb < Kd; kb += 32) {
        const uint16_t* a = A + r0 * lda + kb;
        const uint16_t* b = xv + kb * cols + 2 * p0;  // row kb / 2 of Xv
        _tile_loadd(4, a, sa);
        _tile_loadd(5, a + 16 * lda, sa);
        _tile_loadd(6, b, sb);
        _tile_loadd(7, b + 32, sb);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c, sc);
      _tile_stored(1, c + 16, sc);
      _tile_stored(2, c + 16 * ldc, sc);
      _tile_stored(3, c + 16 * ldc + 16, sc);
    }
}

// block_gemm (charts_kernel.h) for float, chosen over its template by overload resolution: the value
// columns by the float32 GEMM, the tangent columns by AMX when the layer has
// bfloat16 weights and the width is a multiple of 32 (else float32 throughout).
inline void block_gemm(const Mlp<float>& m, int64_t k, int64_t layer, bool transposed,
                       const float* X, int64_t ld, float* C, const float* init, int64_t groups,
                       float* work) {
  const int64_t W = m.width;
  const float* w = m.blk_w[layer] + k * W * W;
  const int64_t rs = transposed ? 1 : W, cs = transposed ? W : 1;
  const uint16_t* const* lowp = transposed ? m.blk_wt_bf16 : m.blk_w_bf16;
  if (lowp == nullptr || groups == 1 || W % 32 != 0) {
    gemm(w, rs, cs, W, W, X, ld, C, ld, groups * kBlock, init);
    return;
  }
  gemm(w, rs, cs, W, W, X, ld, C, ld, kBlock, init);
  const int64_t cols = (groups - 1) * kBlock;
  uint16_t* xv = reinterpret_cast<uint16_t*>(work);
  pack_vnni(X + kBlock, ld, W, cols, xv);
  amx_gemm(lowp[layer] + k * W * W, W, W, W, xv, cols, C + kBlock, ld,
           init == nullptr ? nullptr : init + kBlock);
}
