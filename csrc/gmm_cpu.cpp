// Gaussian-mixture log-likelihood of patches on the CPU (at::parallel_for, OpenMP).
// Reference: patchreg/reference/gmm.py. Tests: tests/test_gmm.py. Benchmarks: bench/bench_gmm.py.
//
// Inputs: patches X (N, d); prec_chol U (K, d, d) with precision P_k = U_k U_k^T; log_const c (K);
// means mu (K, d). Component log-likelihood l_nk = c_k - 1/2 ||U_k^T (x_n - mu_k)||^2.
//
// Scheme: patches are cut into blocks of kBlock, stored transposed (d x kBlock) so the innermost
// loop runs over patches (contiguous, vectorised); each block loops over all K components while
// its data and the component's U_k stay in L1/L2. Nothing of size N*K*d is ever built. Zero
// entries of U_k are skipped by column/row ranges, so the triangular factors of the GMM class
// cost half of a full matrix. The mixture log-likelihood is an online logsumexp; its gradient
// -sum_k r_nk P_k (x_n - mu_k) is accumulated alongside and rescaled when the running max moves.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "gmm.h"
#include "gmm_cpu_avx2.h"

namespace patchreg {
namespace {

constexpr int64_t kBlock = avx2::kBlockPatches;  // patches per block (whole AVX2 tiles)

// Nonzero ranges of every U_k: for column j the rows [col_lo, col_hi), for row i the columns
// [row_lo, row_hi). A full matrix gives [0, d) everywhere; an upper-triangular one halves the work.
struct SparsityRanges {
  std::vector<int32_t> col_lo, col_hi, row_lo, row_hi;  // (K, d) each
};

template <typename T>
SparsityRanges nonzero_ranges(const T* U, int64_t K, int64_t d) {
  SparsityRanges r;
  r.col_lo.assign(K * d, 0);
  r.col_hi.assign(K * d, 0);
  r.row_lo.assign(K * d, 0);
  r.row_hi.assign(K * d, 0);
  for (int64_t k = 0; k < K; ++k) {
    const T* u = U + k * d * d;
    for (int64_t a = 0; a < d; ++a) {
      int64_t clo = d, chi = 0, rlo = d, rhi = 0;  // empty ranges unless a nonzero is found
      for (int64_t b = 0; b < d; ++b) {
        if (u[b * d + a] != T(0)) clo = std::min(clo, b), chi = b + 1;  // column a, row b
        if (u[a * d + b] != T(0)) rlo = std::min(rlo, b), rhi = b + 1;  // row a, column b
      }
      r.col_lo[k * d + a] = static_cast<int32_t>(std::min(clo, chi));
      r.col_hi[k * d + a] = static_cast<int32_t>(chi);
      r.row_lo[k * d + a] = static_cast<int32_t>(std::min(rlo, rhi));
      r.row_hi[k * d + a] = static_cast<int32_t>(rhi);
    }
  }
  return r;
}

// The AVX2 kernels' packed copy of U (layouts in gmm_cpu_avx2.h): groups of 4 columns for the
// projection, groups of 4 rows for the gradient, each with the row (column) range of its nonzeros.
template <typename T>
struct PackedFactors {
  int64_t G = 0;                          // ceil(d / 4)
  std::vector<T> cols, rows, offset;      // (K, G, d, 4), (K, G, d, 4), (K, 4G)
  std::vector<int32_t> clo, chi, rlo, rhi;  // (K, G) each

