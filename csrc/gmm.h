// Argument checks of the GMM log-likelihood ops, shared by gmm_cpu.cpp and gmm_cuda.cu.
// TORCH_CHECK_VALUE -> Python ValueError, TORCH_CHECK_TYPE -> Python TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

#include "checks.h"

namespace patchreg {

struct MixtureShape {
  int64_t N, K, d;
};

// patches (N, d), prec_chol (K, d, d), log_const (K) (optional), means (K, d): same dtype/device.
inline MixtureShape check_mixture(const at::Tensor& patches, const at::Tensor& prec_chol,
                                  const at::Tensor* log_const, const at::Tensor& means) {
  check_dim(patches, 2, "patches");
  check_dim(prec_chol, 3, "prec_chol");
  check_dim(means, 2, "means");
  check_float(patches, "patches");
  const int64_t N = patches.size(0), d = patches.size(1), K = means.size(0);
  TORCH_CHECK_VALUE(K >= 1 && d >= 1, "means must have shape (K, d) with K, d >= 1, got ",
                    means.sizes());
  TORCH_CHECK_VALUE(means.size(1) == d, "patches has dimension ", d, " but means has d=",
                    means.size(1));
  TORCH_CHECK_VALUE(prec_chol.size(0) == K && prec_chol.size(1) == d && prec_chol.size(2) == d,
                    "prec_chol must have shape (", K, ", ", d, ", ", d, "), got ",
                    prec_chol.sizes());
  std::vector<std::pair<const at::Tensor*, const char*>> params = {{&prec_chol, "prec_chol"},
                                                                   {&means, "means"}};
  if (log_const != nullptr) {
    check_dim(*log_const, 1, "log_const");
    TORCH_CHECK_VALUE(log_const->size(0) == K, "log_const must have shape (", K, "), got ",
                      log_const->sizes());
    params.push_back({log_const, "log_const"});
  }
  for (const auto& entry : params) {
    const at::Tensor& t = *entry.first;
    TORCH_CHECK_TYPE(t.scalar_type() == patches.scalar_type(), entry.second, ".dtype is ",
                     t.scalar_type(), " but patches.dtype is ", patches.scalar_type());
    TORCH_CHECK_VALUE(t.device() == patches.device(), entry.second, " is on ", t.device(),
                      " but patches is on ", patches.device());
  }
  return {N, K, d};
}

// grad (N, K) of the component op's backward.
inline void check_component_grad(const at::Tensor& grad, const at::Tensor& patches,
                                 const MixtureShape& s) {
  check_dim(grad, 2, "grad");
  TORCH_CHECK_VALUE(grad.size(0) == s.N && grad.size(1) == s.K, "grad must have shape (", s.N,
                    ", ", s.K, "), got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == patches.scalar_type(), "grad.dtype is ",
                   grad.scalar_type(), " but patches.dtype is ", patches.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == patches.device(), "grad is on ", grad.device(),
                    " but patches is on ", patches.device());
}

}  // namespace patchreg
