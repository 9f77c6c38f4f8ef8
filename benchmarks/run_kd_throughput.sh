#!/usr/bin/env bash
# Runs benchmarks/kd_throughput.py on a GPU box: installs the carried liger-kernel wheel (the
# benchmark-only dependency; transformers comes with the box's image), records the GPU, and
# writes kd_throughput.{json,md} and the full log under $OUT (default benchmarks/out).
#   benchmarks/run_kd_throughput.sh [kd_throughput.py options]
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
"${PYTHON:-python3}" benchmarks/kd_throughput.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
