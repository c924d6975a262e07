// The patchreg operator library: the namespace, build information, and the Python module stub.
// Each op family declares its schemas with TORCH_LIBRARY_FRAGMENT in its own *_cpu.cpp file.
#ifdef PATCHREG_PYTHON_MODULE
#include <Python.h>  // first, as Python requires
#endif
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#include "charts.h"
#include "checks.h"
#include "gmm_cpu_avx2.h"

// PATCHREG_CUDA_ARCHS is passed bare (-DPATCHREG_CUDA_ARCHS=8.0,9.0) to avoid shell quoting.
#define PATCHREG_STR_(...) #__VA_ARGS__
#define PATCHREG_STR(...) PATCHREG_STR_(__VA_ARGS__)
#ifdef PATCHREG_CUDA_ARCHS
#define PATCHREG_CUDA_ARCHS_STR PATCHREG_STR(PATCHREG_CUDA_ARCHS)
#else
#define PATCHREG_CUDA_ARCHS_STR ""
#endif

namespace patchreg {

void check_positions(const at::Tensor& positions, const at::Tensor& like, int64_t B, int64_t H,
                     int64_t W, int64_t p) {
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong, "positions.dtype must be int64, got ",
                   positions.scalar_type());
  TORCH_CHECK_VALUE(positions.dim() == 3 && positions.size(0) == B && positions.size(2) == 2,
                    "positions must have shape (", B, ", N, 2), got ", positions.sizes());
  TORCH_CHECK_VALUE(positions.device() == like.device(), "positions is on ", positions.device(),
                    " but the data is on ", like.device());
  if (positions.numel() == 0) return;
  auto rows = positions.select(2, 0), cols = positions.select(2, 1);
  const int64_t rmin = rows.min().item<int64_t>(), rmax = rows.max().item<int64_t>();
  const int64_t cmin = cols.min().item<int64_t>(), cmax = cols.max().item<int64_t>();
  TORCH_CHECK_VALUE(rmin >= 0 && cmin >= 0 && rmax <= H - p && cmax <= W - p,
                    "positions out of bounds: need 0 <= row <= ", H - p, " and 0 <= col <= ",
                    W - p, ", got rows in [", rmin, ", ", rmax, "], cols in [", cmin, ", ",
                    cmax, "]");
}

// JSON describing how this library was compiled (read by `python -m patchreg.info`).
std::string build_info() {
  std::ostringstream os;
  os << "{\"torch_version\": \"" << TORCH_VERSION << "\", ";
#ifdef PATCHREG_WITH_CUDA
  os << "\"cuda\": true, \"cuda_archs\": \"" << PATCHREG_CUDA_ARCHS_STR << "\", ";
#else
  os << "\"cuda\": false, \"cuda_archs\": \"\", ";
#endif
#ifdef _OPENMP
  os << "\"openmp\": true, ";
#else
  os << "\"openmp\": false, ";
#endif
  // Whether the GMM kernels run their AVX2/FMA loops (decided at run time, gmm_cpu_avx2.cpp).
  os << "\"avx2\": " << (avx2::enabled() ? "true" : "false") << ", ";
  // Whether the chart kernel runs its AVX-512 loops (charts_cpu_avx512.cpp).
  os << "\"avx512\": " << (avx512::enabled() ? "true" : "false") << ", ";
  os << "\"num_threads\": " << at::get_num_threads() << "}";
  return os.str();
}

}  // namespace patchreg

TORCH_LIBRARY(patchreg, m) {
  m.def("build_info() -> str", &patchreg::build_info);
}

#ifdef PATCHREG_PYTHON_MODULE
// Lets `import patchreg._C` load the library (and so register the ops) without pybind11.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
