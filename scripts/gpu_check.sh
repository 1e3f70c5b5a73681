#!/usr/bin/env bash
# The whole GPU check in one call, sized for a lent GPU machine (10 minutes a command, 8 files back):
#   preflight (nvidia-smi, nvcc, versions) -> build for sm_90 -> the kernel, build and Lasso tests with
#   the cuda and triton backends active (multi-tile shapes included) -> a short benchmark (hsic_matrix at
#   n = 64 and 512 against the idiomatic pipeline and plain bmm; APIB's ResNet-50 decision against L1
#   and FPGM) -> compute-sanitizer memcheck and racecheck on one small multi-tile call, where the runtime
#   supports it (last: the least needed if time runs out). Each phase is timed, so the next run can be
#   sized from this one.
# Writes at most 6 files to $OUT (the device tool's folder) or runs/gpu-<date>/: gpu_check.log (every
# phase's output), hsic_matrix.jsonl and hsic_matrix_<device>.md, time_cost_<device>.json and .md.
# Only torch-pruning is missing on the GPU image: scripts/fetch_gpu_wheels.sh puts it in .whl/, carry it.
# Usage: bash scripts/gpu_check.sh [--dry-run]   (--dry-run: print the plan, skip every GPU step)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-runs/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export APIB_BUILD_CUDA=1 APIB_EXPECT_EXT=1 APIB_EXPECT_CUDA_BUILD=1
unset TRITON_INTERPRET
status=0
T0=$SECONDS
say() { echo "$*" | tee -a "$LOG"; }

# phase NAME BUDGET_S CMD...: run CMD with its output in the log, print its time against its budget.
phase() {
  local name=$1 budget=$2; shift 2
  if [ $DRY = 1 ]; then say "-- $name (budget ${budget} s): skipped in the dry run: $*"; return; fi
  say "== $name (budget ${budget} s, at +$((SECONDS - T0)) s): $*"
  local start=$SECONDS
  if "$@" >>"$LOG" 2>&1; then
    say "   $name ok in $((SECONDS - start)) s"
  else
    say "   $name FAILED in $((SECONDS - start)) s (see gpu_check.log)"
    status=1
  fi
}

# The toolkit as setup.py finds it: CUDA_HOME or CUDA_PATH, else the nvcc on PATH, else /usr/local/cuda.
toolkit() {
  local nvcc
  for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do [ -x "$root/bin/nvcc" ] && { echo "$root"; return; }; done
  nvcc=$(command -v nvcc) && { dirname "$(dirname "$(readlink -f "$nvcc")")"; return; }
  [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda
}

preflight() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "toolkit: ${CUDA_ROOT:-none found}"
  [ -n "${CUDA_ROOT:-}" ] && "$CUDA_ROOT/bin/nvcc" --version | tail -n 2
  "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "commit: ${APIB_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
}

# One small multi-tile call (n = 130: three 64-sample tiles, both full-range and row-block paths) for
# the CUDA kernels, under compute-sanitizer; gVisor runtimes refuse the device: then a message, no failure.
sanitize() {
  local tool=$1 san="${CUDA_ROOT:+$CUDA_ROOT/bin/}compute-sanitizer" out
  command -v "$san" >/dev/null || { echo "compute-sanitizer not found: skipped"; return 0; }
  out=$("$san" --tool "$tool" --error-exitcode 3 "$PY" -c "
import torch, apib_kernels as ak
x = torch.randn(130, 3, 12, device='cuda')
ak.hsic_matrix(x, torch.randint(0, 3, (130,), device='cuda'), backend='cuda', memory_limit=20000)
ak.centered_gram(x, 'gaussian', backend='cuda'); torch.cuda.synchronize(); print('sanitized call done')" 2>&1)
  local rc=$?
  echo "$out" | tail -n 15
  if [ $rc -ne 0 ] && ! grep -q "sanitized call done" <<<"$out"; then
    grep -qiE "not supported|error 999|unknown error" <<<"$out" && { echo "$tool: not supported on this runtime: skipped"; return 0; }
  fi
  return $rc
}

wheels() { "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; }

CUDA_ROOT=$(toolkit)
say "gpu_check: $(date -u +%FT%TZ); results in $OUT; phases and budgets (550 s in all; an H200 took 281 s):"
if compgen -G ".whl/*.whl" >/dev/null; then
  phase wheels 20 wheels
  # last on the path: a carried wheel must never shadow the image's CUDA-matched packages
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site"
else
  say "-- wheels: none in .whl/ (torch-pruning is needed by the benchmark: scripts/fetch_gpu_wheels.sh)"
fi
phase preflight 10 preflight
phase build 150 "$PY" setup.py build_ext --inplace
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
phase info 10 "$PY" -m apib_kernels.info
# The offline-compile test is for machines without a GPU: here every variant is compiled for real.
phase tests 150 "$PY" -m pytest -q -rs -x -p no:cacheprovider -n 8 --deselect \
  tests/test_triton_compile.py::test_every_triton_variant_compiles_for_hopper_and_ampere \
  tests/test_kernels.py tests/test_build.py tests/test_triton_compile.py tests/test_lasso.py \
  tests/test_lasso_batched.py tests/test_hsic_lasso.py
phase bench_hsic_matrix 60 "$PY" benchmarks/bench_hsic_matrix.py --n 64 512 --no-reference --results "$OUT"
phase time_cost 60 "$PY" benchmarks/time_cost.py --methods L1 FPGM APIB --results "$OUT" --quiet
phase memcheck 45 sanitize memcheck
phase racecheck 45 sanitize racecheck
if [ $DRY = 1 ]; then
  say "dry run: no GPU step ran; the real run writes these files (at most 6, the device returns 8):"
  say "  $LOG, $OUT/hsic_matrix.jsonl, $OUT/hsic_matrix_<device>.md, $OUT/time_cost_<device>.json, .md"
fi
say "== files in $OUT: $(find "$OUT" -type f | wc -l); total $((SECONDS - T0)) s; status $status"
cat "$OUT"/hsic_matrix_*.md "$OUT"/time_cost_*.md 2>/dev/null
exit $status
