#!/usr/bin/env bash
# Runs benchmarks/kd_throughput.py on a GPU box: installs the carried liger-kernel wheel (the
# benchmark-only dependency; transformers comes with the box's image), records the GPU, and
# writes kd_throughput.{json,md} and the full log under $OUT (default benchmarks/out).
#   benchmarks/run_kd_throughput.sh [kd_throughput.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
"${PYTHON:-python3}" benchmarks/kd_throughput.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
