// An elementwise step of PatchNR's bfloat16 flow path (patchreg.priors.flow_lowp) on the CPU: the float32
// sum of a subnet's output, carried as several bfloat16 parts per value.
// Reference: patchreg/reference/flow_lowp.py. Tests: tests/test_flow_lowp_ops.py.
// Benchmark: bench/bench_flow_lowp.py.
//
// Why a kernel: torch converts the bfloat16 parts to a fresh float32 buffer and then sums its column
// blocks, two passes; here it is one (4.5x faster, bench/bench_flow_lowp.py). A ReLU-gradient kernel
// was tried too and dropped: torch's threshold_backward on int16 views was within 7% of it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace patchreg {
namespace {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

void check_bf16_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kBFloat16, name, ".dtype must be bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D (rows, columns), got ", t.dim(), "-D");
  TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, name, " must have unit column stride, got strides ",
                    t.strides());
}

// Rows per parallel chunk: about 64k elements, so small calls run inline.
inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, cols)); }

// out[r, j] = sum_p float(parts[r, p * width + j]) for p = 0 .. n_parts - 1, summed in that order in
// float32; parts (rows, n_parts * width) bfloat16, out (rows, width) float32.
at::Tensor bf16_sum_parts_cpu(const at::Tensor& parts, int64_t n_parts) {
  check_bf16_matrix(parts, "parts");
  TORCH_CHECK_VALUE(n_parts >= 1, "n_parts must be >= 1, got ", n_parts);
  TORCH_CHECK_VALUE(parts.size(1) % n_parts == 0, "parts has ", parts.size(1),
                    " columns, not a multiple of n_parts=", n_parts);
  const int64_t rows = parts.size(0), width = parts.size(1) / n_parts;
  at::Tensor out = at::empty({rows, width}, parts.options().dtype(at::kFloat));
  if (rows == 0 || width == 0) return out;
  const uint16_t* p = reinterpret_cast<const uint16_t*>(parts.data_ptr());
  float* o = out.data_ptr<float>();
  const int64_t ps = parts.stride(0);
  at::parallel_for(0, rows, row_grain(parts.size(1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* pr = p + r * ps;
      float* orow = o + r * width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) orow[j] = bf16_to_float(pr[j]);
      for (int64_t q = 1; q < n_parts; ++q) {
        const uint16_t* part = pr + q * width;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) orow[j] += bf16_to_float(part[j]);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patchreg, m) {
  m.def("bf16_sum_parts(Tensor parts, int n_parts) -> Tensor");
}

TORCH_LIBRARY_IMPL(patchreg, CPU, m) {
  m.impl("bf16_sum_parts", &bf16_sum_parts_cpu);
}

}  // namespace patchreg