  PackedFactors(const T* U, const std::vector<T>& off, const SparsityRanges& r, int64_t K,
                int64_t d)
      : G((d + 3) / 4), cols(K * G * d * 4, T(0)), rows(K * G * d * 4, T(0)),
        offset(K * G * 4, T(0)), clo(K * G, 0), chi(K * G, 0), rlo(K * G, 0), rhi(K * G, 0) {
    for (int64_t k = 0; k < K; ++k) {
      const T* u = U + k * d * d;
      for (int64_t g = 0; g < G; ++g) {
        int32_t c_lo = static_cast<int32_t>(d), c_hi = 0, r_lo = static_cast<int32_t>(d), r_hi = 0;
        for (int64_t c = 0; c < 4 && 4 * g + c < d; ++c) {
          const int64_t a = k * d + 4 * g + c;  // column (row) 4g + c of U_k
          if (r.col_hi[a] > r.col_lo[a]) c_lo = std::min(c_lo, r.col_lo[a]), c_hi = std::max(c_hi, r.col_hi[a]);
          if (r.row_hi[a] > r.row_lo[a]) r_lo = std::min(r_lo, r.row_lo[a]), r_hi = std::max(r_hi, r.row_hi[a]);
          offset[(k * G + g) * 4 + c] = off[a];
          for (int64_t i = 0; i < d; ++i) {
            cols[((k * G + g) * d + i) * 4 + c] = u[i * d + 4 * g + c];
            rows[((k * G + g) * d + i) * 4 + c] = u[(4 * g + c) * d + i];
          }
        }
        clo[k * G + g] = std::min(c_lo, c_hi), chi[k * G + g] = c_hi;
        rlo[k * G + g] = std::min(r_lo, r_hi), rhi[k * G + g] = r_hi;
      }
    }
  }
};

// Per-component constants and sparsity, computed once per call.
template <typename T>
struct Mixture {
  const T* U;
  const T* log_const;  // may be null (backward)
  std::vector<T> offset;  // U_k^T mu_k, (K, d)
  SparsityRanges ranges;
  int64_t K, d;
  std::unique_ptr<PackedFactors<T>> packed;  // set when the AVX2 or AVX-512 loops run
  avx2::BlockLoops<T> loops{nullptr, nullptr};  // the packed loops' instruction set, chosen once per call

  Mixture(const T* U_, const T* c, const T* mu, int64_t K_, int64_t d_)
      : U(U_), log_const(c), offset(K_ * d_, T(0)), ranges(nonzero_ranges(U_, K_, d_)), K(K_), d(d_) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) offset[k * d + j] += U[(k * d + i) * d + j] * mu[k * d + i];
    if (avx512_gmm::enabled())
      loops = avx512_gmm::loops(T());
    else if (avx2::enabled())
      loops = avx2::loops(T());
    if (loops.project != nullptr) packed = std::make_unique<PackedFactors<T>>(U, offset, ranges, K, d);
  }

  // Rows of the per-block buffers y and g: padded to a multiple of 4 for the AVX2 kernels.
  int64_t buffer_rows() const { return packed ? 4 * packed->G : d; }
};

// Loads patches [n0, n0 + nb) transposed into xt (d x kBlock); unused columns are zero.
template <typename T>
void load_block(const T* X, int64_t n0, int64_t nb, int64_t d, T* xt) {
  std::fill(xt, xt + d * kBlock, T(0));
  for (int64_t n = 0; n < nb; ++n) {
    const T* x = X + (n0 + n) * d;
    for (int64_t i = 0; i < d; ++i) xt[i * kBlock + n] = x[i];
  }
}

// y = U_k^T (x - mu_k) for the block (d x kBlock, stored if y != nullptr) and quad = ||y||^2.
template <typename T>
void project(const Mixture<T>& m, int64_t k, const T* xt, T* y, T* quad) {
  const int64_t d = m.d;
  if (m.packed) {
    const auto& p = *m.packed;
    m.loops.project(p.cols.data() + k * p.G * d * 4, p.clo.data() + k * p.G, p.chi.data() + k * p.G,
                    p.offset.data() + k * p.G * 4, d, xt, y, quad);
    return;
  }
  const T* u = m.U + k * d * d;
  const T* off = m.offset.data() + k * d;
  const int32_t* lo = m.ranges.col_lo.data() + k * d;
  const int32_t* hi = m.ranges.col_hi.data() + k * d;
  T acc[kBlock];
  for (int64_t n = 0; n < kBlock; ++n) quad[n] = T(0);
  for (int64_t j = 0; j < d; ++j) {
    for (int64_t n = 0; n < kBlock; ++n) acc[n] = -off[j];
    for (int64_t i = lo[j]; i < hi[j]; ++i) {
      const T uij = u[i * d + j];
      const T* xi = xt + i * kBlock;
      for (int64_t n = 0; n < kBlock; ++n) acc[n] += uij * xi[n];
    }
    for (int64_t n = 0; n < kBlock; ++n) quad[n] += acc[n] * acc[n];
    if (y != nullptr) std::copy(acc, acc + kBlock, y + j * kBlock);
  }
}

