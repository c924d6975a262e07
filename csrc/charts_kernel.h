// The loops of the fused chart-mixture kernel (see charts_cpu.cpp for the maths), compiled three
// times: by charts_cpu.cpp (portable), and through charts_simd_loops.h by charts_cpu_avx2.cpp
// (after `#pragma GCC target("avx2,fma")`) and charts_cpu_avx512.cpp (AVX-512).
// Each includer first opens namespace patchreg::charts::PATCHREG_CHARTS_NS and defines there
//   gemm(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init):
//       C[r][p] = init[r][p] + sum_k A[r*rs + k*cs] X[k*ldx + p], r < M, p < cols (a multiple
//       of 16/8); init (row stride ldc) may be C itself, or null for zero;
//   sigmoid(h, s, count); kexp, klog, ksqrt (double).
// This file includes nothing, so no template of the standard library is compiled for AVX2.
//
// Layout: one block of kBlock points, feature-major, points contiguous. With tangents, a row holds
// (1 + d) groups of kBlock columns: the value, then the derivative along z_j for j < d.

template <typename T>
struct Scratch {
  T *xt, *eh, *es, *eb, *esb, *ea, *z;   // encoder: h_l and sigmoid(h_l) (L+1), b_l and sigmoid (L), act, z
  T *S, *ss, *Bm, *sb, *A, *Y;           // decoder with tangents: same, Y = (x_hat | J)
  T *gram, *ginv, *lp, *rad, *dU;        // per point
  T *ybar, *sbar, *r1, *r2, *zbar;       // reverse mode through the decoder
  T *ebar, *e1, *e2, *gk, *gacc;         // reverse mode through the encoder; gradients
  T *rmax, *rsum, *scale, *weight;       // online logsumexp over charts
  T *vnni;                               // the AMX loops' bfloat16 copy of a layer's tangent input
  T *pix;                                // one patch's values (points read from images)
};

// Carves the scratch (base == nullptr: only counts) and returns its size in values of T.
template <typename T>
int64_t layout(const Problem<T>& P, T* base, Scratch<T>* s) {
  const int64_t NB = kBlock, n = P.n, d = P.d, C = (1 + d) * NB;
  const int64_t We = P.enc.width, Le = P.enc.blocks, Wd = P.dec.width, Ld = P.dec.blocks;
  int64_t off = 0;
  auto take = [&](T** field, int64_t count) {
    *field = base == nullptr ? nullptr : base + off;
    off += (count + 15) / 16 * 16;  // keeps every array 64-byte aligned relative to base
  };
  take(&s->xt, n * NB);
  take(&s->eh, (Le + 1) * We * NB);
  take(&s->es, (Le + 1) * We * NB);
  take(&s->eb, Le * We * NB);
  take(&s->esb, Le * We * NB);
  take(&s->ea, We * NB);
  take(&s->z, d * NB);
  take(&s->S, (Ld + 1) * Wd * C);
  take(&s->ss, (Ld + 1) * Wd * NB);
  take(&s->Bm, Ld * Wd * C);
  take(&s->sb, Ld * Wd * NB);
  take(&s->A, Wd * C);
  take(&s->Y, n * C);
  take(&s->gram, d * d * NB);
  take(&s->ginv, d * d * NB);
  take(&s->lp, NB);
  take(&s->rad, NB);
  take(&s->dU, NB);
  take(&s->ybar, n * C);
  take(&s->sbar, Wd * C);
  take(&s->r1, Wd * C);
  take(&s->r2, Wd * C);
  take(&s->zbar, d * NB);
  take(&s->ebar, We * NB);
  take(&s->e1, We * NB);
  take(&s->e2, We * NB);
  take(&s->gk, n * NB);
  take(&s->gacc, n * NB);
  take(&s->rmax, NB);
  take(&s->rsum, NB);
  take(&s->scale, NB);
  take(&s->weight, NB);
  take(&s->vnni, Wd * d * NB / 2 + 16);
  take(&s->pix, P.image == nullptr ? 0 : P.channels * P.patch * P.patch * NB);
  return off;
}

// C[r][p] += b[r] for the value columns (p < kBlock) of `rows` rows.
template <typename T>
inline void add_bias(T* C, int64_t ldc, const T* b, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    T* c = C + r * ldc;
    const T v = b[r];
    for (int64_t p = 0; p < kBlock; ++p) c[p] += v;
  }
}

