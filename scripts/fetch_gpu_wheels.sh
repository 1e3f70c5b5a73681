#!/usr/bin/env bash
# Downloads into .whl/ the one wheel the GPU machine's image lacks: torch-pruning (pure Python). The image
# has Python 3.12 with torch 2.11, triton 3.6, torchvision 0.26, timm, scikit-learn, matplotlib, tqdm
# and pytest; carrying any of those could shadow its CUDA-matched builds. `run` carries .whl/ and
# scripts/gpu_check.sh installs it last on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest .whl --python-version 3.12 torch-pruning==1.6.1
ls -l .whl
