// The per-thread program of the CUDA kernel for patchreg::charts_log_prob: one thread evaluates
// chart k at point b (encoder, decoder with forward-mode tangents, log det of J^T J, latent
// prior, residual) and, when asked, d l_k / dx by the same hand-written reverse mode as the CPU
// loops (charts_kernel.h, which documents the maths). The mixture over charts (logsumexp and the
// softmax-weighted gradient) is done afterwards by charts_simt.cpp.
//
// Compiled twice: by charts_cuda.cu for the GPU and by charts_simt.cpp for the host, where the
// op patchreg::charts_log_prob_simt runs this very program without a GPU so that the CPU-only
// tests check the CUDA kernel's arithmetic (tests/test_charts_op.py).
//
// The latent prior and the Cholesky repeat those of charts_kernel.h on purpose: that header is
// compiled for AVX2 in charts_cpu_avx2.cpp, and an inline function shared with it could be
// emitted with AVX2 instructions and picked by the linker for every caller.
//
// Scratch is strided: value i of a thread lives at base[i * stride]; with thread t's base at
// scratch + t and stride = number of threads, a warp touches consecutive addresses (coalesced).
// Threads of a warp share the chart k, so weight reads are broadcasts.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define PATCHREG_HD __host__ __device__ __forceinline__
#define PATCHREG_UNROLL _Pragma("unroll")
#else
#define PATCHREG_HD inline
#define PATCHREG_UNROLL _Pragma("GCC unroll 8")
#endif

