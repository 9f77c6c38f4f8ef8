#!/usr/bin/env bash
# The whole engine on a GPU box, as a user runs it: the demo, then a bf16 run of a tiny
# HF-layout Qwen2-family pair killed with SIGKILL mid-run and resumed, then the verdicts.
# Usage (device machine): OUT=/some/dir benchmarks/gpu_smoke.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD KDENGINE_CACHE=/tmp/kdc KDENGINE_RUNS_DIR=/tmp/kdruns PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-smoke}; mkdir -p "$OUT"
PY=${PY:-python3}
STEPS=${STEPS:-400}; EVERY=$((STEPS / 4)); DEMO=${DEMO:-1}
nvidia-smi -L > "$OUT/gpu.txt" 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt"

# 1. the demo, on CUDA (compiled blocks, fused loss, bf16 autocast)
[ "$DEMO" = 1 ] && /usr/bin/time -f "demo wall %e s" $PY -m kdengine train --demo --run-dir /tmp/kd-demo \
  > "$OUT/demo.log" 2>&1 && echo "demo exit 0" >> "$OUT/summary.txt"
[ "$DEMO" = 1 ] && { $PY -m kdengine verdict /tmp/kd-demo >> "$OUT/summary.txt"; \
  echo "verdict exit $?" >> "$OUT/summary.txt"; }

# 2. a tiny Qwen2-family pair in HF layout, bf16, killed mid-run and resumed
$PY - <<'PY'
import sys, json, torch
sys.path.insert(0, "tests")
from conftest import write_byte_tokenizer
from kdengine.models import Decoder, DecoderConfig, save_decoder
for name, hidden, layers, seed in (("teacher", 256, 4, 1), ("student", 128, 2, 2)):
    cfg = DecoderConfig(vocab_size=257, hidden_size=hidden, intermediate_size=hidden * 3,
                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                        attention_bias=True, model_type="qwen2", tie_word_embeddings=True)
    m = Decoder(cfg); m.init_weights(torch.Generator().manual_seed(seed), std=0.05)
    save_decoder(m, f"/tmp/qw/{name}"); write_byte_tokenizer(__import__("pathlib").Path(f"/tmp/qw/{name}"))
PY
ARGS="--teacher /tmp/qw/teacher --student /tmp/qw/student --data kdengine --steps $STEPS --batch-size 8
 --seq-len 256 --lr 1e-3 --warmup-steps 20 --eval-every $EVERY --checkpoint-every $EVERY --log-every 10
 --dtype ${DTYPE:-bfloat16} --run-dir /tmp/kd-qw"
$PY -m kdengine train $ARGS > "$OUT/qwen_first.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  grep -q "checkpoint saved at step $((EVERY * 2))" /tmp/kd-qw/launch.log 2>/dev/null && break; sleep 0.2
done
kill -9 $pid; wait $pid; echo "first part killed (exit $?)" >> "$OUT/summary.txt"
$PY -m kdengine train --resume /tmp/kd-qw > "$OUT/qwen_resume.log" 2>&1
echo "resume exit $?" >> "$OUT/summary.txt"
$PY -m kdengine verdict /tmp/kd-qw >> "$OUT/summary.txt"; echo "verdict exit $?" >> "$OUT/summary.txt"
cp /tmp/kd-qw/launch.log "$OUT/qwen_launch.log"; cp /tmp/kd-qw/events.jsonl "$OUT/qwen_events.jsonl"
$PY -c "
from kdengine.models import load_decoder; import torch
m = load_decoder('/tmp/kd-qw/final'); print('final student loads:', sum(p.numel() for p in m.parameters()), 'params')
" >> "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
