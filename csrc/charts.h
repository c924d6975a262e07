// The fused chart-mixture log-density (patchreg::charts_log_prob): the description of one call,
// shared by charts_cpu.cpp (checks, portable loops) and charts_cpu_avx2.cpp (the same loops
// compiled for AVX2/FMA). Plain structs only, no ATen: the AVX2 file must not include templates
// that could be emitted in two instruction sets.
#pragma once

#include <cstdint>

namespace patchreg {
namespace charts {

// Points per block: whole AVX-512 tiles (2 vectors = 32 floats or 16 doubles), so whole AVX2 tiles too.
constexpr int64_t kBlock = 32;

// One stacked ResidualMLP: x -> W_out silu(h_L) + b_out, h_0 = W_in x + b_in,
// h_{l+1} = h_l + W_{l,1} silu(W_{l,0} silu(h_l) + b_{l,0}) + b_{l,1}. All arrays have a leading K axis.
template <typename T>
struct Mlp {
  int64_t in, width, out, blocks;
  const T* in_w;          // (K, width, in)
  const T* in_b;          // (K, width)
  const T* const* blk_w;  // 2 * blocks pointers to (K, width, width): layer 0, layer 1 of each block
  const T* const* blk_b;  // 2 * blocks pointers to (K, width)
  const T* out_w;         // (K, out, width)
  const T* out_b;         // (K, out)
  // bfloat16 copies of blk_w (row-major) and of their transposes, for the AMX loops' tangent
  // columns (charts_cpu_amx.cpp); null: every layer in T.
  const uint16_t* const* blk_w_bf16 = nullptr;
  const uint16_t* const* blk_wt_bf16 = nullptr;
};

// The frame (centre, basis, scale) is folded into enc.in_* and dec.out_*, so the encoder reads
// x and the decoder writes x_hat and J = d x_hat / dz directly.
template <typename T>
struct Problem {
  int64_t B, n, d, K;
  Mlp<T> enc, dec;
  const T* x;          // (B, n)
  const T* log_alpha;  // (K)
  double inv_sigma2;   // 1 / sigma^2
  double log_const;    // log Z_d + (n - d)/2 log(2 pi sigma^2)
  T* log_prob;         // (B)
  T* chart_lp;         // (B, K)
  T* grad_x;           // (B, n); null: no gradient
  // The points read from images instead of x (charts_log_prob_image; image null: from x): point b is
  // point_scale[b] * patch_basis^T q_b, q_b the C*p*p patch values image[offsets[b] + c*plane +
  // i*row + j] (c < C, i, j < p), in extract_patches' order (channel, row, column).
  const T* image = nullptr;
  const int64_t* offsets = nullptr;  // (B)
  const T* patch_basis = nullptr;    // (C*p*p, n)
  const T* point_scale = nullptr;    // (B)
  int64_t channels = 0, patch = 0, plane = 0, row = 0;
};

// Scratch of one thread: `scratch_size` values of T and `dscratch_size` doubles.
namespace portable {
int64_t scratch_size(const Problem<float>& p);
int64_t scratch_size(const Problem<double>& p);
int64_t dscratch_size(int64_t d);
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds);
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds);
}  // namespace portable

// Same loops, AVX2/FMA; call only when avx2::enabled() (gmm_cpu_avx2.h).
namespace avx2k {
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds);
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds);
}  // namespace avx2k

// Same loops, AVX-512; call only when avx512::enabled() (below).
namespace avx512k {
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds);
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds);
}  // namespace avx512k

// Same loops, AVX-512 with the decoder's tangent columns through AMX-BF16 tiles (the value columns
// and the encoder stay in float32); float only; call only when amx::enabled() (below).
namespace amxk {
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds);
}  // namespace amxk

}  // namespace charts

namespace amx {
// True when this build has the AMX chart loops, the CPU has AMX-BF16, AVX512-BF16 and AVX-512BW,
// the OS granted this process the AMX tile state, and PATCHREG_DISABLE_AMX is unset or "0".
bool enabled();
}  // namespace amx

namespace avx512 {
// True when this build has the AVX-512 chart kernels, the CPU runs AVX-512F, and neither
// PATCHREG_DISABLE_AVX512 nor PATCHREG_DISABLE_AVX2 is set to something other than "0".
bool enabled();
}  // namespace avx512

}  // namespace patchreg