namespace patchreg {
namespace charts {
namespace simt {

// A strided view of one thread's values.
template <typename T>
struct Sv {
  T* p;
  int64_t st;
  PATCHREG_HD T& operator[](int64_t i) const { return p[i * st]; }
  PATCHREG_HD Sv operator+(int64_t off) const { return {p + off * st, st}; }
};

// One stacked ResidualMLP (K charts) with the blocks' weights packed:
// blk_w (2 * blocks, K, width, width), blk_b (2 * blocks, K, width); layer 2l + j is blocks.l.j.
template <typename T>
struct Net {
  int64_t K, in, width, out, blocks;
  const T *in_w, *in_b, *blk_w, *blk_b, *out_w, *out_b;
  PATCHREG_HD const T* w(int64_t layer, int64_t k) const { return blk_w + (layer * K + k) * width * width; }
  PATCHREG_HD const T* b(int64_t layer, int64_t k) const { return blk_b + (layer * K + k) * width; }
};

// The frame is folded into enc.in_* and dec.out_* (as for the CPU kernel).
template <typename T>
struct Problem {
  int64_t B, n, d, K;
  Net<T> enc, dec;
  const T* xt;        // (n, B): x transposed, so that consecutive threads read consecutive addresses
  double inv_sigma2;  // 1 / sigma^2
  double log_const;   // log Z_d + (n - d)/2 log(2 pi sigma^2)
};

// Offsets (in values of T) of one thread's scratch regions, and the doubles for the Cholesky.
struct Layout {
  int64_t eh, eb, ea, z, S, Bm, A, Y, ybar, sbar, r1, r2, zbar, ebar, e1, e2, total, dtotal;
};

inline Layout make_layout(int64_t n, int64_t d, int64_t We, int64_t Le, int64_t Wd, int64_t Ld,
                          bool grad) {
  const int64_t G = 1 + d;
  Layout l{};
  int64_t off = 0;
  auto take = [&](int64_t count) {
    const int64_t at = off;
    off += count;
    return at;
  };
  l.eh = take((Le + 1) * We);  // encoder h_l
  l.eb = take(Le * We);        // encoder b_l (inside each block)
  l.ea = take(We);             // activations
  l.z = take(d);
  l.S = take((Ld + 1) * Wd * G);  // decoder h_l with d tangents: row f holds (h | t_1 .. t_d)
  l.Bm = take(Ld * Wd * G);
  l.A = take(Wd * G);
  l.Y = take(n * G);  // (x_hat | J)
  if (grad) {
    l.ybar = take(n * G);
    l.sbar = take(Wd * G);
    l.r1 = take(Wd * G);
    l.r2 = take(Wd * G);
    l.zbar = take(d);
    l.ebar = take(We);
    l.e1 = take(We);
    l.e2 = take(We);
  }
  l.total = off;
  l.dtotal = 3 * d * d;  // Gram (then its inverse), L, L^{-1}
  return l;
}

PATCHREG_HD float kexp(float v) { return expf(v); }
PATCHREG_HD double kexp(double v) { return exp(v); }

// out[r][g] = init[r][g] + bias[r] (g == 0) + sum_q W[r*rs + q*cs] X[q][g], for r < M, g < G;
// rows of X and out hold G values. Tiles of R rows x C columns stay in registers.
template <typename U>
struct Same {  // keeps T from being deduced from a nullptr argument
  using type = U;
};
template <int R, int C, typename T>
PATCHREG_HD void matvec(const T* W, int64_t rs, int64_t cs, int64_t M, int64_t Kd, Sv<T> X,
                        int64_t G, Sv<T> out, const typename Same<Sv<T>>::type* init,
                        const typename Same<T>::type* bias) {
  for (int64_t r0 = 0; r0 < M; r0 += R)
    for (int64_t g0 = 0; g0 < G; g0 += C) {
      T acc[R][C];
PATCHREG_UNROLL
      for (int i = 0; i < R; ++i)
PATCHREG_UNROLL
        for (int j = 0; j < C; ++j) {
          const int64_t r = r0 + i, g = g0 + j;
          T v = T(0);
          if (r < M && g < G) {
            if (init != nullptr) v = (*init)[r * G + g];
            if (bias != nullptr && g == 0) v += bias[r];
          }
          acc[i][j] = v;
        }
      for (int64_t q = 0; q < Kd; ++q) {
        T w[R], xv[C];
PATCHREG_UNROLL
        for (int i = 0; i < R; ++i) w[i] = r0 + i < M ? W[(r0 + i) * rs + q * cs] : T(0);
PATCHREG_UNROLL
        for (int j = 0; j < C; ++j) xv[j] = g0 + j < G ? X[q * G + g0 + j] : T(0);
PATCHREG_UNROLL
        for (int i = 0; i < R; ++i)
PATCHREG_UNROLL
          for (int j = 0; j < C; ++j) acc[i][j] += w[i] * xv[j];
      }
PATCHREG_UNROLL
      for (int i = 0; i < R; ++i)
PATCHREG_UNROLL
        for (int j = 0; j < C; ++j)
          if (r0 + i < M && g0 + j < G) out[(r0 + i) * G + g0 + j] = acc[i][j];
    }
}

// A = (silu(h) | silu'(h) t_j) row by row.
template <typename T>
PATCHREG_HD void act_forward(Sv<T> S, Sv<T> A, int64_t rows, int64_t G) {
  for (int64_t f = 0; f < rows; ++f) {
    const T h = S[f * G];
    const T s = T(1) / (T(1) + kexp(-h));
    A[f * G] = h * s;
    const T ds = s * (T(1) + h * (T(1) - s));
    for (int64_t g = 1; g < G; ++g) A[f * G + g] = ds * S[f * G + g];
  }
}

// Reverse of act_forward: hbar = silu'(h) Abar_0 + silu''(h) sum_j Abar_j t_j, tbar_j = silu'(h) Abar_j.
template <typename T>
PATCHREG_HD void act_backward(Sv<T> S, Sv<T> Abar, Sv<T> Sbar, int64_t rows, int64_t G,
                              bool accumulate) {
  for (int64_t f = 0; f < rows; ++f) {
    const T h = S[f * G];
    const T s = T(1) / (T(1) + kexp(-h));
    const T one_s = T(1) - s;
    const T ds = s * (T(1) + h * one_s);
    const T dds = s * one_s * (T(2) + h * (one_s - s));
    T acc = ds * Abar[f * G];
    for (int64_t g = 1; g < G; ++g) {
      const T ab = Abar[f * G + g];
      acc += dds * ab * S[f * G + g];
      if (accumulate)
        Sbar[f * G + g] += ds * ab;
      else
        Sbar[f * G + g] = ds * ab;
    }
    if (accumulate)
      Sbar[f * G] += acc;
    else
      Sbar[f * G] = acc;
  }
}

// Residual blocks and output layer of chart k on G column groups; H[0] is filled by the caller.
template <int R, int C, typename T>
PATCHREG_HD void mlp_forward(const Net<T>& m, int64_t k, int64_t G, Sv<T> H, Sv<T> Bs, Sv<T> act,
                             Sv<T> out) {
  const int64_t W = m.width, slice = W * G;
  for (int64_t l = 0; l < m.blocks; ++l) {
    const Sv<T> h = H + l * slice, b = Bs + l * slice;
    act_forward(h, act, W, G);
    matvec<R, C>(m.w(2 * l, k), W, int64_t(1), W, W, act, G, b, nullptr, m.b(2 * l, k));
    act_forward(b, act, W, G);
    matvec<R, C>(m.w(2 * l + 1, k), W, int64_t(1), W, W, act, G, h + slice, &h, m.b(2 * l + 1, k));
  }
  act_forward(H + m.blocks * slice, act, W, G);
  matvec<R, C>(m.out_w + k * m.out * W, W, int64_t(1), m.out, W, act, G, out, nullptr,
               m.out_b + k * m.out);
}

// Reverse of mlp_forward: Obar (out rows of G) -> Hbar, the adjoint of H[0] (written).
template <int R, int C, typename T>
PATCHREG_HD void mlp_backward(const Net<T>& m, int64_t k, int64_t G, Sv<T> H, Sv<T> Bs, Sv<T> Obar,
                              Sv<T> Hbar, Sv<T> r1, Sv<T> r2) {
  const int64_t W = m.width, slice = W * G;
  matvec<R, C>(m.out_w + k * m.out * W, int64_t(1), W, W, m.out, Obar, G, r1, nullptr, nullptr);
  act_backward(H + m.blocks * slice, r1, Hbar, W, G, false);
  for (int64_t l = m.blocks - 1; l >= 0; --l) {
    matvec<R, C>(m.w(2 * l + 1, k), int64_t(1), W, W, W, Hbar, G, r1, nullptr, nullptr);
    act_backward(Bs + l * slice, r1, r2, W, G, false);
    matvec<R, C>(m.w(2 * l, k), int64_t(1), W, W, W, r2, G, r1, nullptr, nullptr);
    act_backward(H + l * slice, r1, Hbar, W, G, true);
  }
}

// Latent prior U(r), U'(r) of patchreg.charts.latent_prior.radial_energy.
PATCHREG_HD void radial_energy(double r, double* U, double* dU) {
  const double flat = 0.8, width = 0.2, border = -log(0.05), slope = 2 * border / width;
  double u = 0, du = 0;
  const double t = r - flat;
  if (t > 0) {
    const double c = t < width ? t : width;
    u += border * (c / width) * (c / width);
    if (t < width) du += 2 * border * c / (width * width);
  }
  if (r > 1) u += slope * (r - 1), du += slope;
  *U = u;
  *dU = du;
}

// Cholesky of the Gram matrix in D[0, d*d) (lower triangle read); returns log det (NaN when not
// positive definite). With `inverse`, D then holds G^{-1} (full). L and Li are d*d scratch.
PATCHREG_HD double gram_logdet_inverse(Sv<double> D, Sv<double> L, Sv<double> Li, int64_t d,
                                       bool inverse) {
  const double nan = NAN;
  double ld = 0;
  for (int64_t j = 0; j < d; ++j) {
    double s = D[j * d + j];
    for (int64_t q = 0; q < j; ++q) s -= L[j * d + q] * L[j * d + q];
    if (!(s > 0)) {
      if (inverse)
        for (int64_t i = 0; i < d * d; ++i) D[i] = nan;
      return nan;
    }
    const double djj = sqrt(s);
    L[j * d + j] = djj;
    ld += log(djj);
    for (int64_t i = j + 1; i < d; ++i) {
      double v = D[i * d + j];
      for (int64_t q = 0; q < j; ++q) v -= L[i * d + q] * L[j * d + q];
      L[i * d + j] = v / djj;
    }
  }
  if (inverse) {
    for (int64_t j = 0; j < d; ++j) {
      Li[j * d + j] = 1 / L[j * d + j];
      for (int64_t i = j + 1; i < d; ++i) {
        double v = 0;
        for (int64_t q = j; q < i; ++q) v -= L[i * d + q] * Li[q * d + j];
        Li[i * d + j] = v / L[i * d + i];
      }
    }
    for (int64_t a = 0; a < d; ++a)
      for (int64_t b = 0; b <= a; ++b) {
        double v = 0;
        for (int64_t q = a; q < d; ++q) v += Li[q * d + a] * Li[q * d + b];
        D[a * d + b] = v;
        D[b * d + a] = v;
      }
  }
  return 2 * ld;
}

// Chart k at point b: returns l_k(x_b); with grad, writes d l_k / dx (n values) to g.
template <typename T>
PATCHREG_HD T chart_at_point(const Problem<T>& P, const Layout& L, int64_t b, int64_t k, Sv<T> s,
                             Sv<double> ds, bool grad, Sv<T> g) {
  const int64_t n = P.n, d = P.d, G = 1 + d;
  const Net<T>& enc = P.enc;
  const Net<T>& dec = P.dec;
  const int64_t We = enc.width, Wd = dec.width;
  const Sv<T> x{const_cast<T*>(P.xt) + b, P.B};
  const T inv_s2 = T(P.inv_sigma2);

  // Encoder (values only).
  const Sv<T> eh = s + L.eh, eb = s + L.eb, ea = s + L.ea, z = s + L.z;
  matvec<8, 1>(enc.in_w + k * We * n, n, int64_t(1), We, n, x, int64_t(1), eh, nullptr,
               enc.in_b + k * We);
  mlp_forward<8, 1>(enc, k, int64_t(1), eh, eb, ea, z);

  // Decoder with the d tangents e_j: the input layer's tangent is W_in itself.
  const T* dw = dec.in_w + k * Wd * d;
  const T* db = dec.in_b + k * Wd;
  const Sv<T> S = s + L.S, Bm = s + L.Bm, A = s + L.A, Y = s + L.Y;
  for (int64_t f = 0; f < Wd; ++f) {
    T v = db[f];
    for (int64_t j = 0; j < d; ++j) v += dw[f * d + j] * z[j];
    S[f * G] = v;
    for (int64_t j = 0; j < d; ++j) S[f * G + 1 + j] = dw[f * d + j];
  }
  mlp_forward<4, 8>(dec, k, G, S, Bm, A, Y);

  // Residual, Gram matrix J^T J (double), |z|.
  T res = T(0);
  for (int64_t m = 0; m < n; ++m) {
    const T e = x[m] - Y[m * G];
    res += e * e;
  }
  const Sv<double> D = ds, Lc = ds + d * d, Li = ds + 2 * d * d;
  for (int64_t a = 0; a < d; ++a)
    for (int64_t c = 0; c <= a; ++c) {
      T acc = T(0);
      for (int64_t m = 0; m < n; ++m) acc += Y[m * G + 1 + a] * Y[m * G + 1 + c];
      D[a * d + c] = double(acc);
    }
  T rz = T(0);
  for (int64_t j = 0; j < d; ++j) rz += z[j] * z[j];
  const double logdet = gram_logdet_inverse(D, Lc, Li, d, grad);
  const double r = sqrt(double(rz) + 1e-12);
  double U, dU;
  radial_energy(r, &U, &dU);
  const T lp = T(-U - P.log_const) - T(0.5) * T(logdet) - T(0.5) * inv_s2 * res;
  if (!grad) return lp;

  // Adjoints of l_k: x_hat -> (x - x_hat)/sigma^2; J -> -J G^{-1}.
  const Sv<T> ybar = s + L.ybar, sbar = s + L.sbar, r1 = s + L.r1, r2 = s + L.r2;
  for (int64_t m = 0; m < n; ++m) {
    ybar[m * G] = (x[m] - Y[m * G]) * inv_s2;
    for (int64_t j = 0; j < d; ++j) {
      T v = T(0);
      for (int64_t a = 0; a < d; ++a) v -= Y[m * G + 1 + a] * T(D[a * d + j]);
      ybar[m * G + 1 + j] = v;
    }
  }
  // Back through the decoder to z (only the value column reaches z), then the prior -U'(r) z / r.
  mlp_backward<4, 8>(dec, k, G, S, Bm, ybar, sbar, r1, r2);
  const Sv<T> zbar = s + L.zbar;
  const T dUr = T(dU / r);
  for (int64_t j = 0; j < d; ++j) {
    T v = T(0);
    for (int64_t f = 0; f < Wd; ++f) v += dw[f * d + j] * sbar[f * G];
    zbar[j] = v - dUr * z[j];
  }
  // Back through the encoder to x, plus the residual's direct term -(x - x_hat)/sigma^2.
  const Sv<T> ebar = s + L.ebar;
  mlp_backward<8, 1>(enc, k, int64_t(1), eh, eb, zbar, ebar, s + L.e1, s + L.e2);
  const T* ew = enc.in_w + k * We * n;
  for (int64_t i = 0; i < n; ++i) {
    T v = T(0);
    for (int64_t f = 0; f < We; ++f) v += ew[f * n + i] * ebar[f];
    g[i] = v - ybar[i * G];
  }
  return lp;
}

}  // namespace simt
}  // namespace charts
}  // namespace patchreg
