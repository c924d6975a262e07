// Host-side pieces of patchreg::charts_log_prob shared by the CPU kernel (charts_cpu.cpp), the
// one-thread-per-(point, chart) driver (charts_simt.cpp) and the CUDA kernel (charts_cuda.cu):
// argument checks, log Z_d, folding the frame into the networks, and the driver itself.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "charts_thread.h"

namespace patchreg {
namespace charts {

struct MlpShape {
  int64_t width, blocks, out;
};

struct Shape {
  int64_t B, n, d, K;
  MlpShape enc, dec;
};

// Checks every argument (shapes, dtypes, devices, sigma) and returns the sizes.
Shape check_charts(const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
                   const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
                   const at::Tensor& log_alpha, double sigma);

// The points of charts_log_prob_image: patches of `image` (I, C, H, W) at flat `offsets` (B,) of
// their top-left pixels, mapped by `patch_basis` (C*p*p, n) and scaled by `point_scale` (B,).
struct ImageSource {
  at::Tensor image, offsets, patch_basis, point_scale;
  int64_t patch;
};

// Checks an ImageSource (every offset a whole patch inside channel 0 of one image; dtypes, shapes,
// devices) and returns a (B, n) placeholder without storage for check_charts and the outputs.
at::Tensor check_image_source(const ImageSource& src);

// The points of an ImageSource as an (B, n) tensor, by ATen ops on src's device (the CUDA op's
// way in; the CPU kernel reads the image itself).
at::Tensor gather_image_points(const ImageSource& src);

// log of the latent prior's normaliser in d dimensions (patchreg.charts.latent_prior).
double log_normalizer(int64_t d);

// Copies of the networks (contiguous, dtype) with the frame y = basis^T (x - center) / scale folded
// into the encoder's input layer and its inverse into the decoder's output layer (in float64).
void fold_frame(const at::Tensor& center, const at::Tensor& basis, const at::Tensor& scale,
                at::TensorList encoder, at::TensorList decoder, at::ScalarType dtype,
                std::vector<at::Tensor>& enc, std::vector<at::Tensor>& dec);

// Evaluates the per-thread program (charts_thread.h) for points [b0, b0 + count) and all K
// charts: chart_lp[b][k] for those points and, when gk is not null, d l_k / dx as (K, n, count).
template <typename T>
using SimtLaunch = void (*)(const simt::Problem<T>& P, const simt::Layout& L, int64_t b0,
                            int64_t count, T* scratch, double* dscratch, T* chart_lp, T* gk);

// The whole op on top of a launcher: checks, folding, chunks of points whose scratch fits
// max_scratch_values, then logsumexp over charts and the softmax-weighted gradient (ATen ops).
std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_simt_driver(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad, SimtLaunch<float> launch_float,
    SimtLaunch<double> launch_double, int64_t max_scratch_values);

}  // namespace charts
}  // namespace patchreg
