#!/usr/bin/env bash
# On a CUDA machine: build patchreg from source, run the CUDA tests and benchmarks, and print
# the achieved bandwidth of the patch kernels as a fraction of a device-to-device copy measured
# in the same run (goal >= 70%), the GMM kernels' FLOP rate as a fraction of the FP32 peak, and
# the chart-mixture CUDA kernel against its reference on the GPU. Every step runs even when an
# earlier one fails (a GPU session is short); the exit status says whether all passed.
# Uses the python on PATH (or $PYTHON) and its torch. Results go to $RESULTS (default bench/results).
#
#   RESULTS=/some/dir bash bench/gpu_check.sh      (SKIP_BUILD=1: use the patchreg already installed)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
failed=()
step() {  # step NAME COMMAND...: runs it, records a failure, goes on
  local name=$1
  shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" || failed+=("$name")
  echo "=== $name took $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# The GPU image exports CC/CXX=/opt/gcc/bin/gcc|g++, a GCC whose links leave libstdc++ out of _C's
# dependencies (ldd shows none), and then formatting any integer in _C (build_info, TORCH_CHECK
# messages with numbers) segfaults. The system compilers match the runtime libstdc++.
if [ -x /usr/bin/g++ ] && [ -z "${KEEP_CXX:-}" ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")}
[ -n "${SKIP_BUILD:-}" ] || step build $PY -m pip install -q --no-build-isolation --no-deps -v -e . >"$RESULTS/build.log" 2>&1
step info $PY -m patchreg.info
step test-patches $PY -m pytest -q tests/test_patches.py -k "cuda or device" -p no:cacheprovider
step test-gmm $PY -m pytest -q tests/test_gmm.py -k "cuda" -p no:cacheprovider
step test-charts $PY -m pytest -q tests/test_charts_op.py -k "thread or cuda" -p no:cacheprovider
step test-chart-prior $PY -m pytest -q tests/test_chart_prior.py tests/test_charts_image_op.py -k "cuda" -p no:cacheprovider
step test-reconstruct-cli $PY -m pytest -q tests/test_cli_reconstruct.py -k "cuda" -p no:cacheprovider
step scaling-nccl $PY bench/distributed_scaling.py --device cuda --procs 1 --workloads gmm flow --rounds 1 \
  --gmm-patches 400000 --flow-batch 4096 --out "$RESULTS/distributed_scaling_cuda.md"
step bandwidth $PY bench/gpu_bandwidth.py --out "$RESULTS/gpu_bandwidth.md"
step gmm-flops $PY bench/gpu_gmm_flops.py --out "$RESULTS/gpu_gmm_flops.md"
step charts-speed $PY bench/charts_op_speed.py --device cuda --rounds 5 --ref-chunk 8192 65536 \
  --out "$RESULTS/charts_op_cuda.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
