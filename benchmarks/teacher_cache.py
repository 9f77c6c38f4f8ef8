"""The offline teacher cache on a GPU, as a user runs it (the real CLI in subprocesses):
cache-writing tokens/s and bytes/token for K = 16, 64, 128 (`kdengine cache-teacher`), and
training tokens/s from the cache (`kdengine train --teacher-cache`) against the live-teacher step
of the same setup (`kdengine train --teacher`).

Shapes: teacher Qwen3-4B, student Qwen3-0.6B (public config values below; the teacher has
~6.6x the student's parameters), random weights written as HF-layout bf16 checkpoints, a
byte-level tokenizer (its ids are inside the models' vocab), raw text of --tokens bytes (one
token a byte). Both training runs use the same batch, seq_len and compile settings; the cached
run reads the K = --train-k cache.

    python3 benchmarks/teacher_cache.py --out DIR           # H200: ~8 min
    python3 benchmarks/teacher_cache.py --tiny --out DIR    # CPU check of the script itself

Prints one JSON line per measurement and writes DIR/teacher_cache.json.
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

from pairs import QWEN3_0_6B, QWEN3_4B, QWEN3_COMMON  # noqa: E402 - benchmarks/pairs.py

TINY_TEACHER = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32)
TINY_STUDENT = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def write_model(path: Path, shape: dict, seed: int) -> int:
    import torch

    from kdengine.models import Decoder, DecoderConfig, save_decoder

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_byte_tokenizer

    model = Decoder(DecoderConfig(**{**QWEN3_COMMON, **shape}))
    model.init_weights(torch.Generator().manual_seed(seed), std=0.02)
    params = sum(p.numel() for p in model.parameters())
    save_decoder(model, path, dtype=torch.bfloat16)
    write_byte_tokenizer(path)
    del model
    return params


def write_text(path: Path, tokens: int) -> None:
    words = ("the teacher scores every row once and many students learn from what it "
             "wrote down while the sweep goes on over alpha temperature and rate ").split()
    out, size, i = [], 0, 0
    while size < tokens:
        line = " ".join(words[(i * 7 + k) % len(words)] for k in range(12)) + f" {i}\n"
        out.append(line)
        size += len(line)
        i += 1
    path.write_text("".join(out)[:tokens])


def env(work: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "KDENGINE_RUNS_DIR": str(work / "runs"), "KDENGINE_CACHE": str(work / "kcache")}


def _events(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]


def write_cache(args: argparse.Namespace, work: Path, k: int) -> dict:
    out = work / f"cache-k{k}{args.tag}"
    argv = [sys.executable, "-m", "kdengine", "cache-teacher", "--teacher", str(work / "teacher"),
            "--data", str(work / "data"), "--seq-len", str(args.seq_len), "--top-k", str(k),
            "--rows-per-batch", str(args.rows_per_batch), "--shard-rows", str(args.shard_rows),
            "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(work))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"measure": "cache_write", "k": k, "error": (proc.stdout + proc.stderr)[-3000:]}
    manifest = json.loads((out / "manifest.json").read_text())
    steps = [e for e in _events(out) if e["type"] == "step"]
    rows = manifest["rows"]["train"] + manifest["rows"]["val"]
    tokens = rows * args.seq_len
    # steady state: from the end of the first shard (compile, warm-up) to the last
    steady = None
    if len(steps) >= 3:
        first, last = steps[0], steps[-1]
        steady = (last["step"] - first["step"]) * args.seq_len / max(last["t"] - first["t"],
                                                                    1e-9)
    writes = [e["write_s"] for e in steps if "write_s" in e]
    return {"measure": "cache_write", "k": k, "tokens": tokens, "wall_s": round(wall, 1),
            "write_s_per_shard": round(statistics.median(writes), 3) if writes else None,
            "first_step_after_start_s": round(steps[0]["t"] - _events(out)[0]["t"], 1),
            "tokens_per_s_steady": round(steady) if steady else None,
            "tokens_per_s_overall": round(tokens / wall),
            "bytes_per_token": round(manifest["bytes"] / tokens, 2),
            "bytes_per_token_manifest": manifest["bytes_per_token"], "bytes": manifest["bytes"],
            "shards": manifest["shards"]}


def train(args: argparse.Namespace, work: Path, name: str, teacher: list[str]) -> dict:
    run_dir = work / f"run-{name}"
    argv = [sys.executable, "-m", "kdengine", "train", *teacher,
            "--student", str(work / "student"), "--data", str(work / "data"),
            "--steps", str(args.steps), "--batch-size", str(args.batch),
            "--seq-len", str(args.seq_len), "--lr", "1e-5", "--temperature", "2",
            "--eval-every", "0", "--eval-batches", "1", "--log-every", "1",
            "--checkpoint-every", "0", "--run-dir", str(run_dir)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(work))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"measure": "train", "run": name, "error": (proc.stdout + proc.stderr)[-3000:]}
    steps = [e for e in _events(run_dir) if e["type"] == "step"][args.warmup:]
    rate = statistics.median(e["tokens_per_s"] for e in steps)
    return {"measure": "train", "run": name, "tokens_per_s": round(rate),
            "step_s": round(args.batch * args.seq_len / rate, 4), "timed_steps": len(steps),
            "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--work", type=Path, default=None, help="where models are written")
    parser.add_argument("--tokens", type=int, default=1 << 19, help="data size (bytes=tokens)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows-per-batch", type=int, default=16, help="cache writer batch")
    parser.add_argument("--shard-rows", type=int, default=16)
    parser.add_argument("--ks", default="16,64,128")
    parser.add_argument("--train-k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--phases", default="write,train",
                        help="write (the caches), train (live against cached): either or both")
    parser.add_argument("--tag", default="", help="appended to each cache's directory name")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the models and data already in --work (another tree's run)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.tokens, args.seq_len, args.batch, args.rows_per_batch = 40_000, 64, 4, 8
        args.shard_rows, args.steps, args.warmup = 64, 6, 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "teacher-cache-work"
    work.mkdir(parents=True, exist_ok=True)
    teacher, student = (TINY_TEACHER, TINY_STUDENT) if args.tiny else (QWEN3_4B, QWEN3_0_6B)
    t0 = time.perf_counter()
    results = []
    if not (args.reuse and (work / "student" / "config.json").is_file()):
        sizes = {"teacher_params": write_model(work / "teacher", teacher, 1),
                 "student_params": write_model(work / "student", student, 2)}
        (work / "data").mkdir(exist_ok=True)
        write_text(work / "data" / "text.txt", args.tokens)
        setup = {"measure": "setup", **sizes,
                 "ratio": round(sizes["teacher_params"] / sizes["student_params"], 2),
                 "models_written_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(setup), flush=True)
        results.append(setup)
    phases = args.phases.split(",")
    for k in (int(k) for k in args.ks.split(",")) if "write" in phases else ():
        results.append(write_cache(args, work, k))
        print(json.dumps(results[-1]), flush=True)
    for name, teacher_args in () if "train" not in phases else (
            ("live", ["--teacher", str(work / "teacher")]),
            (f"cached-k{args.train_k}", ["--teacher-cache", str(work / f"cache-k{args.train_k}")])):
        results.append(train(args, work, name, teacher_args))
        print(json.dumps(results[-1]), flush=True)
    live, cached = (results[-2], results[-1]) if "train" in phases else ({"error": 0},) * 2
    if "error" not in live and "error" not in cached:
        speedup = {"measure": "speedup", "cached_over_live":
                   round(cached["tokens_per_s"] / live["tokens_per_s"], 2)}
        print(json.dumps(speedup), flush=True)
        results.append(speedup)
    (args.out / "teacher_cache.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
