// Fused log-density of a mixture of K charts with built-in ResidualMLP encoders/decoders (CPU).
// Reference: patchreg/charts/stacked.py (charts_log_prob). Wrapper: patchreg/ops/charts.py.
// Tests: tests/test_charts_op.py. Benchmark: bench/charts_op_speed.py.
//
// Per chart k and point x (n): z = E_k(x), x_hat = D_k(z), J = dx_hat/dz (n x d, forward mode),
//   l_k = -U(|z|) - log Z_d - 1/2 log det(J^T J) - |x - x_hat|^2 / (2 sigma^2) - (n-d)/2 log(2 pi sigma^2),
//   log p(x) = logsumexp_k(log_alpha_k + l_k).
// The frame y = basis^T (x - center) / scale and its inverse are folded into the encoder's input
// layer and the decoder's output layer once per call. Points are processed in blocks of kBlock
// (feature-major, points contiguous, so the layers are small GEMMs); each block loops over the K
// charts with the chart's weights in cache; nothing of size B x K x width is ever built.
//
// Gradient d log p / dx: the adjoints of l_k, (x - x_hat)/sigma^2 for x_hat and -J (J^T J)^{-1}
// for J, are pushed back by hand-written reverse mode through the decoder's forward-mode tangent
// computation (hence silu''), then with -U'(|z|) z/|z| back through the encoder to x, plus the
// direct term -(x - x_hat)/sigma^2; the charts are combined with an online softmax.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "charts.h"
#include "charts_host.h"
#include "checks.h"
#include "gmm_cpu_avx2.h"

