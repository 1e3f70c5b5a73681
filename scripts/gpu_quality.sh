#!/usr/bin/env bash
# benchmarks/quality.py's pruning study on a lent GPU machine in one call (10 minutes a command, 8 files
# back): the extension is built for sm_90 while the base models train (one process per architecture),
# then every (architecture, reduction, seed) runs as its own process, JOBS at a time, seed by seed, so a
# run cut by its deadline leaves whole seeds; the tables are made from every finished cell at the end.
# The cells live under WORK (kept while the machine stays warm), so a second call resumes the study.
# Writes to $OUT (the device tool's folder) or runs/gpu-quality-<date>/: quality_digits.{md,json,png},
# cells.tar.gz (every finished cell and the base models' records) and gpu_quality.log.
# Only torch-pruning is missing on the GPU image: scripts/fetch_gpu_wheels.sh puts it in .whl/, carry it.
# Usage: bash scripts/gpu_quality.sh   (environment: BUDGET seconds for the whole script, default 520;
#        JOBS, default 14; SEEDS, default "0 1 2 3 4"; DEVICE, default cuda; FINETUNE_EPOCHS, default 3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-quality-$(date +%Y%m%d-%H%M%S)}"
WORK="${WORK:-runs/quality-work}"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-520}" JOBS="${JOBS:-14}" SEEDS="${SEEDS:-0 1 2 3 4}" DEVICE="${DEVICE:-cuda}"
ARCHS="${ARCHS:-resnet20 resnet56 vgg16}" REDUCTIONS="${REDUCTIONS:-0.3 0.5 0.7}"
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_quality.log"
END=$(($(date +%s) + BUDGET - 45)) # the last 45 s make the tables and the archive
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS=4 APIB_BUILD_CUDA=1 APIB_EXPECT_EXT=1
unset TRITON_INTERPRET
say() { echo "[$(date -u +%T)] $*" | tee -a "$LOG"; }

# "apib" is the default preset; the variants are the paper's configuration and the paper's with one or two
# changes. Every method is fine-tuned but normalize and labels, which lost clearly after BN re-estimation.
ARGS=(--tests pruning --work "$WORK" --device "$DEVICE" --finetune-epochs "${FINETUNE_EPOCHS:-3}"
  --variants apib-paper=preset=paper apib-uniform=preset=uniform
  apib-threshold=preset=paper,allocation=threshold apib-layer=preset=paper,penalty_scale=layer
  apib-median=preset=paper,bandwidth=median apib-normalize=preset=paper,normalize=true
  apib-labels=preset=paper,target=labels apib-uniform-median=preset=uniform,bandwidth=median
  apib-layer-median=preset=paper,penalty_scale=layer,bandwidth=median
  --finetune apib l1 fpgm hrank chip random apib-paper apib-uniform apib-threshold apib-layer apib-median
  apib-uniform-median apib-layer-median)

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
say "gpu_quality: results in $OUT, cells in $WORK, $JOBS jobs, budget $BUDGET s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"

# The base models (seed 0; one cheap cell each, not fine-tuned) train while the extension builds.
pids=()
for arch in $ARCHS; do
  "$PY" benchmarks/quality.py "${ARGS[@]}" --archs "$arch" --seeds 0 --reductions 0.3 --criteria l1 \
    --variants --finetune --out "$WORK/out-base-$arch" >"$WORK/base-$arch.log" 2>&1 &
  pids+=($!)
done
if [ "$DEVICE" = cuda ]; then
  say "build: $("$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1 && echo ok || echo FAILED)"
  tail -n 3 "$WORK/build.log" >>"$LOG"
fi
for pid in "${pids[@]}"; do wait "$pid" || say "a base model failed: see $WORK/base-*.log"; done
grep -h "^base" "$WORK"/base-*.log | tee -a "$LOG"
"$PY" -m apib_kernels.info 2>&1 | tail -n 8 >>"$LOG"

# One job per (arch, reduction, seed), seed-major; each stops at the deadline, its finished cells kept.
job() {
  local left=$((END - $(date +%s))) arch=$1 reduction=$2 seed=$3
  [ $left -gt 10 ] || exit 0
  timeout "$left" "$PY" benchmarks/quality.py "${ARGS[@]}" --archs "$arch" --reductions "$reduction" \
    --seeds "$seed" --out "$WORK/out-$arch-$reduction-$seed" >"$WORK/job-$arch-$reduction-$seed.log" 2>&1
  echo "[$(date -u +%T)] $arch -$reduction seed $seed: exit $?"
}
export -f job
export END PY WORK
export ARGS_TEXT="${ARGS[*]}"
for seed in $SEEDS; do for arch in $ARCHS; do for r in $REDUCTIONS; do echo "$arch $r $seed"; done; done; done |
  xargs -P "$JOBS" -L 1 bash -c 'ARGS=($ARGS_TEXT); job "$@"' _ | tee -a "$LOG"

say "tables from every finished cell"
"$PY" benchmarks/quality.py "${ARGS[@]}" --archs $ARCHS --reductions $REDUCTIONS --seeds $SEEDS \
  --report-only --out "$OUT" >"$WORK/report.log" 2>&1 || { say "report FAILED"; tail -n 20 "$WORK/report.log" | tee -a "$LOG"; }
tar czf "$OUT/cells.tar.gz" -C "$WORK" cells $(cd "$WORK" && ls base/*.json 2>/dev/null)
say "cells: $(find "$WORK/cells" -name '*.json' | wc -l); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
grep -h "Traceback\|Error" "$WORK"/job-*.log | sort | uniq -c | head -n 20 | tee -a "$LOG"
