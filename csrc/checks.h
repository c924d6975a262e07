// Argument checks shared by the CPU and CUDA entry points. The Python wrappers check first
// with friendlier messages; these keep direct torch.ops.patchreg calls safe.
// TORCH_CHECK_VALUE -> Python ValueError, TORCH_CHECK_TYPE -> Python TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace patchreg {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   ".dtype must be float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t ndim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == ndim, name, " must be ", ndim, "-D, got ", t.dim(), "-D");
}

inline int64_t grid_size(int64_t size, int64_t patch, int64_t stride) {
  return (size - patch) / stride + 1;
}

inline void check_geometry(int64_t H, int64_t W, int64_t p, int64_t s) {
  TORCH_CHECK_VALUE(p >= 1, "patch_size must be >= 1, got ", p);
  TORCH_CHECK_VALUE(s >= 1, "stride must be >= 1, got ", s);
  TORCH_CHECK_VALUE(p <= H && p <= W, "patch_size=", p, " is larger than the image (H=", H,
                    ", W=", W, ")");
}

// Checks positions (B, N, 2) int64 on the device of `like`; the bound check reads the values.
void check_positions(const at::Tensor& positions, const at::Tensor& like, int64_t B, int64_t H,
                     int64_t W, int64_t p);

}  // namespace patchreg