namespace patchreg {
namespace charts {
namespace portable {

inline double kexp(double v) { return std::exp(v); }
inline double klog(double v) { return std::log(v); }
inline double ksqrt(double v) { return std::sqrt(v); }

template <typename T>
inline void sigmoid(const T* h, T* s, int64_t count) {
  for (int64_t i = 0; i < count; ++i) s[i] = T(1) / (T(1) + std::exp(-h[i]));
}

// Plain loops with a kBlock-wide accumulator the compiler keeps in vector registers.
template <typename T>
void gemm_impl(const T* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const T* X, int64_t ldx,
               T* C, int64_t ldc, int64_t cols, const T* init) {
  for (int64_t r = 0; r < M; ++r) {
    const T* a = A + r * rs;
    for (int64_t p0 = 0; p0 < cols; p0 += kBlock) {
      T acc[kBlock];
      T* c = C + r * ldc + p0;
      const T* c0 = init == nullptr ? nullptr : init + r * ldc + p0;
      for (int64_t p = 0; p < kBlock; ++p) acc[p] = c0 == nullptr ? T(0) : c0[p];
      for (int64_t q = 0; q < Kd; ++q) {
        const T w = a[q * cs];
        const T* x = X + q * ldx + p0;
        for (int64_t p = 0; p < kBlock; ++p) acc[p] += w * x[p];
      }
      for (int64_t p = 0; p < kBlock; ++p) c[p] = acc[p];
    }
  }
}
inline void gemm(const float* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const float* X,
                 int64_t ldx, float* C, int64_t ldc, int64_t cols, const float* init) {
  gemm_impl(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}
inline void gemm(const double* A, int64_t rs, int64_t cs, int64_t M, int64_t Kd, const double* X,
                 int64_t ldx, double* C, int64_t ldc, int64_t cols, const double* init) {
  gemm_impl(A, rs, cs, M, Kd, X, ldx, C, ldc, cols, init);
}

#include "charts_kernel.h"

int64_t scratch_size(const Problem<float>& p) {
  Scratch<float> s;
  return layout(p, static_cast<float*>(nullptr), &s);
}
int64_t scratch_size(const Problem<double>& p) {
  Scratch<double> s;
  return layout(p, static_cast<double*>(nullptr), &s);
}
int64_t dscratch_size(int64_t d) { return 2 * d * d; }
void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}
void run_blocks(const Problem<double>& p, int64_t begin, int64_t end, double* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
}

}  // namespace portable

// log Z_d of patchreg.charts.latent_prior.log_normalizer: the same integral (the same pieces,
// the outer one also cut at 1 + 40/slope), by composite Gauss-Legendre quadrature.
double log_normalizer(int64_t d) {
  const double flat = 0.8, width = 0.2, border = -std::log(0.05), slope = 2 * border / width;
  constexpr int N = 20, kPieces = 16;
  double node[N], weight[N];
  for (int i = 0; i < (N + 1) / 2; ++i) {  // Newton on the Legendre polynomial P_N
    double z = std::cos(M_PI * (i + 0.75) / (N + 0.5)), pp = 1;
    for (int it = 0; it < 100; ++it) {
      double p1 = 1, p2 = 0;
      for (int j = 1; j <= N; ++j) {
        const double p3 = p2;
        p2 = p1;
        p1 = ((2 * j - 1) * z * p2 - (j - 1) * p3) / j;
      }
      pp = N * (z * p1 - p2) / (z * z - 1);
      const double z1 = z;
      z = z1 - p1 / pp;
      if (std::abs(z - z1) < 1e-15) break;
    }
    node[i] = -z, node[N - 1 - i] = z;
    weight[i] = weight[N - 1 - i] = 2 / ((1 - z * z) * pp * pp);
  }
  auto f = [&](double r) {
    const double t = std::min(std::max(r - flat, 0.0), width) / width;
    const double U = border * t * t + slope * std::max(r - 1, 0.0);
    return std::exp(-U) * std::pow(r, double(d - 1));
  };
  auto integrate = [&](double a, double b) {
    double total = 0;
    const double h = (b - a) / kPieces;
    for (int piece = 0; piece < kPieces; ++piece) {
      const double mid = a + (piece + 0.5) * h;
      for (int i = 0; i < N; ++i) total += weight[i] * f(mid + 0.5 * h * node[i]);
    }
    return 0.5 * h * total;
  };
  const double total = std::pow(flat, double(d)) / d + integrate(flat, 1.0) +
                       integrate(1.0, 1.0 + 40 / slope);
  const double log_area = std::log(2.0) + 0.5 * d * std::log(M_PI) - std::lgamma(0.5 * d);
  return log_area + std::log(total);
}

// "encoder[2] (blocks.0.0.weight)": the position in the list and the parameter it must be.
namespace {

std::string entry_name(const char* list, size_t i, size_t count) {
  std::string what;
  if (i < 2) {
    what = i == 0 ? "input.weight" : "input.bias";
  } else if (i + 2 >= count) {
    what = i + 2 == count ? "output.weight" : "output.bias";
  } else {
    const size_t j = i - 2;
    what = "blocks." + std::to_string(j / 4) + "." + std::to_string((j / 2) % 2) +
           (j % 2 == 0 ? ".weight" : ".bias");
  }
  return std::string(list) + "[" + std::to_string(i) + "] (" + what + ")";
}

void check_like(const at::Tensor& t, const std::string& name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, ".dtype is ", t.scalar_type(),
                   " but x.dtype is ", x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ",
                    x.device());
}

void check_shape(const at::Tensor& t, const std::string& name, std::vector<int64_t> shape) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), name, " must have shape ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
}

}  // namespace

// One stacked ResidualMLP list (input.weight, input.bias, blocks.0.0.weight, blocks.0.0.bias,
// blocks.0.1.weight, ..., output.weight, output.bias); out < 0: read it from output.weight.
static MlpShape check_mlp(at::TensorList list, const char* which, int64_t K, int64_t in, int64_t out,
                   const at::Tensor& x) {
  const size_t count = list.size();
  TORCH_CHECK_VALUE(count >= 4 && (count - 4) % 4 == 0, which,
                    " must hold 4 + 4 * n_blocks tensors (input.weight, input.bias, "
                    "blocks.0.0.weight, blocks.0.0.bias, blocks.0.1.weight, blocks.0.1.bias, ..., "
                    "output.weight, output.bias), got ", count);
  for (size_t i = 0; i < count; ++i) check_like(list[i], entry_name(which, i, count), x);
  const auto name = [&](size_t i) { return entry_name(which, i, count); };
  TORCH_CHECK_VALUE(list[0].dim() == 3, name(0), " must be 3-D (K, width, ", in, "), got ",
                    list[0].sizes());
  const int64_t width = list[0].size(1);
  TORCH_CHECK_VALUE(width >= 1, name(0), " must have width >= 1, got ", list[0].sizes());
  TORCH_CHECK_VALUE(list[count - 2].dim() == 3, name(count - 2), " must be 3-D (K, out, ", width,
                    "), got ", list[count - 2].sizes());
  if (out < 0) out = list[count - 2].size(1);
  check_shape(list[0], name(0), {K, width, in});
  check_shape(list[1], name(1), {K, width});
  for (size_t i = 2; i + 2 < count; i += 2) {
    check_shape(list[i], name(i), {K, width, width});
    check_shape(list[i + 1], name(i + 1), {K, width});
  }
  check_shape(list[count - 2], name(count - 2), {K, out, width});
  check_shape(list[count - 1], name(count - 1), {K, out});
  return {width, static_cast<int64_t>(count - 4) / 4, out};
}