// A = (silu(h) | silu'(h) t_j) for rows of (h | t_j) with `groups` = 1 + #tangents; sig = sigmoid(h).
template <typename T>
void act_forward(const T* S, T* sig, T* A, int64_t rows, int64_t groups) {
  const int64_t NB = kBlock, ld = groups * NB;
  T ds[kBlock];
  for (int64_t f = 0; f < rows; ++f) {
    const T* h = S + f * ld;
    T* s = sig + f * NB;
    T* a = A + f * ld;
    sigmoid(h, s, NB);
    for (int64_t p = 0; p < NB; ++p) {
      a[p] = h[p] * s[p];
      ds[p] = s[p] * (T(1) + h[p] * (T(1) - s[p]));
    }
    for (int64_t g = 1; g < groups; ++g)
      for (int64_t p = 0; p < NB; ++p) a[g * NB + p] = ds[p] * h[g * NB + p];
  }
}

// Reverse of act_forward: given Abar (adjoint of A), (h | t_j) and sig, writes (or adds) the
// adjoint of (h | t_j): hbar = silu'(h) Abar_0 + silu''(h) sum_j Abar_j t_j, tbar_j = silu'(h) Abar_j.
template <typename T>
void act_backward(const T* S, const T* sig, const T* Abar, T* Sbar, int64_t rows, int64_t groups,
                  bool accumulate) {
  const int64_t NB = kBlock, ld = groups * NB;
  T ds[kBlock], dds[kBlock], acc[kBlock];
  for (int64_t f = 0; f < rows; ++f) {
    const T* h = S + f * ld;
    const T* s = sig + f * NB;
    const T* ab = Abar + f * ld;
    T* sb = Sbar + f * ld;
    for (int64_t p = 0; p < NB; ++p) {
      const T one_s = T(1) - s[p];
      ds[p] = s[p] * (T(1) + h[p] * one_s);
      dds[p] = s[p] * one_s * (T(2) + h[p] * (one_s - s[p]));
      acc[p] = ds[p] * ab[p];
    }
    for (int64_t g = 1; g < groups; ++g) {
      const T* t = h + g * NB;
      const T* abg = ab + g * NB;
      T* sbg = sb + g * NB;
      if (accumulate) {
        for (int64_t p = 0; p < NB; ++p) acc[p] += dds[p] * abg[p] * t[p], sbg[p] += ds[p] * abg[p];
      } else {
        for (int64_t p = 0; p < NB; ++p) acc[p] += dds[p] * abg[p] * t[p], sbg[p] = ds[p] * abg[p];
      }
    }
    if (accumulate) {
      for (int64_t p = 0; p < NB; ++p) sb[p] += acc[p];
    } else {
      for (int64_t p = 0; p < NB; ++p) sb[p] = acc[p];
    }
  }
}

// The GEMM of residual-block layer `layer` (0 .. 2 blocks - 1) of chart k on `groups` column groups:
// C = init + W X, or W^T X when transposed. The AMX loops add a float overload (charts_amx_gemm.h), which
// `work` is scratch for.
template <typename T>
inline void block_gemm(const Mlp<T>& m, int64_t k, int64_t layer, bool transposed, const T* X,
                       int64_t ld, T* C, const T* init, int64_t groups, T* work) {
  (void)work;
  const int64_t W = m.width;
  gemm(m.blk_w[layer] + k * W * W, transposed ? int64_t(1) : W, transposed ? W : int64_t(1), W, W,
       X, ld, C, ld, groups * kBlock, init);
}

// Forward pass of chart k's MLP on `groups` column groups (1: values only). Saves h_l, b_l and
// their sigmoids in H (L+1 slices), Bs (L slices), sH, sB; act is a work buffer; out gets the
// output rows (value columns get the bias). The input rows X must already hold (x | tangents)
// pushed through W_in: H[0] is filled by the caller.
template <typename T>
void mlp_blocks(const Mlp<T>& m, int64_t k, int64_t groups, T* H, T* sH, T* Bs, T* sB, T* act,
                T* out, int64_t ld_out, T* work) {
  const int64_t W = m.width, NB = kBlock, ld = groups * NB, slice = W * ld, sslice = W * NB;
  for (int64_t l = 0; l < m.blocks; ++l) {
    T* h = H + l * slice;
    T* b = Bs + l * slice;
    act_forward(h, sH + l * sslice, act, W, groups);
    block_gemm(m, k, 2 * l, false, act, ld, b, static_cast<const T*>(nullptr), groups, work);
    add_bias(b, ld, m.blk_b[2 * l] + k * W, W);
    act_forward(b, sB + l * sslice, act, W, groups);
    T* next = h + slice;  // h_{l+1} = h_l + W_{l,1} act + b_{l,1}
    block_gemm(m, k, 2 * l + 1, false, act, ld, next, static_cast<const T*>(h), groups, work);
    add_bias(next, ld, m.blk_b[2 * l + 1] + k * W, W);
  }
  act_forward(H + m.blocks * slice, sH + m.blocks * sslice, act, W, groups);
  gemm(m.out_w + k * m.out * W, W, int64_t(1), m.out, W, act, ld, out, ld_out, ld, nullptr);
  add_bias(out, ld_out, m.out_b + k * m.out, m.out);
}