// g += weight[n] * (-U_k y) after g *= scale[n] (scale == nullptr: no rescaling); d x kBlock.
template <typename T>
void accumulate_gradient(const Mixture<T>& m, int64_t k, const T* y, const T* scale,
                         const T* weight, T* g) {
  const int64_t d = m.d;
  if (m.packed) {
    const auto& p = *m.packed;
    m.loops.gradient(p.rows.data() + k * p.G * d * 4, p.rlo.data() + k * p.G, p.rhi.data() + k * p.G, d, y,
                     scale, weight, g);
    return;
  }
  const T* u = m.U + k * d * d;
  const int32_t* lo = m.ranges.row_lo.data() + k * d;
  const int32_t* hi = m.ranges.row_hi.data() + k * d;
  T acc[kBlock];
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t n = 0; n < kBlock; ++n) acc[n] = T(0);
    for (int64_t j = lo[i]; j < hi[i]; ++j) {
      const T uij = u[i * d + j];
      const T* yj = y + j * kBlock;
      for (int64_t n = 0; n < kBlock; ++n) acc[n] -= uij * yj[n];
    }
    T* gi = g + i * kBlock;
    if (scale != nullptr) {
      for (int64_t n = 0; n < kBlock; ++n) gi[n] = gi[n] * scale[n] + weight[n] * acc[n];
    } else {
      for (int64_t n = 0; n < kBlock; ++n) gi[n] += weight[n] * acc[n];
    }
  }
}

template <typename T>
void component_kernel(const T* X, const Mixture<T>& m, int64_t N, T* out) {
  const int64_t d = m.d, K = m.K, n_blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xt(d * kBlock);
    T quad[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, N - n0);
      load_block(X, n0, nb, d, xt.data());
      for (int64_t k = 0; k < K; ++k) {
        project(m, k, xt.data(), static_cast<T*>(nullptr), quad);
        for (int64_t n = 0; n < nb; ++n) out[(n0 + n) * K + k] = m.log_const[k] - T(0.5) * quad[n];
      }
    }
  });
}

template <typename T>
void component_backward_kernel(const T* grad_out, const T* X, const Mixture<T>& m, int64_t N,
                               T* grad_x) {
  const int64_t d = m.d, K = m.K, n_blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xt(d * kBlock), y(m.buffer_rows() * kBlock), g(m.buffer_rows() * kBlock);
    T quad[kBlock], weight[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, N - n0);
      load_block(X, n0, nb, d, xt.data());
      std::fill(g.begin(), g.end(), T(0));
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t n = 0; n < kBlock; ++n) weight[n] = n < nb ? grad_out[(n0 + n) * K + k] : T(0);
        project(m, k, xt.data(), y.data(), quad);
        accumulate_gradient(m, k, y.data(), static_cast<const T*>(nullptr), weight, g.data());
      }
      for (int64_t n = 0; n < nb; ++n)
        for (int64_t i = 0; i < d; ++i) grad_x[(n0 + n) * d + i] = g[i * kBlock + n];
    }
  });
}

