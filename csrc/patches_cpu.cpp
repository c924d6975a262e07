// Overlapping-patch extraction and its adjoint on the CPU (at::parallel_for, OpenMP).
// Reference: patchreg/reference/patches.py. Tests: tests/test_patches.py.
// Benchmarks: bench/bench_patches.py.
//
// Layout: x (B, C, H, W) with any strides; patches (B, L, C*p*p), L = nH*nW, row-major over
// patch positions and (c, di, dj) inside a patch: the order of F.unfold(...).transpose(1, 2).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "patch_geometry.h"

namespace patchreg {
namespace {

// Work items are handed to threads only in chunks of at least ~64k element operations, so small
// calls (gradcheck, tiny images) run inline without OpenMP wake-up costs.
constexpr int64_t kMinWorkPerChunk = 1 << 16;
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerChunk / std::max<int64_t>(1, work_per_item));
}

// Outputs of 32 MB or more are allocated on 2 MB-aligned memory advised for transparent huge
// pages: glibc serves such sizes by a fresh mmap every call, and the first-touch page faults
// otherwise cost more than the copy itself (measured: filling a fresh 65 MB tensor ~100 ms here,
// refilling it ~15 ms). Smaller outputs usually come from glibc's heap, already faulted in, where
// huge-page compaction stalls were measured to cost more than they save.
//
// Freed blocks go back to a small pool and are handed out again for the next output of the same
// size: a regularizer extracts the same patch matrix in every iteration, and a fresh block costs
// page faults each time, plus, in about one process in five, a direct memory compaction for its
// huge pages (measured 85 ms against 9 ms for 512x512, p = 8). Reused memory is already faulted
// in, so only the first call of a size pays. The pool keeps at most kMaxPooledBytes.
class HugeBlockPool {
 public:
  static HugeBlockPool& instance() {
    static HugeBlockPool* pool = new HugeBlockPool();  // never destroyed: tensors may outlive statics
    return *pool;
  }
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    void* ptr = it->second;
    free_.erase(it);
    pooled_ -= bytes;
    return ptr;
  }
  void give(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (pooled_ + bytes <= kMaxPooledBytes) {
        free_.emplace(bytes, ptr);
        pooled_ += bytes;
        return;
      }
    }
    free(ptr);
  }

 private:
  static constexpr size_t kMaxPooledBytes = size_t(512) << 20;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t pooled_ = 0;
};

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t n : sizes) numel *= n;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
#ifdef __linux__
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes >= 16 * kHuge) {
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* ptr = HugeBlockPool::instance().take(rounded);
    if (ptr == nullptr && posix_memalign(&ptr, kHuge, rounded) == 0) {
      madvise(ptr, rounded, MADV_HUGEPAGE);
    }
    if (ptr != nullptr) {
      return at::from_blob(ptr, sizes, [rounded](void* q) { HugeBlockPool::instance().give(q, rounded); }, options);
    }
  }
#endif
  return at::empty(sizes, options);
}

// Copies one patch (C*p*p values) to `out`; kUnitW lets the compiler vectorise the row copy.
template <typename T, bool kUnitW>
inline void copy_patch(const T* src, int64_t sC, int64_t sH, int64_t sW, int64_t C, int64_t p,
                       T* out) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t di = 0; di < p; ++di) {
      const T* row = src + c * sC + di * sH;
      T* o = out + (c * p + di) * p;
      if (kUnitW) {
        for (int64_t dj = 0; dj < p; ++dj) o[dj] = row[dj];
      } else {
        for (int64_t dj = 0; dj < p; ++dj) o[dj] = row[dj * sW];
      }
    }
  }
}

// Subtracts the mean of `n` values in place (sum in double) and returns the mean.
template <typename T>
inline T center(T* v, int64_t n) {
  double sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += v[k];
  const T mean = static_cast<T>(sum / n);
  for (int64_t k = 0; k < n; ++k) v[k] -= mean;
  return mean;
}

