// Geometry of the patch operators, and its checks, shared by patches_cpu.cpp and patches_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include "checks.h"

namespace patchreg {

// B images of C x H x W, p x p patches every s pixels: nH x nW positions.
struct PatchGeometry {
  int64_t B, C, H, W, p, s, nH, nW;
  int64_t L() const { return nH * nW; }
  int64_t D() const { return C * p * p; }
};

// Patches of the image x (B, C, H, W).
inline PatchGeometry image_geometry(const at::Tensor& x, int64_t p, int64_t s) {
  check_dim(x, 4, "x");
  check_float(x, "x");
  check_geometry(x.size(2), x.size(3), p, s);
  return {x.size(0), x.size(1), x.size(2), x.size(3), p, s, grid_size(x.size(2), p, s),
          grid_size(x.size(3), p, s)};
}

// Channels C of a patch matrix (B, N, C*p*p).
inline int64_t patch_channels(const at::Tensor& patches, int64_t p) {
  check_dim(patches, 3, "patches");
  check_float(patches, "patches");
  TORCH_CHECK_VALUE(patches.size(2) > 0 && patches.size(2) % (p * p) == 0, "patches.shape[2]=",
                    patches.size(2), " is not C*patch_size^2 for patch_size=", p);
  return patches.size(2) / (p * p);
}

// A full patch matrix (B, L, C*p*p) to be aggregated into (B, C, H, W) images.
inline PatchGeometry patches_geometry(const at::Tensor& patches, int64_t H, int64_t W, int64_t p,
                                      int64_t s) {
  check_geometry(H, W, p, s);
  const int64_t C = patch_channels(patches, p);
  PatchGeometry g{patches.size(0), C, H, W, p, s, grid_size(H, p, s), grid_size(W, p, s)};
  TORCH_CHECK_VALUE(patches.size(1) == g.L(), "image_size=(", H, ", ", W, ") with patch_size=",
                    p, ", stride=", s, " has ", g.L(), " patches, but patches has ",
                    patches.size(1));
  return g;
}

// Patches (B, N, C*p*p) at positions (B, N, 2) to be added into (B, C, H, W) images; nH, nW
// are unused (0) here.
inline PatchGeometry patches_at_geometry(const at::Tensor& patches, const at::Tensor& positions,
                                         int64_t H, int64_t W, int64_t p) {
  check_geometry(H, W, p, 1);
  const int64_t C = patch_channels(patches, p);
  check_positions(positions, patches, patches.size(0), H, W, p);
  TORCH_CHECK_VALUE(positions.size(1) == patches.size(1), "positions has ", positions.size(1),
                    " patches but patches has ", patches.size(1));
  return {patches.size(0), C, H, W, p, 1, 0, 0};
}

}  // namespace patchreg
