#!/usr/bin/env bash
# Data-parallel scaling of the KD train step, one call: a 1-GPU and an N-GPU run of the
# benchmark pair (benchmarks/multi_gpu.py) on the same machine, each first checking its losses at
# the same global batch, then the comparison and a summary table (summary.md).
# Usage: benchmarks/multi_gpu.sh OUT_DIR [N_GPUS]
# PYTHON picks the interpreter; BENCH_ARGS adds flags to every run (e.g. "--tiny" on the CPU);
# MANY_VARIANTS="tag:flags;tag:flags" adds N-GPU runs against the same 1-GPU run.
# If the engine's default path fails, both runs are repeated with --no-compile.
set -uo pipefail
out=${1:?usage: benchmarks/multi_gpu.sh OUT_DIR [N_GPUS]}
n=${2:-2}
py=${PYTHON:-python3}
extra=${BENCH_ARGS:-}
limit=${RUN_TIMEOUT:-200}
cd "$(dirname "$0")/.."
mkdir -p "$out"
# NVLink multicast stays off (the lent machines require it; harmless elsewhere)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
check=$((4 * n))
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nvidia-smi topo -m 2>&1
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} > "$out/gpus.txt" 2>&1 || true

pair() {  # $1: tag, rest: extra flags
    local tag=$1; shift
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=0 timeout "$limit" "$py" benchmarks/multi_gpu.py --check-batch "$check" \
        $extra "$@" --out "$out/one$tag.json" > "$out/one$tag.log" 2>&1
    # shellcheck disable=SC2086
    timeout "$limit" "$py" -m torch.distributed.run --standalone --nproc-per-node "$n" \
        benchmarks/multi_gpu.py --check-batch "$check" --comm-probe $extra "$@" \
        --out "$out/many$tag.json" > "$out/many$tag.log" 2>&1
    # a result counts even if a rank aborts at exit, after writing it
    [ -s "$out/one$tag.json" ] && [ -s "$out/many$tag.json" ] || return 1
    "$py" benchmarks/multi_gpu.py --compare "$out/one$tag.json" "$out/many$tag.json" \
        --out "$out/compare$tag.json" > /dev/null
}

if ! pair ""; then
    echo "default engine path failed (logs: one.log, many.log); retrying eager" >&2
    tail -n 30 "$out/one.log" "$out/many.log" >&2 2>/dev/null
    pair "-eager" --no-compile
fi
IFS=';' read -ra variants <<< "${MANY_VARIANTS:-}"
for v in "${variants[@]}"; do
    tag=${v%%:*}; flags=${v#*:}
    # shellcheck disable=SC2086
    timeout "$limit" "$py" -m torch.distributed.run --standalone --nproc-per-node "$n" \
        benchmarks/multi_gpu.py $extra $flags --out "$out/many-$tag.json" \
        > "$out/many-$tag.log" 2>&1 || { echo "variant $tag failed:" >&2;
                                          tail -n 15 "$out/many-$tag.log" >&2; }
done
"$py" benchmarks/multi_gpu.py --summary "$out" | tee "$out/summary.md"
