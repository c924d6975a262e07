// The fused chart kernel's loops (charts_kernel.h) with the decoder's tangent columns through AMX
// tiles in bfloat16 (charts_amx_gemm.h); everything else as the AVX-512 loops (charts_cpu_avx512.cpp).
// Used by patchreg::charts_log_prob_bf16 (charts_cpu.cpp) on float32, when amx::enabled().
#include "charts.h"
#include "env_switch.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PATCHREG_HAVE_CHARTS_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace patchreg {
namespace amx {

// Before the target pragma, so it runs on any x86-64 CPU.
bool enabled() {
#ifdef PATCHREG_HAVE_CHARTS_AMX
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool avx512bw = (b >> 30) & 1, amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    const bool avx512_bf16 = (a >> 5) & 1;
    if (!(__builtin_cpu_supports("avx512f") && avx512bw && amx_bf16 && amx_tile && avx512_bf16))
      return false;
    // Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA = 18).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok && !switched_off("PATCHREG_DISABLE_AMX");
#else
  return false;
#endif
}

}  // namespace amx
}  // namespace patchreg

#ifdef PATCHREG_HAVE_CHARTS_AMX
#pragma GCC target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16,avx2,fma")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "avx512_vec.h"

namespace patchreg {
namespace charts {
namespace amxk {

using avx512_vec::F32;
using avx512_vec::F64;
constexpr int kGemmRows = 8;
#define PATCHREG_CHARTS_AMX_LOOPS 1

#include "charts_simd_loops.h"

void run_blocks(const Problem<float>& p, int64_t begin, int64_t end, float* s, double* ds) {
  run_blocks_impl(p, begin, end, s, ds);
  _tile_release();  // the thread no longer carries 8 KB of tile state through context switches
}

}  // namespace amxk
}  // namespace charts
}  // namespace patchreg

#else  // no AMX loops in this build: amx::enabled() is false, so this is never called.

namespace patchreg {
namespace charts {
namespace amxk {
void run_blocks(const Problem<float>&, int64_t, int64_t, float*, double*) {}
}  // namespace amxk
}  // namespace charts
}  // namespace patchreg

#endif
