"""The sweep behind kdengine's KD defaults (docs/hyperparameters.md): the demo pair on held-out
CPython sources, forward KL at T=2 and T=4, reverse KL and JSD at T=2, all at alpha 0.3, against
CE-only (alpha 1), over seeds. Runs `python -m kdengine train --demo` as a user would, a few at a
time, and prints final held-out CE (val_ce) per arm: never val_loss, which mixes in the KD term
with a weight that differs between arms.

    OMP_NUM_THREADS=1 python benchmarks/defaults_sweep.py --steps 600 --seeds 1 2 --jobs 2 \
        --out /tmp/sweep [--arms fkl-T2 ce-only ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ARMS: dict[str, list[str]] = {
    "fkl-T2": ["--loss", "forward_kl", "--temperature", "2", "--alpha", "0.3"],
    "fkl-T4": ["--loss", "forward_kl", "--temperature", "4", "--alpha", "0.3"],
    "rkl-T2": ["--loss", "reverse_kl", "--temperature", "2", "--alpha", "0.3"],
    "jsd-T2": ["--loss", "jsd", "--temperature", "2", "--alpha", "0.3"],
    "fkl-T2-a0.5": ["--loss", "forward_kl", "--temperature", "2", "--alpha", "0.5"],
    "ce-only": ["--alpha", "1.0"],
}


def final_eval(run_dir: Path) -> dict:
    last: dict = {}
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "eval":
            last = event
    return last


def run_arm(out: Path, arm: str, seed: int, steps: int, eval_batches: int) -> tuple[str, int, dict]:
    run_dir = out / f"{arm}-s{seed}"
    if not (run_dir / "final").exists():
        cmd = [sys.executable, "-m", "kdengine", "train", "--demo", "--steps", str(steps),
               "--seed", str(seed), "--eval-every", str(steps // 4), "--eval-batches",
               str(eval_batches), "--checkpoint-every", str(steps), "--run-dir", str(run_dir),
               "--run-name", run_dir.name, *ARMS[arm]]
        threads = os.environ.get("OMP_NUM_THREADS", "1")  # 2 runs on 2 cores: one thread each
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": threads})
    return arm, seed, final_eval(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_arm(args.out, j[0], j[1], args.steps,
                                                  args.eval_batches), jobs))
    by_arm: dict[str, list[float]] = {}
    for arm, _seed, ev in results:
        by_arm.setdefault(arm, []).append(ev["val_ce"])
    base = statistics.mean(by_arm.get("ce-only", [float("nan")]))
    print(f"{'arm':12} " + " ".join(f"seed {s:<4}" for s in args.seeds) + "   mean   vs CE-only")
    for arm, ces in by_arm.items():
        mean = statistics.mean(ces)
        print(f"{arm:12} " + " ".join(f"{c:9.4f}" for c in ces)
              + f" {mean:7.4f}  {mean - base:+.4f}")
    print(f"({len(jobs)} runs, {args.steps} steps each, {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
