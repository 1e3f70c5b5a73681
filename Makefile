# The targets people type. `make test` works on a fresh machine: it creates .venv, installs the
# pinned dependencies, builds the extension (CPU kernels, plus CUDA kernels when a toolkit is found)
# and runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch's own guess from an `nvcc` wrapper on PATH can be wrong; setup.py falls back to this root.
export CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export MAX_JOBS ?= 2

.PHONY: install build test demo bench lint gpu-check clean

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

build: install
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m apib_kernels.info

test: build
	$(PY) -m pytest -q

demo: build
	$(PY) scripts/demo.py

bench: build
	$(PY) benchmarks/bench_hsic_matrix.py

lint: install
	$(PY) -m ruff check apib_kernels apib tests benchmarks scripts setup.py
	$(PY) -m ruff format --check apib_kernels apib tests benchmarks scripts setup.py

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build *.egg-info apib_kernels/_C*.so