// Reverse of mlp_blocks: Obar (out rows, `groups` groups) -> Hbar = adjoint of H[0] (written).
template <typename T>
void mlp_blocks_backward(const Mlp<T>& m, int64_t k, int64_t groups, const T* H, const T* sH,
                         const T* Bs, const T* sB, const T* Obar, int64_t ld_obar, T* Hbar, T* r1,
                         T* r2, T* work) {
  const int64_t W = m.width, NB = kBlock, ld = groups * NB, slice = W * ld, sslice = W * NB;
  gemm(m.out_w + k * m.out * W, int64_t(1), W, W, m.out, Obar, ld_obar, r1, ld, ld, nullptr);
  act_backward(H + m.blocks * slice, sH + m.blocks * sslice, r1, Hbar, W, groups, false);
  for (int64_t l = m.blocks - 1; l >= 0; --l) {
    block_gemm(m, k, 2 * l + 1, true, Hbar, ld, r1, static_cast<const T*>(nullptr), groups, work);
    act_backward(Bs + l * slice, sB + l * sslice, r1, r2, W, groups, false);
    block_gemm(m, k, 2 * l, true, r2, ld, r1, static_cast<const T*>(nullptr), groups, work);
    act_backward(H + l * slice, sH + l * sslice, r1, Hbar, W, groups, true);
  }
}

// Latent prior: U(r) and U'(r) of patchreg.charts.latent_prior.radial_energy.
inline void radial_energy(double r, double* U, double* dU) {
  const double flat = 0.8, width = 0.2, border = -klog(0.05), slope = 2 * border / width;
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

// log det and inverse of the d x d Gram matrices of the block's points by Cholesky (in double).
// gram holds the lower triangle, entry (a, b) at gram[(a*d + b)*kBlock + p]. A matrix that is not
// positive definite gives NaN (the reference raises instead).
template <typename T>
void gram_logdet_inverse(const T* gram, int64_t d, bool inverse, T* logdet, T* ginv, double* L) {
  const int64_t NB = kBlock;
  double* Li = L + d * d;
  const double nan = __builtin_nan("");
  for (int64_t p = 0; p < NB; ++p) {
    bool ok = true;
    double ld = 0;
    for (int64_t j = 0; j < d && ok; ++j) {
      double s = gram[(j * d + j) * NB + p];
      for (int64_t q = 0; q < j; ++q) s -= L[j * d + q] * L[j * d + q];
      if (!(s > 0)) {
        ok = false;
        break;
      }
      const double djj = ksqrt(s);
      L[j * d + j] = djj;
      ld += klog(djj);
      for (int64_t i = j + 1; i < d; ++i) {
        double v = gram[(i * d + j) * NB + p];
        for (int64_t q = 0; q < j; ++q) v -= L[i * d + q] * L[j * d + q];
        L[i * d + j] = v / djj;
      }
    }
    logdet[p] = ok ? T(2 * ld) : T(nan);
    if (!inverse) continue;
    if (!ok) {
      for (int64_t i = 0; i < d * d; ++i) ginv[i * NB + p] = T(nan);
      continue;
    }
    // Li = L^{-1} (lower), then G^{-1} = Li^T Li.
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
        ginv[(a * d + b) * NB + p] = ginv[(b * d + a) * NB + p] = T(v);
      }
  }
}

