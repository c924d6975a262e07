// Fused chart-mixture log-density on CUDA (patchreg::charts_log_prob; schema in charts_cpu.cpp).
// Reference: patchreg/charts/stacked.py. Tests: tests/test_charts_op.py (the same per-thread
// program also runs on the CPU there, as patchreg::charts_log_prob_simt). Benchmark:
// bench/charts_op_speed.py --device cuda.
//
// One thread per (point, chart) runs simt::chart_at_point (charts_thread.h): a warp shares the
// chart, so weights are broadcast reads, and each thread's activations live in a strided global
// scratch (coalesced, mostly L2-resident). The logsumexp over charts and the softmax-weighted
// gradient are ATen ops in the driver (charts_simt.cpp).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "charts_host.h"

namespace patchreg {
namespace charts {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    charts_thread_kernel(const simt::Problem<T> P, const simt::Layout L, int64_t b0, int64_t count,
                         T* scratch, double* dscratch, T* chart_lp, T* gk) {
  const int64_t threads = count * P.K;
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= threads) return;
  const int64_t k = t / count, i = t % count;
  const simt::Sv<T> s{scratch + t, threads};
  const simt::Sv<double> ds{dscratch + t, threads};
  const simt::Sv<T> g{gk == nullptr ? nullptr : gk + k * P.n * count + i, count};
  chart_lp[(b0 + i) * P.K + k] = simt::chart_at_point(P, L, b0 + i, k, s, ds, gk != nullptr, g);
}

template <typename T>
void launch_cuda(const simt::Problem<T>& P, const simt::Layout& L, int64_t b0, int64_t count,
                 T* scratch, double* dscratch, T* chart_lp, T* gk) {
  const int64_t threads = count * P.K;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  charts_thread_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      P, L, b0, count, scratch, dscratch, chart_lp, gk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_cuda(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x must be a CUDA tensor for this kernel");
  const c10::cuda::CUDAGuard guard(x.device());
  // Scratch budget: a quarter of the free memory, at most 2^29 values.
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t budget = std::min<int64_t>(int64_t(1) << 29, int64_t(free_bytes / 4 / x.element_size()));
  return charts_log_prob_simt_driver(x, center, basis, scale, encoder, decoder, log_alpha, sigma,
                                     compute_grad, &launch_cuda<float>, &launch_cuda<double>,
                                     std::max<int64_t>(budget, 1));
}

// The points read from images: gathered by ATen ops on the device, then the kernel above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_image_cuda(
    const at::Tensor& image, const at::Tensor& offsets, const at::Tensor& patch_basis,
    const at::Tensor& point_scale, int64_t patch_size, const at::Tensor& center,
    const at::Tensor& basis, const at::Tensor& scale, at::TensorList encoder,
    at::TensorList decoder, const at::Tensor& log_alpha, double sigma, bool compute_grad,
    bool bfloat16) {
  TORCH_CHECK_VALUE(!bfloat16, "charts_log_prob_image: bfloat16 runs on the CPU (AMX) only");
  TORCH_CHECK_VALUE(image.is_cuda(), "image must be a CUDA tensor for this kernel");
  const c10::cuda::CUDAGuard guard(image.device());
  const at::Tensor x = gather_image_points({image, offsets, patch_basis, point_scale, patch_size});
  return charts_log_prob_cuda(x, center, basis, scale, encoder, decoder, log_alpha, sigma,
                              compute_grad);
}

}  // namespace
}  // namespace charts
}  // namespace patchreg

TORCH_LIBRARY_IMPL(patchreg, CUDA, m) {
  m.impl("charts_log_prob_image", &patchreg::charts::charts_log_prob_image_cuda);
  m.impl("charts_log_prob", &patchreg::charts::charts_log_prob_cuda);
}
