// Gaussian-mixture log-likelihood of patches on CUDA. Same contract as gmm_cpu.cpp (schemas are
// declared there); reference: patchreg/reference/gmm.py.
//
// Deliberately simple: one thread per patch, a block of kThreads patches loops over the K
// components; each component's U_k and mu_k are staged in shared memory by the whole block and
// then read as broadcasts. The patch, U_k^T (x - mu_k) and the running gradient live in per-thread
// arrays of kMaxD entries (d <= kMaxD = 64, e.g. 8x8 gray patches). The mixture log-likelihood is
// an online logsumexp, as on the CPU. Nothing of size N*K*d is built.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "gmm.h"

namespace patchreg {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxD = 64;

// Stages U_k (d*d) and mu_k (d) of component k into shared memory (whole block participates).
template <typename T>
__device__ void stage_component(const T* __restrict__ U, const T* __restrict__ mu, int64_t k,
                                int d, T* su, T* smu) {
  __syncthreads();  // the previous component is no longer read
  const T* uk = U + k * d * d;
  for (int e = threadIdx.x; e < d * d; e += blockDim.x) su[e] = uk[e];
  for (int e = threadIdx.x; e < d; e += blockDim.x) smu[e] = mu[k * d + e];
  __syncthreads();
}

// y = U_k^T (x - mu_k); returns ||y||^2.
template <typename T>
__device__ T project(const T* x, const T* su, const T* smu, int d, T* y) {
  T quad = 0;
  for (int j = 0; j < d; ++j) {
    T acc = 0;
    for (int i = 0; i < d; ++i) acc += su[i * d + j] * (x[i] - smu[i]);
    y[j] = acc;
    quad += acc * acc;
  }
  return quad;
}

// g = g * scale + weight * (-U_k y)
template <typename T>
__device__ void accumulate_gradient(const T* su, const T* y, int d, T scale, T weight, T* g) {
  for (int i = 0; i < d; ++i) {
    T acc = 0;
    for (int j = 0; j < d; ++j) acc -= su[i * d + j] * y[j];
    g[i] = g[i] * scale + weight * acc;
  }
}

template <typename T>
__device__ void load_patch(const T* X, int64_t n, int d, T* x) {
  for (int i = 0; i < d; ++i) x[i] = X[n * d + i];
}

template <typename T>
__global__ void component_kernel(const T* __restrict__ X, const T* __restrict__ U,
                                 const T* __restrict__ c, const T* __restrict__ mu, int64_t N,
                                 int64_t K, int d, T* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  T* su = reinterpret_cast<T*>(smem_raw);
  T* smu = su + d * d;
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = n < N;
  T x[kMaxD], y[kMaxD];
  if (active) load_patch(X, n, d, x);
  for (int64_t k = 0; k < K; ++k) {
    stage_component(U, mu, k, d, su, smu);
    if (active) out[n * K + k] = c[k] - T(0.5) * project(x, su, smu, d, y);
  }
}

template <typename T>
__global__ void component_backward_kernel(const T* __restrict__ G, const T* __restrict__ X,
                                          const T* __restrict__ U, const T* __restrict__ mu,
                                          int64_t N, int64_t K, int d, T* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  T* su = reinterpret_cast<T*>(smem_raw);
  T* smu = su + d * d;
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = n < N;
  T x[kMaxD], y[kMaxD], g[kMaxD];
  if (active) {
    load_patch(X, n, d, x);
    for (int i = 0; i < d; ++i) g[i] = 0;
  }
  for (int64_t k = 0; k < K; ++k) {
    stage_component(U, mu, k, d, su, smu);
    if (active) {
      project(x, su, smu, d, y);
      accumulate_gradient(su, y, d, T(1), G[n * K + k], g);
    }
  }
  if (active)
    for (int i = 0; i < d; ++i) out[n * d + i] = g[i];
}

template <typename T>
__global__ void mixture_kernel(const T* __restrict__ X, const T* __restrict__ U,
                               const T* __restrict__ c, const T* __restrict__ mu, int64_t N,
                               int64_t K, int d, bool with_grad, T* __restrict__ loglik,
                               int64_t* __restrict__ best, T* __restrict__ grad) {
  extern __shared__ unsigned char smem_raw[];
  T* su = reinterpret_cast<T*>(smem_raw);
  T* smu = su + d * d;
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = n < N;
  const T neg_inf = -INFINITY;
  T x[kMaxD], y[kMaxD], g[kMaxD];
  T run_max = neg_inf, run_sum = 0;
  int64_t arg = 0;
  if (active) {
    load_patch(X, n, d, x);
    for (int i = 0; i < d; ++i) g[i] = 0;
  }
  for (int64_t k = 0; k < K; ++k) {
    stage_component(U, mu, k, d, su, smu);
    if (!active) continue;
    const T l = c[k] - T(0.5) * project(x, su, smu, d, y);
    T scale = 1, weight;
    if (l > run_max) {  // new maximum: rescale the accumulated sum and gradient
      scale = run_max == neg_inf ? T(0) : exp(run_max - l);
      run_sum = run_sum * scale + T(1);
      run_max = l;
      weight = 1;
      arg = k;
    } else {
      weight = l == neg_inf ? T(0) : exp(l - run_max);
      run_sum += weight;
    }
    if (with_grad) accumulate_gradient(su, y, d, scale, weight, g);
  }
  if (!active) return;
  loglik[n] = run_max + log(run_sum);
  best[n] = arg;
  if (with_grad)
    for (int i = 0; i < d; ++i) grad[n * d + i] = g[i] / run_sum;
}

void check_cuda_inputs(const at::Tensor& patches, const MixtureShape& s) {
  TORCH_CHECK_VALUE(patches.is_cuda(), "patches must be a CUDA tensor for this kernel");
  TORCH_CHECK_VALUE(s.d <= kMaxD, "the CUDA GMM kernels support patch dimension d <= ", kMaxD,
                    ", got d=", s.d, " (use the CPU or the reference path)");
}

inline int64_t n_blocks(int64_t N) { return (N + kThreads - 1) / kThreads; }

template <typename T>
size_t shared_bytes(int64_t d) {
  return static_cast<size_t>(d * d + d) * sizeof(T);
}

at::Tensor gmm_component_log_prob_cuda(const at::Tensor& patches, const at::Tensor& prec_chol,
                                       const at::Tensor& log_const, const at::Tensor& means) {
  const auto s = check_mixture(patches, prec_chol, &log_const, means);
  check_cuda_inputs(patches, s);
  const c10::cuda::CUDAGuard guard(patches.device());
  auto X = patches.contiguous(), U = prec_chol.contiguous(), c = log_const.contiguous(),
       mu = means.contiguous();
  auto out = at::empty({s.N, s.K}, patches.options());
  if (s.N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_component_log_prob_cuda", [&] {
    component_kernel<scalar_t><<<n_blocks(s.N), kThreads, shared_bytes<scalar_t>(s.d), stream>>>(
        X.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
        mu.data_ptr<scalar_t>(), s.N, s.K, static_cast<int>(s.d), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gmm_component_log_prob_backward_cuda(const at::Tensor& grad,
                                                const at::Tensor& patches,
                                                const at::Tensor& prec_chol,
                                                const at::Tensor& means) {
  const auto s = check_mixture(patches, prec_chol, nullptr, means);
  check_cuda_inputs(patches, s);
  check_component_grad(grad, patches, s);
  const c10::cuda::CUDAGuard guard(patches.device());
  auto G = grad.contiguous(), X = patches.contiguous(), U = prec_chol.contiguous(),
       mu = means.contiguous();
  auto out = at::empty({s.N, s.d}, patches.options());
  if (s.N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_component_log_prob_backward_cuda", [&] {
    component_backward_kernel<scalar_t>
        <<<n_blocks(s.N), kThreads, shared_bytes<scalar_t>(s.d), stream>>>(
            G.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
            mu.data_ptr<scalar_t>(), s.N, s.K, static_cast<int>(s.d), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_mixture_log_prob_cuda(
    const at::Tensor& patches, const at::Tensor& prec_chol, const at::Tensor& log_const,
    const at::Tensor& means, bool compute_grad) {
  const auto s = check_mixture(patches, prec_chol, &log_const, means);
  check_cuda_inputs(patches, s);
  const c10::cuda::CUDAGuard guard(patches.device());
  auto X = patches.contiguous(), U = prec_chol.contiguous(), c = log_const.contiguous(),
       mu = means.contiguous();
  auto loglik = at::empty({s.N}, patches.options());
  auto best = at::empty({s.N}, patches.options().dtype(at::kLong));
  auto grad = at::empty({s.N, compute_grad ? s.d : 0}, patches.options());
  if (s.N == 0) return {loglik, best, grad};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "gmm_mixture_log_prob_cuda", [&] {
    mixture_kernel<scalar_t><<<n_blocks(s.N), kThreads, shared_bytes<scalar_t>(s.d), stream>>>(
        X.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
        mu.data_ptr<scalar_t>(), s.N, s.K, static_cast<int>(s.d), compute_grad,
        loglik.data_ptr<scalar_t>(), best.data_ptr<int64_t>(),
        compute_grad ? grad.data_ptr<scalar_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loglik, best, grad};
}

// Best component per patch: the component kernel and a row max (ties to the lowest k, as the CPU
// kernel). The (N, K) matrix is built here; on the GPU it is small next to the work.
std::tuple<at::Tensor, at::Tensor> gmm_best_component_cuda(const at::Tensor& patches,
                                                           const at::Tensor& prec_chol,
                                                           const at::Tensor& log_const,
                                                           const at::Tensor& means) {
  auto comp = gmm_component_log_prob_cuda(patches, prec_chol, log_const, means);
  auto result = at::max(comp, 1);
  return {std::get<0>(result), std::get<1>(result)};
}

}  // namespace
}  // namespace patchreg

TORCH_LIBRARY_IMPL(patchreg, CUDA, m) {
  m.impl("gmm_component_log_prob", &patchreg::gmm_component_log_prob_cuda);
  m.impl("gmm_component_log_prob_backward", &patchreg::gmm_component_log_prob_backward_cuda);
  m.impl("gmm_mixture_log_prob", &patchreg::gmm_mixture_log_prob_cuda);
  m.impl("gmm_best_component", &patchreg::gmm_best_component_cuda);
}