// The block's points read straight from the images (Problem::image): the patches gathered
// feature-major into pix (C p^2 x kBlock, padding columns zero), then xt = patch_basis^T pix as
// one GEMM tile and each column times its point_scale.
template <typename T>
void load_patches(const Problem<T>& P, int64_t n0, int64_t nb, T* pix, T* xt) {
  const int64_t NB = kBlock, n = P.n, pp = P.patch, D = P.channels * pp * pp;
  for (int64_t i = 0; i < D * NB; ++i) pix[i] = T(0);
  for (int64_t p = 0; p < nb; ++p) {
    const T* src = P.image + P.offsets[n0 + p];
    T* col = pix + p;
    for (int64_t c = 0; c < P.channels; ++c)
      for (int64_t i = 0; i < pp; ++i) {
        const T* r = src + c * P.plane + i * P.row;
        for (int64_t j = 0; j < pp; ++j, col += NB) *col = r[j];
      }
  }
  gemm(P.patch_basis, int64_t(1), n, n, D, pix, NB, xt, NB, NB, nullptr);
  T sc[kBlock];
  for (int64_t p = 0; p < NB; ++p) sc[p] = p < nb ? P.point_scale[n0 + p] : T(0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < NB; ++p) xt[i * NB + p] *= sc[p];
}

