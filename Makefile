# Set-up, tests, demo and benchmarks. Everything runs in .venv, created on first use.
# torch 2.14.1 is the CUDA 13 build: with nvcc present the CUDA kernels are compiled and linked
# even on a machine without a GPU (override with `make TORCH_VERSION=...` or PATCHREG_NO_CUDA=1).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
BUILD_STAMP := $(VENV)/.patchreg-built
SOURCES := $(wildcard csrc/*) setup.py pyproject.toml patchreg/_toolchain.py

.PHONY: all venv build test demo bench cmake clean

all: test

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q numpy scipy scikit-image scikit-learn safetensors tqdm matplotlib \
	    pybind11 ninja ripser gudhi pytest pytest-benchmark hypothesis expecttest
	touch $@

venv: $(VENV)/.deps

# --no-build-isolation: compile against the torch in .venv (an isolated build would use another).
$(BUILD_STAMP): $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m patchreg.info
	touch $@

build: $(BUILD_STAMP)

test: build
	$(PY) -m pytest -q --durations=20 tests

demo: build
	$(VENV)/bin/patchreg demo --out demo_out --seed 0

bench: build
	$(PY) -m pip install -q bm3d   # bench-only anchor of bench/priors_table.py
	$(PY) bench/patch_speed_table.py
	$(PY) -m pytest -q bench/bench_patches.py bench/bench_gmm.py --benchmark-only --benchmark-columns=min,median,mean

cmake: venv
	cmake -S . -B build-cmake -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build build-cmake -j 2
	./build-cmake/patchreg_cpp_example

clean:
	rm -rf build build-cmake patchreg/_C*.so patchreg/_build_info.json $(BUILD_STAMP)