Shape check_charts(const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
                   const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
                   const at::Tensor& log_alpha, double sigma) {
  check_dim(x, 2, "x");
  check_float(x, "x");
  const int64_t B = x.size(0), n = x.size(1);
  check_like(center, "center", x);
  check_like(basis, "basis", x);
  check_like(scale, "scale", x);
  check_like(log_alpha, "log_alpha", x);
  check_dim(center, 2, "center");
  const int64_t K = center.size(0);
  TORCH_CHECK_VALUE(K >= 1, "center must have shape (K, n) with K >= 1 charts, got ",
                    center.sizes());
  check_shape(center, "center", {K, n});
  check_shape(basis, "basis", {K, n, n});
  check_shape(scale, "scale", {K});
  check_shape(log_alpha, "log_alpha", {K});
  const MlpShape enc = check_mlp(encoder, "encoder", K, n, -1, x);
  const int64_t d = enc.out;
  TORCH_CHECK_VALUE(d >= 1 && d < n, "the latent dimension d (encoder output.weight.shape[1]) "
                    "must satisfy 1 <= d < n = ", n, ", got d = ", d);
  const MlpShape dec = check_mlp(decoder, "decoder", K, d, n, x);
  TORCH_CHECK_VALUE(sigma > 0 && std::isfinite(sigma), "sigma must be > 0 and finite, got ", sigma);
  return {B, n, d, K, enc, dec};
}

void fold_frame(const at::Tensor& center, const at::Tensor& basis, const at::Tensor& scale,
                at::TensorList encoder, at::TensorList decoder, at::ScalarType dtype,
                std::vector<at::Tensor>& enc, std::vector<at::Tensor>& dec) {
  const int64_t K = center.size(0);
  // Fold the frame into the networks, in float64: W_in' = W_in basis^T / scale,
  // b_in' = b_in - W_in' center; W_out' = scale basis W_out, b_out' = scale basis b_out + center.
  const auto f64 = [](const at::Tensor& t) { return t.to(at::kDouble); };
  const auto Q = f64(basis), c = f64(center), sc = f64(scale).view({K, 1, 1});
  for (const auto& t : encoder) enc.push_back(t.contiguous());
  for (const auto& t : decoder) dec.push_back(t.contiguous());
  const size_t nd = dec.size();
  auto in_w = at::matmul(f64(enc[0]), Q.transpose(1, 2)) / sc;
  auto in_b = f64(enc[1]) - at::matmul(in_w, c.unsqueeze(-1)).squeeze(-1);
  auto out_w = at::matmul(Q, f64(dec[nd - 2])) * sc;
  auto out_b = at::matmul(Q, f64(dec[nd - 1]).unsqueeze(-1)).squeeze(-1) * sc.view({K, 1}) + c;
  enc[0] = in_w.to(dtype).contiguous();
  enc[1] = in_b.to(dtype).contiguous();
  dec[nd - 2] = out_w.to(dtype).contiguous();
  dec[nd - 1] = out_b.to(dtype).contiguous();
}

