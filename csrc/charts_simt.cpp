// patchreg::charts_log_prob on one thread per (point, chart): the driver shared with the CUDA
// kernel (charts_cuda.cu), and patchreg::charts_log_prob_simt, which runs the CUDA kernel's
// per-thread program (charts_thread.h) on the CPU so that tests without a GPU check its
// arithmetic against the reference (tests/test_charts_op.py). For speed on the CPU use
// patchreg::charts_log_prob (charts_cpu.cpp); this emulation is for tests only.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "charts_host.h"

namespace patchreg {
namespace charts {

namespace {

// The blocks' weights of one network, packed as (2 * blocks, K, ...); an empty tensor without blocks.
std::pair<at::Tensor, at::Tensor> pack_blocks(const std::vector<at::Tensor>& t, int64_t blocks) {
  if (blocks == 0) return {at::empty({0}, t[0].options()), at::empty({0}, t[0].options())};
  std::vector<at::Tensor> w, b;
  for (int64_t i = 0; i < 2 * blocks; ++i) {
    w.push_back(t[2 + 2 * i]);
    b.push_back(t[3 + 2 * i]);
  }
  return {at::stack(w).contiguous(), at::stack(b).contiguous()};
}

template <typename T>
simt::Net<T> make_net(const std::vector<at::Tensor>& t, const std::pair<at::Tensor, at::Tensor>& packed,
                      const MlpShape& s, int64_t K, int64_t in) {
  const size_t count = t.size();
  return {K, in, s.width, s.out, s.blocks, t[0].data_ptr<T>(), t[1].data_ptr<T>(),
          s.blocks ? packed.first.data_ptr<T>() : nullptr,
          s.blocks ? packed.second.data_ptr<T>() : nullptr,
          t[count - 2].data_ptr<T>(), t[count - 1].data_ptr<T>()};
}

template <typename T>
SimtLaunch<T> pick(SimtLaunch<float> f, SimtLaunch<double> d);
template <>
SimtLaunch<float> pick<float>(SimtLaunch<float> f, SimtLaunch<double>) {
  return f;
}
template <>
SimtLaunch<double> pick<double>(SimtLaunch<float>, SimtLaunch<double> d) {
  return d;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_simt_driver(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad, SimtLaunch<float> launch_float,
    SimtLaunch<double> launch_double, int64_t max_scratch_values) {
  const Shape s = check_charts(x, center, basis, scale, encoder, decoder, log_alpha, sigma);
  const int64_t B = s.B, n = s.n, d = s.d, K = s.K;
  std::vector<at::Tensor> enc, dec;
  fold_frame(center, basis, scale, encoder, decoder, x.scalar_type(), enc, dec);
  const auto enc_blocks = pack_blocks(enc, s.enc.blocks), dec_blocks = pack_blocks(dec, s.dec.blocks);
  const auto xt = x.t().contiguous();
  const auto LA = log_alpha.contiguous();

  auto chart_lp = at::empty({B, K}, x.options());
  auto grad = at::empty({B, compute_grad ? n : 0}, x.options());
  const simt::Layout L =
      simt::make_layout(n, d, s.enc.width, s.enc.blocks, s.dec.width, s.dec.blocks, compute_grad);
  // Points per launch: as many as the scratch budget allows (one thread per point and chart);
  // PATCHREG_CHARTS_SCRATCH (values) lowers the budget, e.g. on a small GPU or to test chunks.
  if (const char* env = std::getenv("PATCHREG_CHARTS_SCRATCH")) {
    const long long cap = std::atoll(env);
    if (cap > 0) max_scratch_values = std::min<int64_t>(max_scratch_values, cap);
  }
  const int64_t per_point = K * std::max(L.total, L.dtotal);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, max_scratch_values / per_point));
  if (B > 0) {
    auto scratch = at::empty({chunk * K * L.total}, x.options());
    auto dscratch = at::empty({chunk * K * L.dtotal}, x.options().dtype(at::kDouble));
    auto gk = at::empty({compute_grad ? chunk * K * n : 0}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "charts_log_prob_simt", [&] {
      using T = scalar_t;
      const simt::Problem<T> P{B, n, d, K,
                               make_net<T>(enc, enc_blocks, s.enc, K, n),
                               make_net<T>(dec, dec_blocks, s.dec, K, d),
                               xt.data_ptr<T>(), 1 / (sigma * sigma),
                               log_normalizer(d) + 0.5 * (n - d) * std::log(2 * M_PI * sigma * sigma)};
      const SimtLaunch<T> launch = pick<T>(launch_float, launch_double);
      for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        const int64_t count = std::min(chunk, B - b0);
        launch(P, L, b0, count, scratch.data_ptr<T>(), dscratch.data_ptr<double>(),
               chart_lp.data_ptr<T>(), compute_grad ? gk.data_ptr<T>() : nullptr);
        if (compute_grad) {
          // d log p / dx = sum_k softmax_k(log alpha + l) d l_k / dx
          const auto w = at::softmax(chart_lp.narrow(0, b0, count) + LA, 1);
          const auto g = gk.narrow(0, 0, K * n * count).view({K, n, count});
          grad.narrow(0, b0, count).copy_(at::einsum("bk,kib->bi", {w, g}));
        }
      }
    });
  }
  auto log_prob = at::logsumexp(chart_lp + LA, 1);
  return {log_prob, chart_lp, grad};
}

namespace {

// The CUDA kernel's thread grid, run by CPU threads.
template <typename T>
void launch_host(const simt::Problem<T>& P, const simt::Layout& L, int64_t b0, int64_t count,
                 T* scratch, double* dscratch, T* chart_lp, T* gk) {
  const int64_t threads = count * P.K;
  at::parallel_for(0, threads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t / count, i = t % count;
      const simt::Sv<T> s{scratch + t, threads};
      const simt::Sv<double> ds{dscratch + t, threads};
      const simt::Sv<T> g{gk == nullptr ? nullptr : gk + k * P.n * count + i, count};
      chart_lp[(b0 + i) * P.K + k] = simt::chart_at_point(P, L, b0 + i, k, s, ds, gk != nullptr, g);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> charts_log_prob_simt_cpu(
    const at::Tensor& x, const at::Tensor& center, const at::Tensor& basis,
    const at::Tensor& scale, at::TensorList encoder, at::TensorList decoder,
    const at::Tensor& log_alpha, double sigma, bool compute_grad) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be on the CPU for this kernel");
  return charts_log_prob_simt_driver(x, center, basis, scale, encoder, decoder, log_alpha, sigma,
                                     compute_grad, &launch_host<float>, &launch_host<double>,
                                     int64_t(1) << 24);
}

}  // namespace
}  // namespace charts
}  // namespace patchreg

TORCH_LIBRARY_FRAGMENT(patchreg, m) {
  m.def(
      "charts_log_prob_simt(Tensor x, Tensor center, Tensor basis, Tensor scale, Tensor[] encoder, "
      "Tensor[] decoder, Tensor log_alpha, float sigma, bool compute_grad) -> "
      "(Tensor log_prob, Tensor chart_log_prob, Tensor grad_x)");
}

TORCH_LIBRARY_IMPL(patchreg, CPU, m) {
  m.impl("charts_log_prob_simt", &patchreg::charts::charts_log_prob_simt_cpu);
}