template <typename T>
void mixture_kernel(const T* X, const Mixture<T>& m, int64_t N, bool with_grad, T* loglik,
                    int64_t* best, T* grad) {
  const int64_t d = m.d, K = m.K, n_blocks = (N + kBlock - 1) / kBlock;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t rows = with_grad ? m.buffer_rows() * kBlock : 0;
    std::vector<T> xt(d * kBlock), y(rows), g(rows);
    T quad[kBlock], run_max[kBlock], run_sum[kBlock], scale[kBlock], weight[kBlock];
    int64_t arg[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, N - n0);
      load_block(X, n0, nb, d, xt.data());
      std::fill(g.begin(), g.end(), T(0));
      for (int64_t n = 0; n < kBlock; ++n) run_max[n] = neg_inf, run_sum[n] = T(0), arg[n] = 0;
      for (int64_t k = 0; k < K; ++k) {
        project(m, k, xt.data(), with_grad ? y.data() : nullptr, quad);
        for (int64_t n = 0; n < kBlock; ++n) {
          const T l = m.log_const[k] - T(0.5) * quad[n];
          if (l > run_max[n]) {  // new maximum: rescale what was accumulated (first max wins ties)
            scale[n] = run_max[n] == neg_inf ? T(0) : std::exp(run_max[n] - l);
            run_sum[n] = run_sum[n] * scale[n] + T(1);
            run_max[n] = l;
            weight[n] = T(1);
            arg[n] = k;
          } else {
            scale[n] = T(1);
            weight[n] = l == neg_inf ? T(0) : std::exp(l - run_max[n]);
            run_sum[n] += weight[n];
          }
        }
        if (with_grad) accumulate_gradient(m, k, y.data(), scale, weight, g.data());
      }
      for (int64_t n = 0; n < nb; ++n) {
        loglik[n0 + n] = run_max[n] + std::log(run_sum[n]);
        best[n0 + n] = arg[n];
        if (with_grad)
          for (int64_t i = 0; i < d; ++i) grad[(n0 + n) * d + i] = g[i * kBlock + n] / run_sum[n];
      }
    }
  });
}

// Best component and its log-likelihood per patch (EPLL's z-step): the component kernel's work
// without writing the (N, K) matrix or exponentials. Ties go to the lowest k, as torch.max.
template <typename T>
void best_kernel(const T* X, const Mixture<T>& m, int64_t N, T* max_log_prob, int64_t* best) {
  const int64_t d = m.d, K = m.K, n_blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xt(d * kBlock);
    T quad[kBlock], run_max[kBlock];
    int64_t arg[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, N - n0);
      load_block(X, n0, nb, d, xt.data());
      for (int64_t n = 0; n < kBlock; ++n) run_max[n] = -std::numeric_limits<T>::infinity(), arg[n] = 0;
      for (int64_t k = 0; k < K; ++k) {
        project(m, k, xt.data(), static_cast<T*>(nullptr), quad);
        for (int64_t n = 0; n < kBlock; ++n) {
          const T l = m.log_const[k] - T(0.5) * quad[n];
          if (l > run_max[n]) run_max[n] = l, arg[n] = k;
        }
      }
      for (int64_t n = 0; n < nb; ++n) max_log_prob[n0 + n] = run_max[n], best[n0 + n] = arg[n];
    }
  });
}

void check_cpu(const at::Tensor& patches) {
  TORCH_CHECK_VALUE(patches.device().is_cpu(), "patches must be on the CPU for this kernel");
}

