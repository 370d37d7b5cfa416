# DP-Face kit. Two commands for a fresh machine: `make pipeline` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Name of the pipeline run under runs/; a new timestamped folder each time unless given.
RUN    ?= $(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

# CUDA: build the CUDA sources of the kernels whenever nvcc is found. CUDA_HOME (if not given) is the
# toolkit prefix nvcc itself reports (nvcc on PATH may be a wrapper script), else /usr/local/cuda.
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifneq ($(NVCC),)
ifeq ($(origin CUDA_HOME), undefined)
CUDA_HOME := $(shell $(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 \
	| sed -n 's|^#\$$ TOP=\(.*\)/bin/\.\.$$|\1|p' | head -n 1)
endif
ifeq ($(CUDA_HOME),)
CUDA_HOME := /usr/local/cuda
endif
export CUDA_HOME
# Hopper only by default: keeps a CI build to a few minutes. Override, e.g. TORCH_CUDA_ARCH_LIST="8.0;9.0".
export TORCH_CUDA_ARCH_LIST ?= 9.0
export DPFACE_WITH_CUDA ?= 1
else
export DPFACE_WITH_CUDA ?= 0
endif
export MAX_JOBS ?= 2

DEPS_STAMP    := $(VENV)/.dpface-deps
KERNELS_STAMP := $(VENV)/.dpface-kernels
KERNEL_SOURCES := $(wildcard kernels/csrc/*.cpp kernels/csrc/*.cu kernels/csrc/*.h) kernels/setup.py kernels/pyproject.toml

.PHONY: help setup deps kernels chromium clang pipeline test test-avx2 test-fast lab lint bench clean print-cuda

# The browser tests drive Debian's Chromium through Playwright (Playwright's own download cannot be used).
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)
# JupyterLab refuses to run as root without --allow-root; root is what a container user gets.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

help:
	@echo "make pipeline   set up if needed, build kernels, run the notebook pipeline on data_samples/ (runs/RUN)"
	@echo "make test       set up if needed, run every test, notebooks included"
	@echo "make test-avx2  the tests marked isa again with the ISA limited to AVX2 (as a CPU without AVX-512)"
	@echo "make setup | kernels | lab | lint | bench | clean"

## setup: .venv with torch, the project (editable, dev extras), a Jupyter kernel, and the compiled kernels.
setup: deps kernels

deps: $(DEPS_STAMP)
$(DEPS_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name dpface --display-name "Python (DP-Face kit)" >/dev/null
	@touch $@

## chromium: Debian's Chromium for tests/browser, installed with apt-get when missing and possible.
chromium:
	@if [ -n "$(CHROMIUM)" ]; then echo "chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium with apt-get (browser tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "apt-get could not install chromium; tests/browser will be skipped"; \
	else echo "chromium: not found and apt-get is not usable here; tests/browser will be skipped"; fi

## clang: Debian's clang for tests/kernels/test_clang_build.py (the kernels built with clang and no OpenMP,
## as on a Mac), installed with apt-get when missing and possible.
CLANGXX := $(shell command -v clang++)
clang:
	@if [ -n "$(CLANGXX)" ]; then echo "clang++: $(CLANGXX)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing clang with apt-get (kernel build test)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null) \
	    || echo "apt-get could not install clang; tests/kernels/test_clang_build.py will be skipped"; \
	else echo "clang++: not found and apt-get is not usable here; tests/kernels/test_clang_build.py will be skipped"; fi

## kernels: the dpface_kernels extension, built against the venv's torch (no build isolation).
kernels: $(KERNELS_STAMP)
$(KERNELS_STAMP): $(DEPS_STAMP) $(KERNEL_SOURCES)
	@echo "building dpface_kernels (CUDA: $(DPFACE_WITH_CUDA), CUDA_HOME=$${CUDA_HOME:-none}, arch=$${TORCH_CUDA_ARCH_LIST:-none})"
	$(PIP) install -q --no-build-isolation -e kernels
	$(PY) -c "import dpface_kernels as k; print('dpface_kernels compiled:', k.has_compiled(), 'cuda:', k.has_cuda())"
	@touch $@

pipeline: setup
	$(VENV)/bin/dpface pipeline pipeline.yaml --out runs/$(RUN)

test: setup chromium clang
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-sanitize-with $(CURDIR)/tests/notebooks/sanitize.cfg $(PYTEST_ARGS) tests notebooks

## test-avx2: the tests whose behaviour depends on the vector ISA or native bfloat16 (marker `isa`), run again
## with torch's kernels and oneDNN limited to AVX2, so an AVX-512 host also checks what an AVX2-only CPU does.
test-avx2: setup
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -p no:cacheprovider -m isa \
		$(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(ALLOW_ROOT)

lint: deps
	$(VENV)/bin/ruff check .

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf kernels/build kernels/*.egg-info $(KERNELS_STAMP)
	find kernels -name '*.so' -delete

print-cuda:
	@echo "nvcc=$(NVCC) CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST) DPFACE_WITH_CUDA=$(DPFACE_WITH_CUDA)"
