"""An on-policy KD step end to end, as a user runs it: `kdengine train --lmbda 1` through its CLI,
with the step's time split (generate / teacher forward / student forward+backward+update) read
from the engine's own step events.

Shapes: teacher Qwen2.5-1.5B, student Qwen2.5-0.5B (public config values below), random
weights written as HF-layout safetensors checkpoints; a byte-level tokenizer (the ids it emits
are inside the models' vocab), prompt/completion JSONL of ~128-token prompts. With random weights
no row meets an EOS, so every completion is max_new_tokens long: the generation numbers are for
full-length completions.

    python3 benchmarks/onpolicy_step.py --out DIR            # H200: batch 64, 256 new tokens
    python3 benchmarks/onpolicy_step.py --tiny --out DIR     # CPU check of the script itself

Prints one JSON line per run and writes DIR/onpolicy_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from pairs import QWEN2_COMMON, QWEN25_0_5B, QWEN25_1_5B  # noqa: E402

TINY_TEACHER = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
TINY_STUDENT = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)


def write_model(path: Path, shape: dict, seed: int) -> None:
    import torch

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_byte_tokenizer

    model = Decoder(DecoderConfig(**shape, **QWEN2_COMMON))
    model.init_weights(torch.Generator().manual_seed(seed), std=0.02)
    save_decoder(model, path, dtype=torch.bfloat16)
    write_byte_tokenizer(path)
    del model


def write_prompts(path: Path, count: int, prompt_chars: int) -> None:
    words = ("the teacher grades every token the student writes while the run goes on and "
             "the student learns to write what the teacher would ").split()
    rows = []
    for i in range(count):
        text = " ".join(words[(i + k) % len(words)] for k in range(64))[:prompt_chars]
        rows.append(json.dumps({"prompt": f"{i}: {text}", "completion": " ok."}))
    path.write_text("\n".join(rows) + "\n")


def run(args: argparse.Namespace, work: Path, name: str, extra: list[str]) -> dict:
    run_dir = work / name
    argv = [sys.executable, "-m", "kdengine", "train", "--teacher", str(work / "teacher"),
            "--student", str(work / "student"), "--data", str(work / "prompts.jsonl"),
            "--steps", str(args.steps), "--batch-size", str(args.batch),
            "--seq-len", str(args.seq_len), "--max-new-tokens", str(args.new_tokens),
            "--lr", "1e-5", "--eval-every", "0", "--eval-batches", "1",
            "--eval-prompts", str(args.batch), "--log-every", "1", "--checkpoint-every", "0",
            "--sample-every", "0", "--temperature", "1", "--loss", "reverse_kl",
            "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "KDENGINE_RUNS_DIR": str(work / "runs"), "KDENGINE_CACHE": str(work / "cache")}
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        return {"run": name, "error": (out.stdout + out.stderr)[-3000:]}
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    timed = [e for e in steps if e.get("gen_s") is not None][args.warmup:]
    first = next(e for e in events if e["type"] == "step")
    started = next(e for e in events if e["type"] == "run_started")
    result = {"run": name, "wall_s": round(wall, 1), "steps": len(steps),
              "first_step_after_start_s": round(first["t"] - started["t"], 1),
              # where the start went, as the first step event splits it (issue 16)
              **{key: first[key] for key in ("setup_s", "eval0_s", "first_step_s",
                                             "compile_s", "trace_s", "compile_cache_hits",
                                             "compile_cache_misses") if key in first}}
    if timed:
        def med(key: str) -> float:
            return round(statistics.median(e[key] for e in timed), 4)

        step_s = statistics.median(e["gen_s"] + e["teacher_s"] + e["student_s"] for e in timed)
        result.update(step_s=round(step_s, 4), gen_s=med("gen_s"), teacher_s=med("teacher_s"),
                      student_s=med("student_s"), gen_tokens_per_s=med("gen_tokens_per_s"),
                      gen_len=med("gen_len"), tokens_per_s=med("tokens_per_s"),
                      timed_steps=len(timed))
    else:  # an off-policy run: the plain step
        plain = steps[args.warmup:]
        result.update(step_s=round(statistics.median(
            args.batch * args.seq_len / e["tokens_per_s"] for e in plain), 4),
            tokens_per_s=round(statistics.median(e["tokens_per_s"] for e in plain)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--work", type=Path, default=None, help="where models are written")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", default="on_policy,off_policy",
                        help="runs in order: on_policy, off_policy, and either again with "
                             "'_again' (the same flags and compile cache: a warm start)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.new_tokens, args.prompt_chars, args.steps, args.warmup = 4, 16, 24, 4, 1
    args.seq_len = args.prompt_chars + 16 + args.new_tokens  # the "N: " prefix fits
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "onpolicy-work"
    work.mkdir(parents=True, exist_ok=True)
    teacher, student = (TINY_TEACHER, TINY_STUDENT) if args.tiny else (QWEN25_1_5B, QWEN25_0_5B)
    t0 = time.perf_counter()
    write_model(work / "teacher", teacher, 1)
    write_model(work / "student", student, 2)
    write_prompts(work / "prompts.jsonl", max(args.batch * 8, 256), args.prompt_chars)
    print(json.dumps({"models_written_s": round(time.perf_counter() - t0, 1)}), flush=True)
    results = []
    flags = {"on_policy": ["--lmbda", "1"], "off_policy": ["--lmbda", "0"]}
    for name in args.cases.split(","):
        result = run(args, work, name, flags[name.removesuffix("_again")])
        print(json.dumps(result), flush=True)
        results.append(result)
    (args.out / "onpolicy_step.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
