#!/usr/bin/env bash
# Runs benchmarks/kd_pairs.py on a GPU box in one call (~9 min on an H200 with the defaults:
# three pairs, `kdengine train` end to end against transformers + Liger and naive KD): installs
# the carried liger-kernel wheel (the benchmark-only dependency; transformers comes with the
# box's image), records the GPU and the disk, and writes kd_pairs.{json,md} and log.txt to $OUT
# (default benchmarks/out). Models, runs and compile caches go to a temp dir (--work to pick
# one), never to $OUT.
#   benchmarks/run_kd_pairs.sh [kd_pairs.py options, e.g. --pairs qwen3 --variants cli,liger]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if ls .whl/liger_kernel-*.whl >/dev/null 2>&1; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/kd-bench-site .whl/liger_kernel-*.whl || exit 1
  export PYTHONPATH=/tmp/kd-bench-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
  --format=csv > "$OUT/gpu.csv" 2>&1 || true
df -h "${TMPDIR:-/tmp}" > "$OUT/disk.txt" 2>&1 || true
"${PYTHON:-python3}" benchmarks/kd_pairs.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
