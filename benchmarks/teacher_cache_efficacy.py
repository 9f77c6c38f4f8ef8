"""What a teacher cache costs in quality, at the CPU demo scale: the demo's byte-level teacher
distilled into the demo student for the same steps, from the live teacher and from caches of its
top-K (K = 8, 32, 128) and of K sampled ids (Sparse Logit Sampling), then every student scored
on the same held-out rows: its hard-label CE and its true KL to the live teacher at the run's T.

Every variant trains on the same rows in the same order (the cache's grid of windows,
kdengine.teacher.rows): the live variant runs the teacher on them each step, so the only
difference is the teacher's targets. The caches are written with `kdengine cache-teacher` on a
slice of the demo data (the Python standard library's sources, --data-bytes of them).

    python3 benchmarks/teacher_cache_efficacy.py              # ~8 min on 2 busy CPU cores
    python3 benchmarks/teacher_cache_efficacy.py --steps 10   # a quick look

Prints one JSON line per variant, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_data(directory: Path, max_bytes: int) -> None:
    """The first standard-library sources of at most 30 kB each, up to max_bytes: many small
    documents, so the held-out split (whole documents by name hash) stays a few percent."""
    from kdengine.data import demo_documents

    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for doc in demo_documents(6_000_000):
        if len(doc.text) <= 30_000 and total < max_bytes:
            (directory / doc.name).write_text(doc.text)
            total += len(doc.text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data-bytes", type=int, default=120_000)
    parser.add_argument("--ks", default="8,32,128")
    parser.add_argument("--sampled-k", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from kdengine import demo
    from kdengine.cli import main as kdengine
    from kdengine.config import demo_config
    from kdengine.loading import load_data, load_student, load_teacher
    from kdengine.runlog import RunLog
    from kdengine.teacher.provider import open_cached_teacher
    from kdengine.trainer import KDTrainer

    torch.set_num_threads(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-cache-efficacy-"))
    data = work / "data"
    if not data.exists():
        write_data(data, args.data_bytes)
    demo.teacher_path(lambda line: None)  # the demo teacher, trained once on this machine
    base = demo_config(data=str(data), steps=args.steps, eval_every=0, eval_batches=3,
                       device="cpu", dtype="float32")
    variants = [("live", None)]
    for k in (int(k) for k in args.ks.split(",")):
        variants.append((f"top-{k}", ["--top-k", str(k)]))
    variants.append((f"sampled-{args.sampled_k}", ["--top-k", str(args.sampled_k),
                                                   "--cache-targets", "sampled"]))
    cpu = torch.device("cpu")
    log_root = work / "logs"
    log_root.mkdir(exist_ok=True)
    results, logs = [], []
    live_eval = None  # the live teacher scoring every student on the same held-out rows
    for name, cache_args in variants:
        (log_root / name).mkdir(exist_ok=True)
        log = RunLog(log_root / name)
        config, write_s, size = base, 0.0, None
        if cache_args is not None:
            out = work / f"cache-{name}"
            t0 = time.perf_counter()
            assert kdengine(["cache-teacher", "--teacher", base.teacher, "--data", str(data),
                             "--seq-len", str(base.seq_len), "--device", "cpu",
                             "--out", str(out), *cache_args]) == 0
            write_s = time.perf_counter() - t0
            size = json.loads((out / "manifest.json").read_text())["bytes_per_token"]
            config = base.with_values(teacher="", teacher_cache=str(out))
        if config.teacher_cache:
            teacher, tokenizer = open_cached_teacher(config, log)
        else:
            teacher, tokenizer = load_teacher(config, cpu, torch.float32, log)
        torch.manual_seed(config.seed)
        student = load_student(config, cpu, tokenizer, teacher, log)
        splits = load_data(config, tokenizer)
        trainer = KDTrainer(config, teacher, student, splits, log, cpu, torch.float32)
        if live_eval is None:  # the live variant: the cache's rows, the teacher run each step
            rows = _row_samplers(config, splits)
            trainer.sampler.batch = lambda step, rows=rows: rows[0].batch(step)[:3]
            trainer.val_batches = [b[:3] for b in rows[1].fixed_batches(config.eval_batches)]
            live_eval = trainer
        t0 = time.perf_counter()
        trainer.run(evaluate_start=False)
        train_s = time.perf_counter() - t0
        # every student on the same held-out rows against the live teacher: CE and true KL
        live_eval.student, saved = student, live_eval.student
        scored = live_eval.evaluate()
        live_eval.student = saved
        result = {"variant": name, "steps": args.steps, "val_ce": round(scored["val_ce"], 4),
                  "val_kl_live_teacher": round(scored["val_kd"], 4),
                  "train_s": round(train_s, 1), "cache_write_s": round(write_s, 1),
                  "bytes_per_token": size}
        print(json.dumps(result), flush=True)
        results.append(result)
        logs.append(log)
    for log in logs:
        log.close()
    print(f"\n| targets | held-out CE | KL to live teacher (T={base.temperature:g}) | "
          "B/token | train s |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['val_ce']:.4f} | {r['val_kl_live_teacher']:.4f} | "
              f"{r['bytes_per_token'] or '-'} | {r['train_s']} |")
    return 0


def _row_samplers(config, splits):
    from kdengine.teacher.rows import RowSampler, cache_rows

    train, val = cache_rows(splits, config.seq_len)
    return (RowSampler(train, config.batch_size, config.seed),
            RowSampler(val, config.batch_size, config.seed, offset=len(train)))


if __name__ == "__main__":
    sys.exit(main())
