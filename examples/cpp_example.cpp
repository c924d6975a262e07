// Calls the patchreg ops from C++ through the dispatcher (built by CMakeLists.txt) and checks
// the extraction against at::Tensor::unfold and the adjoint identity. Exit code 0 = all good.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <tuple>

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto extract = dispatcher.findSchemaOrThrow("patchreg::extract_patches", "")
                     .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, bool)>();
  auto aggregate = dispatcher.findSchemaOrThrow("patchreg::aggregate_patches", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, bool, bool)>();

  const int64_t H = 21, W = 17, p = 4, s = 2;
  at::Tensor x = at::randn({2, 3, H, W}, at::kDouble);
  auto [patches, means] = extract.call(x, p, s, false);
  // Same order as F.unfold(x, p, stride=s).transpose(1, 2).
  at::Tensor expected = x.unfold(2, p, s).unfold(3, p, s).permute({0, 2, 3, 1, 4, 5}).reshape({2, -1, 3 * p * p});
  const double extract_err = (patches - expected).abs().max().item<double>();

  at::Tensor y = at::randn(patches.sizes(), at::kDouble);
  at::Tensor adj = aggregate.call(y, H, W, p, s, false, false);
  const double lhs = (patches * y).sum().item<double>(), rhs = (x * adj).sum().item<double>();
  const double adjoint_err = std::abs(lhs - rhs) / std::max(1.0, std::abs(lhs));

  std::cout << "patches " << patches.sizes() << " extract max error " << extract_err
            << ", adjoint relative error " << adjoint_err << std::endl;
  const bool ok = extract_err == 0.0 && adjoint_err < 1e-12;
  std::cout << (ok ? "OK" : "FAILED") << std::endl;
  return ok ? 0 : 1;
}
