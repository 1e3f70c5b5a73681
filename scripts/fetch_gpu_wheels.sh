#!/usr/bin/env bash
# Downloads into .whl/ the wheels the GPU machine lacks (it has torch, triton, numpy, pytest and Python
# 3.12, and no package registry), so that `run` can carry .whl/ and scripts/gpu_check.sh installs them.
# torchvision must match the device's torch: TORCHVISION=0.26.0 for torch 2.11.
# scikit-learn and scipy are left out (the carry limit is 64 MiB): tests on the digits data skip there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest .whl --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 \
  "torchvision==${TORCHVISION:-0.26.0}" torch-pruning==1.6.1 tqdm matplotlib contourpy cycler fonttools \
  kiwisolver pillow pyparsing python-dateutil six packaging
du -sh .whl