// Points [begin, end) of blocks of kBlock: every chart's log-density, the mixture's, and the gradient.
template <typename T>
void run_blocks_impl(const Problem<T>& P, int64_t begin, int64_t end, T* base, double* dscratch) {
  Scratch<T> s;
  layout(P, base, &s);
  const int64_t NB = kBlock, n = P.n, d = P.d, K = P.K, C = (1 + d) * NB;
  const Mlp<T>& enc = P.enc;
  const Mlp<T>& dec = P.dec;
  const int64_t We = enc.width, Wd = dec.width;
  const bool grad = P.grad_x != nullptr;
  const T inv_s2 = T(P.inv_sigma2);
  const T neg_inf = -__builtin_inf();
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t n0 = blk * NB, nb = P.B - n0 < NB ? P.B - n0 : NB;
    // Transposed points; the padding columns are zero (computed, never written out).
    for (int64_t i = 0; i < n * NB; ++i) s.xt[i] = T(0);
    if (P.image == nullptr)
      for (int64_t p = 0; p < nb; ++p)
        for (int64_t i = 0; i < n; ++i) s.xt[i * NB + p] = P.x[(n0 + p) * n + i];
    else
      load_patches(P, n0, nb, s.pix, s.xt);
    for (int64_t p = 0; p < NB; ++p) s.rmax[p] = neg_inf, s.rsum[p] = T(0);
    if (grad)
      for (int64_t i = 0; i < n * NB; ++i) s.gacc[i] = T(0);

    for (int64_t k = 0; k < K; ++k) {
      // Encoder (values only): z = E(x), frame folded into its input layer.
      gemm(enc.in_w + k * We * n, n, int64_t(1), We, n, s.xt, NB, s.eh, NB, NB, nullptr);
      add_bias(s.eh, NB, enc.in_b + k * We, We);
      mlp_blocks(enc, k, int64_t(1), s.eh, s.es, s.eb, s.esb, s.ea, s.z, NB, s.vnni);

      // Decoder with the d tangents e_j: the input layer's tangent is W_in itself.
      const T* dw = dec.in_w + k * Wd * d;
      gemm(dw, d, int64_t(1), Wd, d, s.z, NB, s.S, C, NB, nullptr);
      add_bias(s.S, C, dec.in_b + k * Wd, Wd);
      for (int64_t f = 0; f < Wd; ++f)
        for (int64_t j = 0; j < d; ++j) {
          T* t = s.S + f * C + (1 + j) * NB;
          for (int64_t p = 0; p < NB; ++p) t[p] = dw[f * d + j];
        }
      mlp_blocks(dec, k, 1 + d, s.S, s.ss, s.Bm, s.sb, s.A, s.Y, C, s.vnni);

      // Per point: residual, Gram matrix J^T J (lower triangle), |z|.
      T res[kBlock], rz[kBlock];
      for (int64_t p = 0; p < NB; ++p) res[p] = T(0), rz[p] = T(0);
      for (int64_t m = 0; m < n; ++m) {
        const T* xm = s.xt + m * NB;
        const T* ym = s.Y + m * C;
        for (int64_t p = 0; p < NB; ++p) {
          const T e = xm[p] - ym[p];
          res[p] += e * e;
        }
      }
      for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b <= a; ++b) {
          T* g = s.gram + (a * d + b) * NB;
          for (int64_t p = 0; p < NB; ++p) g[p] = T(0);
          for (int64_t m = 0; m < n; ++m) {
            const T* ja = s.Y + m * C + (1 + a) * NB;
            const T* jb = s.Y + m * C + (1 + b) * NB;
            for (int64_t p = 0; p < NB; ++p) g[p] += ja[p] * jb[p];
          }
        }
      for (int64_t j = 0; j < d; ++j)
        for (int64_t p = 0; p < NB; ++p) rz[p] += s.z[j * NB + p] * s.z[j * NB + p];
      T logdet[kBlock];
      gram_logdet_inverse(s.gram, d, grad, logdet, s.ginv, dscratch);
      for (int64_t p = 0; p < NB; ++p) {
        const double r = ksqrt(double(rz[p]) + 1e-12);
        double U, dU;
        radial_energy(r, &U, &dU);
        s.rad[p] = T(r);
        s.dU[p] = T(dU / r);
        s.lp[p] = T(-U - P.log_const) - T(0.5) * logdet[p] - T(0.5) * inv_s2 * res[p];
      }
      for (int64_t p = 0; p < nb; ++p) P.chart_lp[(n0 + p) * K + k] = s.lp[p];

      if (grad) {
        // Adjoints of chart_lp: x_hat -> (x - x_hat)/sigma^2; J -> -J G^{-1}.
        for (int64_t m = 0; m < n; ++m) {
          const T* xm = s.xt + m * NB;
          const T* ym = s.Y + m * C;
          T* yb = s.ybar + m * C;
          for (int64_t p = 0; p < NB; ++p) yb[p] = (xm[p] - ym[p]) * inv_s2;
          for (int64_t j = 0; j < d; ++j) {
            T* tb = yb + (1 + j) * NB;
            for (int64_t p = 0; p < NB; ++p) tb[p] = T(0);
            for (int64_t a = 0; a < d; ++a) {
              const T* ja = ym + (1 + a) * NB;
              const T* gi = s.ginv + (a * d + j) * NB;
              for (int64_t p = 0; p < NB; ++p) tb[p] -= ja[p] * gi[p];
            }
          }
        }
        // Back through the decoder (its second derivatives enter via silu'') to z.
        mlp_blocks_backward(dec, k, 1 + d, s.S, s.ss, s.Bm, s.sb, s.ybar, C, s.sbar, s.r1, s.r2,
                            s.vnni);
        gemm(dw, int64_t(1), d, d, Wd, s.sbar, C, s.zbar, NB, NB, nullptr);
        for (int64_t j = 0; j < d; ++j)  // prior: -U'(r) z / r
          for (int64_t p = 0; p < NB; ++p) s.zbar[j * NB + p] -= s.dU[p] * s.z[j * NB + p];
        // Back through the encoder to x, plus the residual's direct term -(x - x_hat)/sigma^2.
        mlp_blocks_backward(enc, k, int64_t(1), s.eh, s.es, s.eb, s.esb, s.zbar, NB, s.ebar, s.e1,
                            s.e2, s.vnni);
        gemm(enc.in_w + k * We * n, int64_t(1), n, n, We, s.ebar, NB, s.gk, NB, NB, nullptr);
        for (int64_t m = 0; m < n; ++m) {
          T* g = s.gk + m * NB;
          const T* yb = s.ybar + m * C;
          for (int64_t p = 0; p < NB; ++p) g[p] -= yb[p];
        }
      }

      // Online logsumexp over charts; the gradient is rescaled when the running max moves.
      const T la = P.log_alpha[k];
      for (int64_t p = 0; p < NB; ++p) {
        const T l = la + s.lp[p];
        if (l > s.rmax[p]) {
          s.scale[p] = s.rmax[p] == neg_inf ? T(0) : T(kexp(double(s.rmax[p] - l)));
          s.rsum[p] = s.rsum[p] * s.scale[p] + T(1);
          s.rmax[p] = l;
          s.weight[p] = T(1);
        } else {
          s.scale[p] = T(1);
          s.weight[p] = l == neg_inf ? T(0) : T(kexp(double(l - s.rmax[p])));
          s.rsum[p] += s.weight[p];
        }
      }
      if (grad)
        for (int64_t m = 0; m < n; ++m) {
          T* ga = s.gacc + m * NB;
          const T* g = s.gk + m * NB;
          for (int64_t p = 0; p < NB; ++p) ga[p] = ga[p] * s.scale[p] + s.weight[p] * g[p];
        }
    }
    for (int64_t p = 0; p < nb; ++p) {
      P.log_prob[n0 + p] = s.rmax[p] + T(klog(double(s.rsum[p])));
      if (grad)
        for (int64_t m = 0; m < n; ++m) P.grad_x[(n0 + p) * n + m] = s.gacc[m * NB + p] / s.rsum[p];
    }
  }
}
