#!/usr/bin/env bash
# Data-parallel scaling of the KD train step, one call: a 1-GPU and an N-GPU run of the
# benchmark pair (benchmarks/multi_gpu.py), each first checking its losses at the same global
# batch, then the comparison. Usage: benchmarks/multi_gpu.sh OUT_DIR [N_GPUS]
# PYTHON picks the interpreter; BENCH_ARGS adds flags to both runs (e.g. "--tiny" on the CPU).
# If the engine's default path fails, both runs are repeated with --no-compile.
set -uo pipefail
out=${1:?usage: benchmarks/multi_gpu.sh OUT_DIR [N_GPUS]}
n=${2:-2}
py=${PYTHON:-python3}
extra=${BENCH_ARGS:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
# NVLink multicast stays off (the lent machines require it; harmless elsewhere)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
check=$((4 * n))
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true) \
    > "$out/gpus.txt"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' \
    >> "$out/gpus.txt" 2>&1

pair() {  # $1: tag, rest: extra flags
    local tag=$1; shift
    timeout 200 "$py" benchmarks/multi_gpu.py --check-batch "$check" $extra "$@" \
        --out "$out/one$tag.json" > "$out/one$tag.log" 2>&1 || return 1
    timeout 200 "$py" -m torch.distributed.run --nproc-per-node "$n" benchmarks/multi_gpu.py \
        --check-batch "$check" $extra "$@" --out "$out/many$tag.json" \
        > "$out/many$tag.log" 2>&1 || return 1
    "$py" benchmarks/multi_gpu.py --compare "$out/one$tag.json" "$out/many$tag.json" \
        --out "$out/compare$tag.json"
}

if ! pair ""; then
    echo "default engine path failed (logs: one.log, many.log); retrying eager" >&2
    tail -n 30 "$out/one.log" "$out/many.log" >&2 2>/dev/null
    pair "-eager" --no-compile
fi
# MANY_VARIANTS="tag:flags;tag:flags": more N-GPU runs against one.json (what each option buys)
IFS=';' read -ra variants <<< "${MANY_VARIANTS:-}"
for v in "${variants[@]}"; do
    tag=${v%%:*}; flags=${v#*:}
    # shellcheck disable=SC2086
    timeout 200 "$py" -m torch.distributed.run --nproc-per-node "$n" benchmarks/multi_gpu.py \
        $extra $flags --out "$out/many-$tag.json" > "$out/many-$tag.log" 2>&1 &&
        "$py" benchmarks/multi_gpu.py --compare "$out/one.json" "$out/many-$tag.json" \
            | grep -E '"efficiency"' | sed "s/^/$tag: /"
done