at::Tensor check_image_source(const ImageSource& src) {
  const at::Tensor& image = src.image;
  check_dim(image, 4, "image");
  check_float(image, "image");
  const int64_t I = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t p = src.patch;
  TORCH_CHECK_VALUE(p >= 1 && p <= H && p <= W, "patch_size must be in [1, min(H, W) = ",
                    std::min(H, W), "], got ", p);
  TORCH_CHECK_TYPE(src.offsets.scalar_type() == at::kLong, "offsets.dtype must be int64, got ",
                   src.offsets.scalar_type());
  check_dim(src.offsets, 1, "offsets");
  check_dim(src.patch_basis, 2, "patch_basis");
  TORCH_CHECK_VALUE(src.patch_basis.size(0) == C * p * p, "patch_basis must have shape (C*p*p = ",
                    C * p * p, ", n), got ", src.patch_basis.sizes());
  const int64_t B = src.offsets.size(0), n = src.patch_basis.size(1);
  TORCH_CHECK_VALUE(src.point_scale.dim() == 1 && src.point_scale.size(0) == B,
                    "point_scale must have shape (", B, ",) like offsets, got ",
                    src.point_scale.sizes());
  for (const auto& [t, name] : {std::pair<at::Tensor, const char*>{src.patch_basis, "patch_basis"},
                                std::pair<at::Tensor, const char*>{src.point_scale, "point_scale"}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == image.scalar_type(), name, ".dtype is ", t.scalar_type(),
                     " but image.dtype is ", image.scalar_type());
    TORCH_CHECK_VALUE(t.device() == image.device(), name, " is on ", t.device(),
                      " but image is on ", image.device());
  }
  TORCH_CHECK_VALUE(src.offsets.device() == image.device(), "offsets is on ",
                    src.offsets.device(), " but image is on ", image.device());
  // A valid offset is b*C*H*W + i*W + j with b < I, i <= H - p, j <= W - p.
  const int64_t chw = C * H * W;
  if (B > 0 && src.offsets.is_cpu()) {
    const auto off = src.offsets.contiguous();
    const int64_t* o = off.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = o[b] % chw;
      TORCH_CHECK_VALUE(o[b] >= 0 && o[b] < I * chw && r < H * W && r / W <= H - p && r % W <= W - p,
                        "offsets[", b, "] = ", o[b], " is not the top-left pixel of a ", p, "x", p,
                        " patch inside an image of shape (", I, ", ", C, ", ", H, ", ", W,
                        ") (b*C*H*W + i*W + j with i <= ", H - p, ", j <= ", W - p, ")");
    }
  } else if (B > 0) {
    const auto r = src.offsets.remainder(chw);
    const bool ok = src.offsets.min().item<int64_t>() >= 0 &&
                    src.offsets.max().item<int64_t>() < I * chw && r.max().item<int64_t>() < H * W &&
                    r.div(W, "floor").max().item<int64_t>() <= H - p &&
                    r.remainder(W).max().item<int64_t>() <= W - p;
    TORCH_CHECK_VALUE(ok, "offsets must be top-left pixels of ", p, "x", p,
                      " patches inside an image of shape (", I, ", ", C, ", ", H, ", ", W, ")");
  }
  return at::empty({1}, image.options()).expand({B, n});
}

at::Tensor gather_image_points(const ImageSource& src) {
  check_image_source(src);
  const at::Tensor& image = src.image;
  const int64_t C = image.size(1), H = image.size(2), W = image.size(3), p = src.patch;
  // Offsets of a patch's values from its top-left pixel, in (channel, row, column) order.
  const auto opts = src.offsets.options();
  const auto rel = (at::arange(C, opts).view({C, 1, 1}) * (H * W) +
                    at::arange(p, opts).view({1, p, 1}) * W + at::arange(p, opts).view({1, 1, p}))
                       .reshape({-1});
  const auto index = src.offsets.unsqueeze(1) + rel.unsqueeze(0);  // (B, C*p*p)
  const auto patches = image.contiguous().reshape({-1}).index_select(0, index.reshape({-1}))
                           .view({src.offsets.size(0), C * p * p});
  return at::matmul(patches, src.patch_basis) * src.point_scale.unsqueeze(1);
}

