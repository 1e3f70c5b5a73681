# The targets people type. `make test` works on a fresh machine: it creates .venv, installs the
# pinned dependencies, builds the extension (CPU kernels, plus CUDA kernels when a toolkit is found)
# and runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch's own guess from an `nvcc` wrapper on PATH can be wrong; setup.py falls back to this root.
export CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export MAX_JOBS ?= 2

.PHONY: install build test demo bench lint gpu-check triton-compat clean

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# The editable install maps the Python packages onto this tree; only the compiled sources need a rebuild.
$(VENV)/.built: $(VENV)/.installed setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built
	$(PY) -m apib_kernels.info

test: build
	$(PY) -m pytest -q

# The main job: train a CIFAR-style ResNet-20 on the embedded digits, prune half its FLOPs with APIB,
# fine-tune briefly, print the report (runs/demo/pruned/report.json, widths.png).
DEMO ?= runs/demo
demo: build
	$(VENV)/bin/apib train --model resnet20 --dataset digits --epochs 5 --batch-size 128 --output $(DEMO)/base --overwrite
	$(VENV)/bin/apib prune --model resnet20 --dataset digits --ckpt $(DEMO)/base/model.pt \
		--flops-reduction 0.5 --finetune-epochs 3 --lr 0.01 --batch-size 128 --output $(DEMO)/pruned --overwrite

bench: build
	$(PY) benchmarks/bench_hsic_matrix.py

lint: install
	$(PY) -m ruff check apib_kernels apib tests benchmarks scripts setup.py
	$(PY) -m ruff format --check apib_kernels apib tests benchmarks scripts setup.py

gpu-check:
	bash scripts/gpu_check.sh

# Every Triton kernel variant compiled offline for sm_90 and sm_80 with the GPU machine's triton (3.6), in
# a throwaway folder put before the venv's own triton: a kernel that only the newer Triton compiles fails.
TRITON_GPU ?= 3.6.0
triton-compat: install
	rm -rf $(VENV)/triton-$(TRITON_GPU)
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton-$(TRITON_GPU) triton==$(TRITON_GPU)
	PYTHONPATH=$(VENV)/triton-$(TRITON_GPU) $(PY) scripts/compile_triton.py --arch 90 80
	rm -rf $(VENV)/triton-$(TRITON_GPU)

clean:
	rm -rf build *.egg-info apib_kernels/_C*.so $(VENV)/.built
