#!/usr/bin/env bash
# On a CUDA machine: build patchreg from source, run the CUDA tests and benchmarks, and print
# the achieved bandwidth of the patch kernels as a fraction of a device-to-device copy measured
# in the same run (goal >= 70%), and the GMM kernels' FLOP rate as a fraction of the FP32 peak.
# Uses the python on PATH (or $PYTHON) and its torch.
#
#   bash bench/gpu_check.sh [results.md]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")}
$PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
$PY -m patchreg.info
$PY -m pytest -q tests/test_patches.py -k "cuda or device" -p no:cacheprovider
$PY bench/gpu_bandwidth.py "$@"
$PY -m pytest -q tests/test_gmm.py -k "cuda" -p no:cacheprovider
$PY bench/gpu_gmm_flops.py
