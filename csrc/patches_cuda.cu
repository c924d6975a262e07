// Overlapping-patch extraction and its adjoint on CUDA. Same contract as patches_cpu.cpp.
// Extraction: one thread per output element (coalesced writes), 32-bit index arithmetic when it fits. Aggregation: one thread per
// output pixel gathering the patches that cover it (no atomics, deterministic). The
// position-based adjoint uses atomicAdd (see aggregate_patches_at_cuda).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "patch_geometry.h"

namespace patchreg {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 32 ? b : 65535 * 32);
}

using Geo = PatchGeometry;

template <typename T>
__global__ void patch_means_from_image(const T* __restrict__ x, int64_t sB, int64_t sC,
                                       int64_t sH, int64_t sW, Geo g, T* __restrict__ means) {
  const int64_t L = g.nH * g.nW, total = g.B * L, D = g.C * g.p * g.p;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / L, l = k % L, i = l / g.nW, j = l % g.nW;
    const T* src = x + b * sB + i * g.s * sH + j * g.s * sW;
    T sum = 0;
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t di = 0; di < g.p; ++di)
        for (int64_t dj = 0; dj < g.p; ++dj) sum += src[c * sC + di * sH + dj * sW];
    means[k] = sum / static_cast<T>(D);
  }
}

// Index arithmetic in I: int32_t when every index fits (see index_fits_int32), because 64-bit
// division and modulo cost several times more than 32-bit ones and dominate these kernels.
template <typename I>
struct GeoI {
  I B, C, H, W, p, s, nH, nW;
};

template <typename I>
GeoI<I> narrow(const Geo& g) {
  return {I(g.B), I(g.C), I(g.H), I(g.W), I(g.p), I(g.s), I(g.nH), I(g.nW)};
}

// Grid-stride loops add up to gridDim * blockDim (< 2^30 with blocks_for) past the last index.
inline bool index_fits_int32(int64_t largest) { return largest < (int64_t(1) << 30); }

// Largest element offset of a strided 4-D tensor, plus one.
inline int64_t offset_extent(const at::Tensor& x) {
  int64_t e = 1;
  for (int64_t i = 0; i < x.dim(); ++i) e += (x.size(i) - 1) * x.stride(i);
  return e;
}

template <typename T, typename I>
__global__ void extract_kernel(const T* __restrict__ x, I sB, I sC, I sH, I sW, GeoI<I> g,
                               const T* __restrict__ means, T* __restrict__ out) {
  const I pp = g.p * g.p, D = g.C * pp, L = g.nH * g.nW, total = g.B * L * D;
  for (I k = blockIdx.x * I(blockDim.x) + threadIdx.x; k < total; k += I(gridDim.x) * blockDim.x) {
    const I bl = k / D, e = k - bl * D, b = bl / L, l = bl - b * L;
    const I c = e / pp, r = e - c * pp, di = r / g.p, dj = r - di * g.p;
    const I i = l / g.nW, j = l - i * g.nW;
    T v = x[b * sB + c * sC + (i * g.s + di) * sH + (j * g.s + dj) * sW];
    if (means) v -= means[bl];
    out[k] = v;
  }
}

template <typename T>
__global__ void patch_means_kernel(const T* __restrict__ patches, int64_t rows, int64_t D,
                                   T* __restrict__ means) {
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < rows;
       r += (int64_t)gridDim.x * blockDim.x) {
    T sum = 0;
    for (int64_t k = 0; k < D; ++k) sum += patches[r * D + k];
    means[r] = sum / static_cast<T>(D);
  }
}

// Number of patch starts t*s (0 <= t < n) with t*s <= y < t*s + p, and the first one.
template <typename I>
__device__ inline void covering(I y, I p, I s, I n, I& lo, I& hi) {
  lo = y - p + 1 <= 0 ? 0 : (y - p + s) / s;
  hi = y / s;
  if (hi > n - 1) hi = n - 1;
}

template <typename T, typename I>
__global__ void aggregate_kernel(const T* __restrict__ patches, const T* __restrict__ means,
                                 GeoI<I> g, bool normalize, T* __restrict__ out) {
  const I pp = g.p * g.p, D = g.C * pp, L = g.nH * g.nW;
  const I total = g.B * g.C * g.H * g.W;
  for (I k = blockIdx.x * I(blockDim.x) + threadIdx.x; k < total; k += I(gridDim.x) * blockDim.x) {
    const I row = k / g.W, x = k - row * g.W, bc = row / g.H, y = row - bc * g.H;
    const I b = bc / g.C, c = bc - b * g.C;
    I ilo, ihi, jlo, jhi;
    covering(y, g.p, g.s, g.nH, ilo, ihi);
    covering(x, g.p, g.s, g.nW, jlo, jhi);
    T sum = 0;
    I count = 0;
    for (I i = ilo; i <= ihi; ++i) {
      const I di = y - i * g.s;
      if (di >= g.p) continue;
      for (I j = jlo; j <= jhi; ++j) {
        const I dj = x - j * g.s;
        if (dj >= g.p) continue;
        const I l = b * L + i * g.nW + j;
        T v = patches[l * D + c * pp + di * g.p + dj];
        if (means) v -= means[l];
        sum += v;
        ++count;
      }
    }
    out[k] = (normalize && count) ? sum / static_cast<T>(count) : sum;
  }
}