namespace {

template <typename T>
Mlp<T> make_mlp(const std::vector<at::Tensor>& t, const MlpShape& s, int64_t in,
                std::vector<const T*>& w, std::vector<const T*>& b) {
  for (int64_t i = 0; i < 2 * s.blocks; ++i) {
    w.push_back(t[2 + 2 * i].data_ptr<T>());
    b.push_back(t[3 + 2 * i].data_ptr<T>());
  }
  const size_t count = t.size();
  return {in, s.width, s.out, s.blocks, t[0].data_ptr<T>(), t[1].data_ptr<T>(), w.data(), b.data(),
          t[count - 2].data_ptr<T>(), t[count - 1].data_ptr<T>()};
}

inline void run_amx(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds) {
  amxk::run_blocks(p, begin, end, s, ds);
}
inline void run_amx(const Problem<double>&, int64_t, int64_t, double*, double*) {}  // bf16: float only

// bf16: the decoder's residual-block layers on the tangent columns in bfloat16 on AMX tiles
// (charts_cpu_amx.cpp); float32 x only.
std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_cpu_impl(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad, bool bf16,
    const ImageSource* src = nullptr) {
  const Shape s = check_charts(x, center, basis, scale, encoder, decoder, log_alpha, sigma);
  TORCH_CHECK_VALUE(x.device().is_cpu(), src ? "image" : "x", " must be on the CPU for this kernel");
  const auto dtype = x.scalar_type();
  if (bf16) {
    TORCH_CHECK_TYPE(dtype == at::kFloat, "charts_log_prob_bf16 takes float32 x, got ", dtype);
    TORCH_CHECK(amx::enabled(), "charts_log_prob_bf16 needs a CPU with AMX-BF16, AVX512-BF16 and "
                "AVX-512BW, and PATCHREG_DISABLE_AMX unset (patchreg.ops.charts_bf16_supported())");
  }
  const int64_t K = s.K;

  std::vector<at::Tensor> enc, dec;
  fold_frame(center, basis, scale, encoder, decoder, dtype, enc, dec);
  const auto X = src ? x : x.contiguous(), LA = log_alpha.contiguous();
  at::Tensor image, offsets, patch_basis, point_scale;
  if (src) {
    image = src->image.contiguous(), offsets = src->offsets.contiguous();
    patch_basis = src->patch_basis.contiguous(), point_scale = src->point_scale.contiguous();
  }

  auto log_prob = at::empty({s.B}, x.options());
  auto chart_lp = at::empty({s.B, K}, x.options());
  auto grad = at::empty({s.B, compute_grad ? s.n : 0}, x.options());
  const double log_const = log_normalizer(s.d) + 0.5 * (s.n - s.d) * std::log(2 * M_PI * sigma * sigma);
  const bool use_avx512 = avx512::enabled(), use_avx2 = avx2::enabled();

  AT_DISPATCH_FLOATING_TYPES(dtype, "charts_log_prob_cpu", [&] {
    using T = scalar_t;
    std::vector<const T*> ew, eb, dw, db;
    Problem<T> P{s.B, s.n, s.d, K,
                 make_mlp<T>(enc, s.enc, s.n, ew, eb), make_mlp<T>(dec, s.dec, s.d, dw, db),
                 src ? nullptr : X.data_ptr<T>(), LA.data_ptr<T>(), 1 / (sigma * sigma), log_const,
                 log_prob.data_ptr<T>(), chart_lp.data_ptr<T>(),
                 compute_grad ? grad.data_ptr<T>() : nullptr};
    if (src) {
      P.image = image.data_ptr<T>();
      P.offsets = offsets.data_ptr<int64_t>();
      P.patch_basis = patch_basis.data_ptr<T>();
      P.point_scale = point_scale.data_ptr<T>();
      P.channels = image.size(1), P.patch = src->patch;
      P.plane = image.size(2) * image.size(3), P.row = image.size(3);
    }
    const int64_t n_blocks = (s.B + kBlock - 1) / kBlock;
    // Multiply-adds per block; chunks of at least ~4M of them, so tiny inputs stay on one thread.
    const double per_block = double(kBlock) * K *
        (s.enc.width * (s.n + s.d + 2 * s.enc.width * s.enc.blocks) +
         (1 + s.d) * s.dec.width * (s.n + 2 * s.dec.width * s.dec.blocks)) * (compute_grad ? 2 : 1);
    const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(4e6 / per_block));
    const int64_t size = portable::scratch_size(P), dsize = portable::dscratch_size(s.d);
    // bf16: the decoder's block weights and their transposes in bfloat16 (round to nearest even).
    std::vector<at::Tensor> lowp;
    std::vector<const uint16_t*> wb, wtb;
    {
      if (bf16) {
        for (int64_t i = 0; i < 2 * s.dec.blocks; ++i) {
          lowp.push_back(dec[2 + 2 * i].to(at::kBFloat16).contiguous());
          lowp.push_back(dec[2 + 2 * i].transpose(1, 2).to(at::kBFloat16).contiguous());
          wb.push_back(reinterpret_cast<const uint16_t*>(lowp[lowp.size() - 2].data_ptr()));
          wtb.push_back(reinterpret_cast<const uint16_t*>(lowp.back().data_ptr()));
        }
        P.dec.blk_w_bf16 = wb.data();
        P.dec.blk_wt_bf16 = wtb.data();
      }
    }
    at::parallel_for(0, n_blocks, grain, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(size);
      std::vector<double> dscratch(dsize);
      if (bf16) {
        run_amx(P, begin, end, scratch.data(), dscratch.data());
        return;
      }
      if (use_avx512)
        avx512k::run_blocks(P, begin, end, scratch.data(), dscratch.data());
      else if (use_avx2)
        avx2k::run_blocks(P, begin, end, scratch.data(), dscratch.data());
      else
        portable::run_blocks(P, begin, end, scratch.data(), dscratch.data());
    });
  });
  return {log_prob, chart_lp, grad};
}