at::Tensor gmm_component_log_prob_cpu(const at::Tensor& patches, const at::Tensor& prec_chol,
                                      const at::Tensor& log_const, const at::Tensor& means) {
  const auto s = check_mixture(patches, prec_chol, &log_const, means);
  check_cpu(patches);
  auto X = patches.contiguous(), U = prec_chol.contiguous(), c = log_const.contiguous(),
       mu = means.contiguous();
  auto out = at::empty({s.N, s.K}, patches.options());
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_component_log_prob_cpu", [&] {
    Mixture<scalar_t> m(U.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                        s.K, s.d);
    component_kernel(X.data_ptr<scalar_t>(), m, s.N, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor gmm_component_log_prob_backward_cpu(const at::Tensor& grad, const at::Tensor& patches,
                                               const at::Tensor& prec_chol,
                                               const at::Tensor& means) {
  const auto s = check_mixture(patches, prec_chol, nullptr, means);
  check_cpu(patches);
  check_component_grad(grad, patches, s);
  auto G = grad.contiguous(), X = patches.contiguous(), U = prec_chol.contiguous(),
       mu = means.contiguous();
  auto out = at::empty({s.N, s.d}, patches.options());
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_component_log_prob_backward_cpu", [&] {
    Mixture<scalar_t> m(U.data_ptr<scalar_t>(), nullptr, mu.data_ptr<scalar_t>(), s.K, s.d);
    component_backward_kernel(G.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), m, s.N,
                              out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_mixture_log_prob_cpu(
    const at::Tensor& patches, const at::Tensor& prec_chol, const at::Tensor& log_const,
    const at::Tensor& means, bool compute_grad) {
  const auto s = check_mixture(patches, prec_chol, &log_const, means);
  check_cpu(patches);
  auto X = patches.contiguous(), U = prec_chol.contiguous(), c = log_const.contiguous(),
       mu = means.contiguous();
  auto loglik = at::empty({s.N}, patches.options());
  auto best = at::empty({s.N}, patches.options().dtype(at::kLong));
  auto grad = at::empty({s.N, compute_grad ? s.d : 0}, patches.options());
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_mixture_log_prob_cpu", [&] {
    Mixture<scalar_t> m(U.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                        s.K, s.d);
    mixture_kernel(X.data_ptr<scalar_t>(), m, s.N, compute_grad, loglik.data_ptr<scalar_t>(),
                   best.data_ptr<int64_t>(), compute_grad ? grad.data_ptr<scalar_t>() : nullptr);
  });
  return {loglik, best, grad};
}

std::tuple<at::Tensor, at::Tensor> gmm_best_component_cpu(const at::Tensor& patches,
                                                          const at::Tensor& prec_chol,
                                                          const at::Tensor& log_const,
                                                          const at::Tensor& means) {
  const auto s = check_mixture(patches, prec_chol, &log_const, means);
  check_cpu(patches);
  auto X = patches.contiguous(), U = prec_chol.contiguous(), c = log_const.contiguous(),
       mu = means.contiguous();
  auto max_log_prob = at::empty({s.N}, patches.options());
  auto best = at::empty({s.N}, patches.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_best_component_cpu", [&] {
    Mixture<scalar_t> m(U.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                        s.K, s.d);
    best_kernel(X.data_ptr<scalar_t>(), m, s.N, max_log_prob.data_ptr<scalar_t>(),
                best.data_ptr<int64_t>());
  });
  return {max_log_prob, best};
}

}  // namespace
}  // namespace patchreg

TORCH_LIBRARY_FRAGMENT(patchreg, m) {
  m.def("gmm_component_log_prob(Tensor patches, Tensor prec_chol, Tensor log_const, Tensor means) -> Tensor");
  m.def(
      "gmm_component_log_prob_backward(Tensor grad, Tensor patches, Tensor prec_chol, "
      "Tensor means) -> Tensor");
  m.def(
      "gmm_mixture_log_prob(Tensor patches, Tensor prec_chol, Tensor log_const, Tensor means, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gmm_best_component(Tensor patches, Tensor prec_chol, Tensor log_const, Tensor means) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(patchreg, CPU, m) {
  m.impl("gmm_component_log_prob", &patchreg::gmm_component_log_prob_cpu);
  m.impl("gmm_component_log_prob_backward", &patchreg::gmm_component_log_prob_backward_cpu);
  m.impl("gmm_mixture_log_prob", &patchreg::gmm_mixture_log_prob_cpu);
  m.impl("gmm_best_component", &patchreg::gmm_best_component_cpu);
}