template <typename T>
__global__ void extract_at_kernel(const T* __restrict__ x, int64_t sB, int64_t sC, int64_t sH,
                                  int64_t sW, const int64_t* __restrict__ pos, int64_t B,
                                  int64_t N, int64_t C, int64_t p, T* __restrict__ out) {
  const int64_t pp = p * p, D = C * pp, total = B * N * D;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = k % D, bn = k / D, b = bn / N;
    const int64_t c = e / pp, di = (e % pp) / p, dj = e % p;
    out[k] = x[b * sB + c * sC + (pos[2 * bn] + di) * sH + (pos[2 * bn + 1] + dj) * sW];
  }
}

template <typename T>
__global__ void aggregate_at_kernel(const T* __restrict__ patches, const int64_t* __restrict__ pos,
                                    int64_t B, int64_t N, int64_t C, int64_t p, int64_t H,
                                    int64_t W, T* __restrict__ out) {
  const int64_t pp = p * p, D = C * pp, total = B * N * D;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = k % D, bn = k / D, b = bn / N;
    const int64_t c = e / pp, di = (e % pp) / p, dj = e % p;
    const int64_t y = pos[2 * bn] + di, x = pos[2 * bn + 1] + dj;
    atomicAdd(out + ((b * C + c) * H + y) * W + x, patches[k]);
  }
}

std::tuple<at::Tensor, at::Tensor> extract_patches_cuda(const at::Tensor& x, int64_t patch_size,
                                                        int64_t stride, bool remove_mean) {
  const Geo g = image_geometry(x, patch_size, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t L = g.nH * g.nW, D = g.C * g.p * g.p;
  auto out = at::empty({g.B, L, D}, x.options());
  auto means = at::empty({g.B, remove_mean ? L : 0}, x.options());
  if (out.numel() == 0) return {out, means};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "extract_patches_cuda", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* mp = remove_mean ? means.data_ptr<scalar_t>() : nullptr;
    if (remove_mean) {
      patch_means_from_image<scalar_t><<<blocks_for(g.B * L), kThreads, 0, stream>>>(
          xp, x.stride(0), x.stride(1), x.stride(2), x.stride(3), g, mp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (index_fits_int32(std::max(out.numel(), offset_extent(x))))
      extract_kernel<scalar_t, int32_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          xp, int32_t(x.stride(0)), int32_t(x.stride(1)), int32_t(x.stride(2)),
          int32_t(x.stride(3)), narrow<int32_t>(g), mp, out.data_ptr<scalar_t>());
    else
      extract_kernel<scalar_t, int64_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          xp, x.stride(0), x.stride(1), x.stride(2), x.stride(3), narrow<int64_t>(g), mp,
          out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, means};
}

at::Tensor aggregate_patches_cuda(const at::Tensor& patches_in, int64_t height, int64_t width,
                                  int64_t patch_size, int64_t stride, bool normalize,
                                  bool remove_mean) {
  const Geo g = patches_geometry(patches_in, height, width, patch_size, stride);
  const c10::cuda::CUDAGuard guard(patches_in.device());
  const at::Tensor patches = patches_in.contiguous();
  auto out = at::empty({g.B, g.C, height, width}, patches.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "aggregate_patches_cuda", [&] {
    at::Tensor means;
    const scalar_t* mp = nullptr;
    if (remove_mean) {
      const int64_t rows = g.B * g.nH * g.nW;
      means = at::empty({rows}, patches.options());
      patch_means_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(
          patches.data_ptr<scalar_t>(), rows, patches.size(2), means.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mp = means.data_ptr<scalar_t>();
    }
    if (index_fits_int32(std::max(out.numel(), patches.numel())))
      aggregate_kernel<scalar_t, int32_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          patches.data_ptr<scalar_t>(), mp, narrow<int32_t>(g), normalize, out.data_ptr<scalar_t>());
    else
      aggregate_kernel<scalar_t, int64_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          patches.data_ptr<scalar_t>(), mp, narrow<int64_t>(g), normalize, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor extract_patches_at_cuda(const at::Tensor& x, const at::Tensor& positions,
                                   int64_t patch_size) {
  const Geo g = image_geometry(x, patch_size, 1);
  check_positions(positions, x, g.B, g.H, g.W, patch_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor pos = positions.contiguous();
  const int64_t N = pos.size(1);
  auto out = at::empty({g.B, N, g.C * g.p * g.p}, x.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "extract_patches_at_cuda", [&] {
    extract_at_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        pos.data_ptr<int64_t>(), g.B, N, g.C, g.p, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// atomicAdd: results where patches overlap can differ in the last bits from run to run.
at::Tensor aggregate_patches_at_cuda(const at::Tensor& patches_in, const at::Tensor& positions,
                                     int64_t height, int64_t width, int64_t patch_size) {
  const Geo g = patches_at_geometry(patches_in, positions, height, width, patch_size);
  const int64_t B = g.B, C = g.C, p = patch_size, N = patches_in.size(1);
  const c10::cuda::CUDAGuard guard(patches_in.device());
  const at::Tensor patches = patches_in.contiguous(), pos = positions.contiguous();
  auto out = at::zeros({B, C, height, width}, patches.options());
  if (patches.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "aggregate_patches_at_cuda", [&] {
    aggregate_at_kernel<scalar_t><<<blocks_for(patches.numel()), kThreads, 0, stream>>>(
        patches.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), B, N, C, p, height, width,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patchreg, CUDA, m) {
  m.impl("extract_patches", &extract_patches_cuda);
  m.impl("aggregate_patches", &aggregate_patches_cuda);
  m.impl("extract_patches_at", &extract_patches_at_cuda);
  m.impl("aggregate_patches_at", &aggregate_patches_at_cuda);
}

}  // namespace patchreg
