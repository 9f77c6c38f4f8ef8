#!/usr/bin/env bash
# Runs benchmarks/kd_pairs.py on a GPU box (`kdengine train` end to end against transformers +
# Liger and naive KD; on an H200 the three pairs take ~13 min, more than one 10-minute device
# call: run --pairs qwen2.5,llama3.2 in one and --pairs qwen3 in the next): installs
# the carried liger-kernel wheel (the benchmark-only dependency; transformers comes with the
# box's image), records the GPU and the disk, and writes kd_pairs.{json,md} and log.txt to $OUT
# (default benchmarks/out). Models, runs and compile caches go to a temp dir (--work to pick
# one), never to $OUT.
#   benchmarks/run_kd_pairs.sh [kd_pairs.py options, e.g. --pairs qwen3 --variants cli,liger]
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
df -h "${TMPDIR:-/tmp}" > "$OUT/disk.txt" 2>&1 || true
"${PYTHON:-python3}" benchmarks/kd_pairs.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
