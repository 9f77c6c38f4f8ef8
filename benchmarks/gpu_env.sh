# Sourced by the benchmarks' run_*.sh from the repo's root: $OUT made, the carried wheels (.whl/:
# liger-kernel, the benchmark-only dependency, py-spy for kd_pairs' --start-profile and
# platformdirs, which the engine needs and the box's image lacks;
# transformers comes with the GPU box's image) installed into /tmp and put on PYTHONPATH and PATH
# with the repo, and the GPU recorded in $OUT/gpu.csv.
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/kd-bench-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kd-bench-site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/kd-bench-site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Bytecode for what the engine imports, as pip compiles it at install time: the box's image may
# ship none, and then each process compiles torch's sources again (7 of a 19 s start). Kept
# under /tmp (the image's site-packages stay as they are).
export PYTHONPYCACHEPREFIX=/tmp/kd-pycache
unset PYTHONDONTWRITEBYTECODE
"${PYTHON:-python3}" benchmarks/bytecode.py 2>&1 | tee "$OUT/bytecode.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
  --format=csv > "$OUT/gpu.csv" 2>&1 || true
# NVLink multicast stays off (the lent multi-GPU machines require it: a program using it can put
# the host's shared GPUs out of service); torchrun's ranks inherit it
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