template <typename T, bool kUnitW>
void extract_kernel(const at::Tensor& x, const PatchGeometry& g, bool remove_mean, T* out, T* means) {
  const T* xp = x.data_ptr<T>();
  const int64_t sB = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  const int64_t D = g.D();
  // One work item = one row of patch positions; each writes a contiguous block of the output.
  at::parallel_for(0, g.B * g.nH, grain_for(g.nW * D), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / g.nH, i = item % g.nH;
      const T* src_row = xp + b * sB + i * g.s * sH;
      T* out_row = out + item * g.nW * D;
      for (int64_t j = 0; j < g.nW; ++j) {
        T* o = out_row + j * D;
        copy_patch<T, kUnitW>(src_row + j * g.s * sW, sC, sH, sW, g.C, g.p, o);
        if (remove_mean) means[item * g.nW + j] = center(o, D);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> extract_patches_cpu(const at::Tensor& x, int64_t patch_size,
                                                       int64_t stride, bool remove_mean) {
  const PatchGeometry g = image_geometry(x, patch_size, stride);
  auto out = empty_output({g.B, g.L(), g.D()}, x.options());
  auto means = at::empty({g.B, remove_mean ? g.L() : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "extract_patches_cpu", [&] {
    if (x.stride(3) == 1)
      extract_kernel<scalar_t, true>(x, g, remove_mean, out.data_ptr<scalar_t>(),
                                     means.data_ptr<scalar_t>());
    else
      extract_kernel<scalar_t, false>(x, g, remove_mean, out.data_ptr<scalar_t>(),
                                      means.data_ptr<scalar_t>());
  });
  return {out, means};
}

// Number of patch positions covering each index along one axis.
std::vector<int64_t> axis_coverage(int64_t size, int64_t p, int64_t s, int64_t n) {
  std::vector<int64_t> count(size, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < p; ++d) ++count[i * s + d];
  return count;
}

// Adjoint by bands of output rows: each task owns rows [y0, y1) of one image (all channels) and
// streams through the patch rows that touch them, adding each patch's strips in a fixed order
// (patch row, column, channel). Reads are sequential, the band stays in cache, no two tasks
// write the same pixel, and the summation order does not depend on the thread count.
constexpr int64_t kBandRows = 64;

template <typename T>
void aggregate_kernel(const T* patches, const PatchGeometry& g, bool normalize, bool remove_mean,
                      T* out) {
  const int64_t D = g.D(), pp = g.p * g.p, L = g.L(), HW = g.H * g.W;
  const int64_t bands = (g.H + kBandRows - 1) / kBandRows;
  const auto rows = axis_coverage(g.H, g.p, g.s, g.nH);
  const auto cols = axis_coverage(g.W, g.p, g.s, g.nW);
  const int64_t work = (kBandRows / g.s + g.p) * g.nW * D;  // patch rows read per band
  at::parallel_for(0, g.B * bands, grain_for(work), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bands, y0 = (item % bands) * kBandRows;
      const int64_t y1 = std::min(g.H, y0 + kBandRows);
      T* img = out + b * g.C * HW;
      for (int64_t c = 0; c < g.C; ++c) std::fill(img + c * HW + y0 * g.W, img + c * HW + y1 * g.W, T(0));
      const int64_t i_lo = std::max<int64_t>(0, (y0 - g.p + g.s) / g.s);
      const int64_t i_hi = std::min<int64_t>(g.nH - 1, (y1 - 1) / g.s);
      for (int64_t i = i_lo; i <= i_hi; ++i) {
        const int64_t di_lo = std::max<int64_t>(0, y0 - i * g.s);
        const int64_t di_hi = std::min<int64_t>(g.p, y1 - i * g.s);
        const T* row = patches + (b * L + i * g.nW) * D;
        for (int64_t j = 0; j < g.nW; ++j) {
          const T* v = row + j * D;
          T mean = 0;
          if (remove_mean) {
            double sum = 0;
            for (int64_t k = 0; k < D; ++k) sum += v[k];
            mean = static_cast<T>(sum / D);
          }
          for (int64_t c = 0; c < g.C; ++c) {
            for (int64_t di = di_lo; di < di_hi; ++di) {
              const T* src = v + c * pp + di * g.p;
              T* dst = img + c * HW + (i * g.s + di) * g.W + j * g.s;
              for (int64_t dj = 0; dj < g.p; ++dj) dst[dj] += src[dj] - mean;
            }
          }
        }
      }
      if (!normalize) continue;
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t y = y0; y < y1; ++y) {
          T* o = img + c * HW + y * g.W;
          for (int64_t x = 0; x < g.W; ++x) {
            const int64_t n = rows[y] * cols[x];
            if (n) o[x] /= static_cast<T>(n);
          }
        }
    }
  });
}

at::Tensor aggregate_patches_cpu(const at::Tensor& patches_in, int64_t height, int64_t width,
                                 int64_t patch_size, int64_t stride, bool normalize,
                                 bool remove_mean) {
  const PatchGeometry g = patches_geometry(patches_in, height, width, patch_size, stride);
  const at::Tensor patches = patches_in.contiguous();
  auto out = at::empty({g.B, g.C, g.H, g.W}, patches.options());
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "aggregate_patches_cpu", [&] {
    aggregate_kernel<scalar_t>(patches.data_ptr<scalar_t>(), g, normalize, remove_mean,
                               out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor extract_patches_at_cpu(const at::Tensor& x, const at::Tensor& positions,
                                  int64_t patch_size) {
  const PatchGeometry g = image_geometry(x, patch_size, 1);
  check_positions(positions, x, g.B, g.H, g.W, patch_size);
  const at::Tensor pos = positions.contiguous();
  const int64_t N = pos.size(1), D = g.D();
  auto out = empty_output({g.B, N, D}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "extract_patches_at_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t* pp = pos.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t sB = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
    at::parallel_for(0, g.B * N, grain_for(D), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / N, r = pp[2 * k], c = pp[2 * k + 1];
        copy_patch<scalar_t, false>(xp + b * sB + r * sH + c * sW, sC, sH, sW, g.C, g.p,
                                    op + k * D);
      }
    });
  });
  return out;
}

// Scatter-add, deterministic: the image is cut into bands of rows, each band owned by one task
// that adds the rows of every patch falling in it, in patch order.
at::Tensor aggregate_patches_at_cpu(const at::Tensor& patches_in, const at::Tensor& positions,
                                    int64_t height, int64_t width, int64_t patch_size) {
  const PatchGeometry g = patches_at_geometry(patches_in, positions, height, width, patch_size);
  const int64_t B = g.B, C = g.C, p = patch_size, pp = p * p, N = patches_in.size(1);
  const at::Tensor patches = patches_in.contiguous(), pos = positions.contiguous();
  auto out = at::zeros({B, C, height, width}, patches.options());
  constexpr int64_t kBand = 16;
  const int64_t bands = (height + kBand - 1) / kBand;
  AT_DISPATCH_FLOATING_TYPES(patches.scalar_type(), "aggregate_patches_at_cpu", [&] {
    const scalar_t* src = patches.data_ptr<scalar_t>();
    const int64_t* pp_ = pos.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * C * bands, grain_for(N * p), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t band = item % bands, c = (item / bands) % C, b = item / (bands * C);
        const int64_t y0 = band * kBand, y1 = std::min(height, y0 + kBand);
        scalar_t* plane = op + (b * C + c) * height * width;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t r = pp_[2 * (b * N + n)], col = pp_[2 * (b * N + n) + 1];
          const int64_t lo = std::max(r, y0), hi = std::min(r + p, y1);
          const scalar_t* v = src + (b * N + n) * C * pp + c * pp;
          for (int64_t y = lo; y < hi; ++y) {
            const scalar_t* vr = v + (y - r) * p;
            scalar_t* o = plane + y * width + col;
            for (int64_t dj = 0; dj < p; ++dj) o[dj] += vr[dj];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patchreg, m) {
  m.def("extract_patches(Tensor x, int patch_size, int stride, bool remove_mean) -> (Tensor, Tensor)");
  m.def(
      "aggregate_patches(Tensor patches, int height, int width, int patch_size, int stride, "
      "bool normalize, bool remove_mean) -> Tensor");
  m.def("extract_patches_at(Tensor x, Tensor positions, int patch_size) -> Tensor");
  m.def(
      "aggregate_patches_at(Tensor patches, Tensor positions, int height, int width, "
      "int patch_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(patchreg, CPU, m) {
  m.impl("extract_patches", &extract_patches_cpu);
  m.impl("aggregate_patches", &aggregate_patches_cpu);
  m.impl("extract_patches_at", &extract_patches_at_cpu);
  m.impl("aggregate_patches_at", &aggregate_patches_at_cpu);
}

}  // namespace patchreg