// The op (bf16 false) and its bfloat16 twin charts_log_prob_bf16 (bf16 true).
template <bool bf16>
std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_cpu(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad) {
  return charts_log_prob_cpu_impl(x, center, basis, scale, encoder, decoder, log_alpha, sigma,
                                  compute_grad, bf16);
}

// The same with the points read from images (Problem::image); bfloat16 as charts_log_prob_bf16.
std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_image_cpu(
    const at::Tensor& image, const at::Tensor& offsets, const at::Tensor& patch_basis,
    const at::Tensor& point_scale, int64_t patch_size, const at::Tensor& center,
    const at::Tensor& basis, const at::Tensor& scale, at::TensorList encoder,
    at::TensorList decoder, const at::Tensor& log_alpha, double sigma, bool compute_grad,
    bool bfloat16) {
  const ImageSource src{image, offsets, patch_basis, point_scale, patch_size};
  const at::Tensor x = check_image_source(src);
  return charts_log_prob_cpu_impl(x, center, basis, scale, encoder, decoder, log_alpha, sigma,
                                  compute_grad, bfloat16, &src);
}

// Test access to gather_image_points (the CUDA op's way in), on any device.
at::Tensor charts_image_points(const at::Tensor& image, const at::Tensor& offsets,
                               const at::Tensor& patch_basis, const at::Tensor& point_scale,
                               int64_t patch_size) {
  return gather_image_points({image, offsets, patch_basis, point_scale, patch_size});
}

bool charts_bf16_supported() { return amx::enabled(); }

}  // namespace
}  // namespace charts
}  // namespace patchreg

TORCH_LIBRARY_FRAGMENT(patchreg, m) {
  m.def(
      "charts_log_prob(Tensor x, Tensor center, Tensor basis, Tensor scale, Tensor[] encoder, "
      "Tensor[] decoder, Tensor log_alpha, float sigma, bool compute_grad) -> "
      "(Tensor log_prob, Tensor chart_log_prob, Tensor grad_x)");
  // The same with the decoder's tangent GEMMs in bfloat16 on AMX (CPU, float32 only).
  m.def(
      "charts_log_prob_bf16(Tensor x, Tensor center, Tensor basis, Tensor scale, Tensor[] encoder, "
      "Tensor[] decoder, Tensor log_alpha, float sigma, bool compute_grad) -> "
      "(Tensor log_prob, Tensor chart_log_prob, Tensor grad_x)");
  // The points read from images: point b is point_scale[b] * patch_basis^T (the patch of image
  // whose top-left pixel is image.flatten()[offsets[b]]); bfloat16 as charts_log_prob_bf16.
  m.def(
      "charts_log_prob_image(Tensor image, Tensor offsets, Tensor patch_basis, Tensor point_scale, "
      "int patch_size, Tensor center, Tensor basis, Tensor scale, Tensor[] encoder, "
      "Tensor[] decoder, Tensor log_alpha, float sigma, bool compute_grad, bool bfloat16) -> "
      "(Tensor log_prob, Tensor chart_log_prob, Tensor grad_x)");
  m.def(
      "charts_image_points(Tensor image, Tensor offsets, Tensor patch_basis, Tensor point_scale, "
      "int patch_size) -> Tensor");
  m.def("charts_bf16_supported() -> bool", &patchreg::charts::charts_bf16_supported);
}

TORCH_LIBRARY_IMPL(patchreg, CPU, m) {
  m.impl("charts_log_prob", &patchreg::charts::charts_log_prob_cpu<false>);
  m.impl("charts_log_prob_bf16", &patchreg::charts::charts_log_prob_cpu<true>);
  m.impl("charts_log_prob_image", &patchreg::charts::charts_log_prob_image_cpu);
}

TORCH_LIBRARY_IMPL(patchreg, CompositeExplicitAutograd, m) {
  m.impl("charts_image_points", &patchreg::charts::charts_image_points);
}
