"""KD training throughput on public teacher -> student pairs, side by side, in one device call.

Per pair (benchmarks/pairs.py: public configs, random weights written as HF-layout bf16
checkpoints with a byte-level tokenizer), one setup for all: batch 4 x seq 2048, alpha 0.3,
T = 4, forward KL, bf16 (teacher bf16; student fp32 masters under bf16 autocast), AdamW fused,
clip 1.0. Variants, in the order they run:

  cli        `kdengine train` end to end through its CLI (a subprocess), step time from its own
             step events, first run of the pair: compile caches cold
  cli-warm   the same again: the caches of the first run warm (second-run start)
  cli-warm-env  a third run, warm too, with --warm-env's variables set (default
             TORCH_WARM_POOL=0: Inductor's compile workers start on demand, not at the start)
  cli-ckpt   on --ckpt-pairs (default the Llama pair), in cli-warm's place: the second run,
             with --checkpoint-every N until two checkpoints are written: their events'
             stall_s/write_s and the step after each (left out of its median)
  cli-fp8    the same with --teacher-dtype float8 (skipped with a note if the CLI lacks it)
  cli-fp8s   the same with the student's matmuls in FP8 too (--student-flags added)
  cli-ranks  `torchrun --nproc-per-node N kdengine train` (N = --ranks, default every GPU here):
             the same per-GPU batch, so a global batch N x B; its scaling efficiency is its
             tokens/s over N x cli's (issue 8's acceptance: >= 0.9 on 2 GPUs)
  cli-ranks-fp8  the same with the teacher in FP8 (--fp8-flags), against N x cli-fp8
  liger      transformers' models + Liger's model kernels (RoPE, RMSNorm, SwiGLU) and
             LigerFusedLinearJSDLoss(beta=0: forward KL) on the last hidden states
  naive      transformers' models, full logits of both, fp32 log_softmax of both, KL + CE
  bare       kdengine's KDTrainer.train_step in this process (no CLI, no data pipeline)
  bare-fp8   the same with the teacher quantized to FP8 (kdengine.models.fp8.quantize_teacher)
  bare-fp8-torch  bare-fp8 with each block's norms, SwiGLU and their quantization left to
             Inductor, not the one-pass Triton kernels the engine uses (what they save)
  bare-fp8s  and the student's matmuls in FP8 too (kdengine.models.fp8_train.use_fp8_matmuls)

The CLI runs are stopped with SIGTERM (a cancel) once they have logged the steps needed, so no
final checkpoint is written. Each pair gets its own KDENGINE_CACHE under the work dir (the
engine keeps its compiled artifacts there), so `cli` starts cold and the later runs of the pair
share its caches. A phase prints its estimate before and its elapsed time after; with --budget-s,
a phase that would not fit (keeping the first two variants of the later pairs) is skipped with
a note. A failing variant records its error tail and the others go on.

    benchmarks/run_kd_pairs.sh                                  # H200: results under $OUT
    python benchmarks/kd_pairs.py --tiny --device cpu --out /tmp/x   # same code path, tiny, fp32

Writes OUT/kd_pairs.json and OUT/kd_pairs.md (tables ready for docs/performance.md).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import kd_throughput as kt  # benchmarks/: the ceiling, the timing and optimizer helpers
import pairs as P
import torch

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("cli", "cli-warm", "cli-warm-env", "cli-ckpt", "cli-fp8", "cli-fp8s", "cli-ranks",
            "cli-ranks-fp8", "liger", "naive", "bare", "bare-fp8", "bare-fp8-torch", "bare-fp8s")
RANKS_OF = {"cli-ranks": "cli", "cli-ranks-fp8": "cli-fp8"}  # each against its one-GPU run
ESSENTIAL = ("cli", "cli-fp8", "cli-fp8s", "liger")  # kept in the budget for the later pairs
GIB = 2**30


def log(text: str) -> None:
    print(text, flush=True)


# -- the plan: phases, estimates, the budget ------------------------------------------------------

class Pair:
    """One teacher -> student pair: its configs, sizes and the directories of this run."""

    def __init__(self, name: str, tiny: bool, work: Path) -> None:
        self.name = name
        self.teacher_name, self.student_name = P.PAIRS[name]
        pick = P.tiny if tiny else (lambda n: P.MODELS[n])
        self.teacher_cfg, self.student_cfg = pick(self.teacher_name), pick(self.student_name)
        self.family = P.family(self.teacher_cfg)
        self.work = work / name
        self.teacher_dir, self.student_dir = self.work / "teacher", self.work / "student"
        self.caches = self.work / "caches"
        self.pt = P.matmul_params(self.teacher_cfg)
        self.ps = P.matmul_params(self.student_cfg)
        self.dense_flops_per_token = 2 * self.pt + 6 * self.ps

    @staticmethod
    def params(cfg: dict[str, Any]) -> int:
        """Every weight but norms and biases: the blocks' and the head's matmuls, and the
        embedding's own table where the head does not share it."""
        untied_embed = 0 if cfg["tie_word_embeddings"] else cfg["vocab_size"] * cfg["hidden_size"]
        return P.matmul_params(cfg) + untied_embed

    @property
    def weight_bytes(self) -> int:  # the bf16 checkpoints
        return 2 * (self.params(self.teacher_cfg) + self.params(self.student_cfg))

    @property
    def checkpoint_bytes(self) -> int:
        """fp32 weights (a tied head written again) and AdamW's two moments
        (kdengine.diskspace.Footprint)."""
        cfg = self.student_cfg
        s, tied = self.params(cfg), cfg["tie_word_embeddings"]
        return 4 * (s + (cfg["vocab_size"] * cfg["hidden_size"] if tied else 0)) + 8 * s

    def env(self) -> dict[str, str]:
        """The engine keeps its data stores and compiled artifacts (Inductor, AOTAutograd,
        Triton) under KDENGINE_CACHE unless TORCHINDUCTOR_CACHE_DIR is set: one per pair."""
        return {"KDENGINE_CACHE": str(self.caches)}


class Plan:
    """Estimates per phase (seconds, from FLOPs at a guessed efficiency and guessed compile
    times, scaled by what earlier pairs measured) and the time budget."""

    # share of the matmul ceiling each step reaches (issue 16's H200 numbers, rounded; only the
    # estimates use it)
    EFFICIENCY = {"cli": 0.55, "cli-warm": 0.55, "cli-warm-env": 0.55, "cli-fp8": 0.65,
                  "cli-fp8s": 0.75, "cli-ckpt": 0.55, "cli-ranks": 0.5, "cli-ranks-fp8": 0.6,
                  "bare": 0.55, "bare-fp8": 0.65, "bare-fp8-torch": 0.65,
                  "bare-fp8s": 0.75, "liger": 0.45, "naive": 0.3}

    def __init__(self, args: argparse.Namespace, ceiling: float) -> None:
        self.args, self.ceiling = args, ceiling
        self.start = time.monotonic()
        self.scale: dict[str, float] = {}  # measured / estimated, per variant, from earlier pairs

    def step_s(self, pair: Pair, variant: str) -> float:
        tokens = self.args.batch * self.args.seq
        return tokens * pair.dense_flops_per_token / (self.EFFICIENCY[variant] * self.ceiling)

    def raw_estimate(self, pair: Pair, phase: str) -> float:
        a = self.args
        if a.tiny:
            return {"write": 1, "cli": 8, "cli-warm": 8, "cli-warm-env": 8, "cli-fp8": 8,
                    "cli-fp8s": 8, "cli-ckpt": 8, "cli-ranks": 15, "cli-ranks-fp8": 15,
                    "liger": 3, "naive": 3, "bare": 3,
                    "bare-fp8": 3, "bare-fp8-torch": 3, "bare-fp8s": 3}[phase]
        if phase == "write":
            return 2 + pair.weight_bytes / 1.5e9
        load = pair.weight_bytes / 2e9
        lt = pair.teacher_cfg["num_hidden_layers"]
        ls = pair.student_cfg["num_hidden_layers"]
        # first step after start, as measured on an H200 with the teacher compiled per block
        # (issue 16, round 4, Llama-3.2): cold 20-34 s, both FP8 cold 24-36 s, warm 8-11 s
        cold = 14 + 0.3 * (lt + ls) + load
        warm = 8 + 0.05 * (lt + ls) + load
        fp8 = 12 + 0.3 * lt + 0.1 * ls + load  # the student's graphs are in the cache
        teacher_warm = "cli-fp8" in a.variants  # cli-fp8 runs before cli-fp8s
        fp8s = 12 + (0.1 if teacher_warm else 0.3) * lt + 0.4 * ls + load
        step = self.step_s(pair, phase)
        cli_steps = a.cli_warmup + a.cli_steps + 1  # + the step-0 eval batch
        ckpt_steps = 2 * a.ckpt_every + 2
        inproc_steps = (a.warmup + a.steps + (3 if a.kernel_time else 0)
                        + (3 if a.profile else 0))
        return {
            "cli": cold + cli_steps * step + 3,
            "cli-warm": warm + cli_steps * step + 3,
            "cli-warm-env": warm + cli_steps * step + 3,
            "cli-fp8": fp8 + cli_steps * step + 3,
            "cli-fp8s": fp8s + cli_steps * step + 3,
            "cli-ckpt": warm + ckpt_steps * step + 2 * pair.checkpoint_bytes / 2e9 + 3,
            # torchrun's start, and the FSDP2 student's blocks compiled anew (other graphs)
            "cli-ranks": cold + 10 + cli_steps * step + 3,
            "cli-ranks-fp8": fp8 + 10 + cli_steps * step + 3,
            "liger": 6 + 1.5 * load + 12 + inproc_steps * step,
            "naive": 4 + 1.5 * load + inproc_steps * step,
            "bare": 4 + load + 8 + 0.1 * (lt + ls) + inproc_steps * step,
            "bare-fp8": 4 + load + 8 + 0.4 * lt + inproc_steps * step,
            "bare-fp8-torch": 4 + load + 8 + 0.4 * lt + inproc_steps * step,
            "bare-fp8s": 4 + load + 8 + 0.4 * ls + inproc_steps * step,
        }[phase]

    def estimate(self, pair: Pair, phase: str) -> float:
        return self.raw_estimate(pair, phase) * self.scale.get(phase, 1.0)

    def learn(self, pair: Pair, phase: str, elapsed: float) -> None:
        raw = self.raw_estimate(pair, phase)
        if raw > 0:
            self.scale[phase] = min(max(elapsed / raw, 0.5), 3.0)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.args.budget_s - self.elapsed() if self.args.budget_s else float("inf")

    def reserve(self, later: list[Pair], variants: list[str]) -> float:
        """Seconds kept for the later pairs' writing and essential variants."""
        return sum(self.estimate(p, v) for p in later
                   for v in ("write", *[v for v in ESSENTIAL if v in variants]))


# -- `kdengine train` through its CLI -------------------------------------------------------------

def cli_flags_known() -> str:
    out = subprocess.run([sys.executable, "-m", "kdengine", "train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, env=subprocess_env({}))
    return out.stdout + out.stderr


# this process's environment as it started: the in-process bare step's engine points
# TORCHINDUCTOR_CACHE_DIR at its pair's cache, which must not leak into the next pair's runs
START_ENV = dict(os.environ)


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    path = START_ENV.get("PYTHONPATH")
    return {**START_ENV, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), **extra}


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece may be a torn line
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def cli_run(args, pair: Pair, data: Path, name: str, extra: list[str], timeout: float,
            ckpt_every: int = 0, checkpoints: int = 0, profile_start: bool = False,
            env: dict[str, str] | None = None, ranks: int = 1) -> dict[str, Any]:
    """One `kdengine train` subprocess, stopped with SIGTERM once it has logged what is needed:
    warm-up + timed steps, or `checkpoints` checkpoints every `ckpt_every` steps and the step
    after the last. With one checkpoint the run's --steps ends right after it, so the CLI
    plans for two checkpoints on disk (that one and the final), not three. `profile_start`:
    py-spy samples the engine from just after its launch to its first step event
    (StartProfile). With --step-profile, py-spy samples it over its timed steps instead (from
    the warm-up's last step event to the stop: where the host's time goes in the steady state,
    OUT/steps_<pair>_<name>.txt). `ranks` > 1: under torchrun, that many processes, each with
    --batch rows (the global batch ranks x --batch)."""
    run_dir = pair.work / f"run-{name}"
    needed = checkpoints * ckpt_every + 1 if checkpoints else args.cli_warmup + args.cli_steps
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(ranks)] if ranks > 1 else []
    argv = [sys.executable, *launcher, "-m", "kdengine", "train",
            "--teacher", str(pair.teacher_dir), "--student", str(pair.student_dir),
            "--data", str(data), "--steps", str(needed + (100 if checkpoints != 1 else 0)),
            "--batch-size", str(args.batch * ranks), "--seq-len", str(args.seq), "--lr", "1e-5",
            "--temperature", str(args.temperature), "--alpha", str(args.alpha),
            "--loss", "forward_kl", "--eval-every", "0", "--eval-batches", "1",
            "--log-every", "1", "--checkpoint-every", str(ckpt_every),
            "--device", args.device, "--dtype", args.dtype_name, "--run-dir", str(run_dir),
            *extra]
    output = pair.work / f"{name}.out"
    launched = time.time()
    with open(output, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env({**pair.env(), **(env or {})}),
                                start_new_session=True)
    deadline, stopped, timed_out = time.monotonic() + timeout, False, False
    sampler = StartProfile.attach(proc.pid, args.out / f"start_{pair.name}") if profile_start \
        else None
    steps_sampler: StartProfile | None = None
    events: list[dict[str, Any]] = []
    while proc.poll() is None:
        time.sleep(0.25)
        events = read_events(run_dir / "events.jsonl")
        if sampler is not None and any(e.get("type") == "step" for e in events):
            sampler.stop()
        if (args.step_profile and steps_sampler is None and ranks == 1 and not checkpoints
                and sum(e.get("type") == "step" for e in events) >= args.cli_warmup):
            steps_sampler = StartProfile.attach(proc.pid,
                                                args.out / f"steps_{pair.name}_{name}")
        if not stopped and enough(events, needed, checkpoints):
            if steps_sampler is not None:
                steps_sampler.stop()
            proc.send_signal(signal.SIGTERM)  # a cancel: the engine stops between steps
            stopped, deadline = True, time.monotonic() + 120
        elif time.monotonic() > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the engine and its workers
            proc.wait()
    wall = time.time() - launched
    events = read_events(run_dir / "events.jsonl")
    result: dict[str, Any] = {"argv": " ".join(argv[1:]), "exit_code": proc.returncode,
                              "wall_s": round(wall, 1), **({"env": env} if env else {}),
                              **({"ranks": ranks} if ranks > 1 else {})}
    if sampler is not None:
        result["start_profile"] = sampler.stop()
    if steps_sampler is not None:
        result["steps_profile"] = steps_sampler.stop()
    if timed_out or not enough(events, needed, checkpoints):
        tail = output.read_text()[-2500:] if output.exists() else ""
        launch = run_dir / "launch.log"
        if launch.exists():
            tail += "\n--- launch.log\n" + launch.read_text()[-2500:]
        why = (f"timed out after {timeout:.0f} s" if timed_out else
               f"exited {proc.returncode} before {needed} steps")
        result.update(error=f"{why}: {tail.strip()}"[-5000:])
        if proc.returncode == 2 and "--teacher-dtype" in " ".join(extra):
            result["skipped"] = "the CLI refused the flag: " + last_line(tail)
        shutil.rmtree(run_dir, ignore_errors=True)
        return result
    result.update(summarize_steps(events, args, launched, needed, ckpt_every,
                                  tokens=args.batch * ranks * args.seq))
    if checkpoints:
        result["checkpoints_planned"] = checkpoints
        result["resume"] = resume_check(run_dir, events, pair, timeout)
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of a 1B student: ~15 GB each
    return result


def resume_check(run_dir: Path, events: list[dict[str, Any]], pair: Pair,
                 timeout: float) -> dict[str, Any]:
    """`kdengine train --resume` from the run's last checkpoint (written in the background from
    a snapshot): the loss of its first step against the first run's same step (bit for bit
    would need deterministic CUDA kernels, which runs leave off: within 1e-3 relative)."""
    losses = {e["step"]: e["loss"] for e in events if e.get("type") == "step"}
    ckpts = [e["step"] for e in events if e.get("type") == "checkpoint"]
    if not ckpts or ckpts[-1] + 1 not in losses:  # --resume takes the newest on disk
        return {"error": "the first run logged no step after its last checkpoint to compare"}
    step = ckpts[-1] + 1
    argv = [sys.executable, "-m", "kdengine", "train", "--resume", str(run_dir)]
    launched = time.monotonic()
    with open(pair.work / "resume.out", "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(pair.env()), start_new_session=True)
    seen: dict[str, Any] | None = None
    while proc.poll() is None and time.monotonic() - launched < min(timeout, 240):
        time.sleep(0.25)
        later = read_events(run_dir / "events.jsonl")[len(events):]
        seen = next((e for e in later if e.get("type") == "step"), None)
        if seen is not None:
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if seen is None or seen["step"] != step:
        tail = (pair.work / "resume.out").read_text()[-1500:]
        return {"error": f"no step {step} after --resume (exit {proc.returncode}): {tail}"}
    rel = abs(seen["loss"] - losses[step]) / max(abs(losses[step]), 1e-9)
    return {"from_step": ckpts[-1], "step": step, "loss_first_run": losses[step],
            "loss_resumed": seen["loss"], "relative_difference": rel, "ok": rel <= 1e-3,
            "seconds_to_step": round(time.monotonic() - launched, 1)}


class StartProfile:
    """py-spy (the carried wheel, benchmarks/gpu_env.sh) attached to a starting engine, idle
    time included, stopped at the engine's first step event: where a start's seconds go.
    Attached by pid (a py-spy parent would take the engine down when it stops); where it cannot
    attach (no ptrace), the run goes on unprofiled and says why."""

    RATE = 100  # samples a second

    def __init__(self, proc: subprocess.Popen | None, path: Path, why: str = "",
                 pid: int = 0) -> None:
        self.proc, self.path, self.why, self.result, self.pid = proc, path, why, None, pid

    @classmethod
    def attach(cls, pid: int, path: Path) -> StartProfile:
        spy = shutil.which("py-spy")
        if spy is None:
            return cls(None, path, "py-spy not installed")
        raw = path.parent / f"{path.name}.raw"
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--idle", "--threads",
                                 "--nonblocking", "-r", str(cls.RATE), "-f", "raw",
                                 "-o", str(raw)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return cls(proc, path, pid=pid)

    def stop(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result
        if self.proc is None:
            self.result = {"error": self.why}
            return self.result
        busy = {"loadavg": Path("/proc/loadavg").read_text().split()[:3],
                "engine_children": children(self.pid)}  # e.g. Inductor's compile workers
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its samples and detaches
        try:
            said = self.proc.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            said = self.proc.communicate()[0].decode(errors="replace")
        raw = self.path.parent / f"{self.path.name}.raw"
        if not raw.exists():
            self.result = {"error": f"py-spy wrote nothing: {said.strip()[-500:]}"}
            return self.result
        text = summarize_stacks(raw.read_text(), self.RATE)
        summary = self.path.parent / f"{self.path.name}.txt"
        summary.write_text(text)
        self.result = {"file": summary.name, **busy,
                       "top": text.splitlines()[:3]}
        return self.result


def children(pid: int) -> list[str]:
    """The command names of `pid`'s child processes (Linux /proc)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.find("(") + 1:text.rfind(")")], text[text.rfind(")") + 2:].split()
        if int(rest[1]) == pid:
            names.append(name)
    return names


def summarize_stacks(raw: str, rate: int, top: int = 90) -> str:
    """py-spy's raw output (`thread;frame;frame... count` lines, outermost first) as seconds
    per frame, inclusive, for the thread with the most samples (the engine's main thread), then
    for each other thread with at least a tenth of its samples (autograd's device thread, where
    backward's host work runs while the main thread waits in `backward()`)."""
    threads: dict[str, list[tuple[list[str], int]]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        threads.setdefault(frames[0], []).append((frames[1:], int(count)))
    if not threads:
        return "no samples\n"
    ranked = sorted(threads.items(), key=lambda kv: -sum(c for _, c in kv[1]))
    most = sum(c for _, c in ranked[0][1])
    lines: list[str] = []
    for index, (name, stacks) in enumerate(ranked):
        total = sum(c for _, c in stacks)
        if index and total < most / 10:
            break
        lines += _thread_summary(name, stacks, rate, top if not index else top // 3)
    return "\n".join(lines) + "\n"


def _thread_summary(name: str, stacks: list[tuple[list[str], int]], rate: int,
                    top: int) -> list[str]:
    total = sum(c for _, c in stacks)
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{name}: {total / rate:.1f} s sampled at {rate}/s (idle included)",
             "", "inclusive s  frame"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{count / rate:10.2f}  {frame[:200]}")
    lines += ["", "own s       frame (innermost)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:max(10, top // 2)]:
        lines.append(f"{count / rate:10.2f}  {frame[:200]}")
    return [*lines, ""]


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


def enough(events: list[dict[str, Any]], needed: int, checkpoints: int) -> bool:
    steps = [e["step"] for e in events if e.get("type") == "step"]
    if checkpoints:
        ckpts = [e["step"] for e in events if e.get("type") == "checkpoint"]
        return (len(ckpts) >= checkpoints and bool(steps)
                and max(steps) > ckpts[checkpoints - 1])
    return bool(steps) and max(steps) >= needed


def summarize_steps(events, args, launched: float, needed: int,
                    ckpt_every: int, tokens: int) -> dict[str, Any]:
    """Step time (steps after the warm-up up to `needed`, less those right after a checkpoint),
    start-up, peak memory, stage times and checkpoint stalls from a run's events; `tokens` a
    step (all ranks')."""
    steps = [e for e in events if e.get("type") == "step"]
    ckpts = [e for e in events if e.get("type") == "checkpoint"]
    after_ckpt = {c["step"] + 1 for c in ckpts}
    timed = [e for e in steps if args.cli_warmup < e["step"] <= needed
             and e["step"] not in after_ckpt]
    times = [tokens / e["tokens_per_s"] for e in timed]
    first = steps[0]
    out: dict[str, Any] = {**step_stats(times, tokens), "timed_steps": len(times),
                           "steps_ms": [round(1e3 * t, 1) for t in times],
                           "first_loss": first.get("loss"),
                           "last_loss": timed[-1].get("loss") if timed else None,
                           "last_step": timed[-1]["step"] if timed else None}
    span = [e for e in timed if "t" in e]
    if len(span) > 2 and span[-1]["step"] - span[0]["step"] == len(span) - 1:
        # a cross-check of the per-step times: the step events' own clock over the stretch
        # (a loop that reads each step's loss one step late still emits one event a step)
        out["span_tokens_per_s"] = round(tokens * (len(span) - 1) / (span[-1]["t"] - span[0]["t"]))
    if "startup_s" in first:
        out.update(startup_s=first["startup_s"], startup_from="the step event's startup_s")
        out.update({k: first[k] for k in ("compile_cache_hits", "compile_cache_misses",
                                          "compile_s", "trace_s", "setup_s", "eval0_s",
                                          "first_step_s") if k in first})
    else:
        out.update(startup_s=round(first["t"] - launched, 2),
                   startup_from="launch to the first step event")
    peaks = [e["gpu_mem_peak"] for e in steps if "gpu_mem_peak" in e]
    if peaks:
        out["peak_gib"] = max(peaks) / GIB
    mfu = [e["mfu"] for e in timed if "mfu" in e]
    if mfu:
        out["engine_mfu_gauge"] = statistics.median(mfu)
    out["stages_s"] = {e["stage"]: e.get("elapsed") for e in events
                       if e.get("type") == "stage" and e.get("state") == "done"}
    if ckpt_every:
        by_step = {e["step"]: e for e in steps}
        rows = []
        for c in ckpts:  # (a run that reached its --steps adds the final checkpoint)
            row = {k: c[k] for k in ("step", "stall_s", "write_s") if k in c}
            nxt, this = by_step.get(c["step"] + 1), by_step.get(c["step"])
            if nxt:
                row["next_step_ms"] = round(1e3 * tokens / nxt["tokens_per_s"], 1)
            if nxt and this:  # host time between the two steps: a synchronous write shows here
                row["gap_s"] = round(nxt["t"] - this["t"] - tokens / nxt["tokens_per_s"], 3)
            row["event_after_step_s"] = round(c["t"] - this["t"], 3) if this else None
            rows.append(row)
        out["checkpoints"] = rows
        out["checkpoint_every"] = ckpt_every
    return out


def step_stats(times: list[float], tokens: int) -> dict[str, Any]:
    if not times:
        return {}
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    med = statistics.median(times)
    return {"tokens_per_s": tokens / med, "step_ms": med * 1e3, "p25_ms": q[0] * 1e3,
            "p75_ms": q[2] * 1e3}


# -- in this process: transformers (+ Liger), naive, kdengine's bare step -------------------------

def timed_steps(step, args, device) -> dict[str, Any]:
    """Warm-up steps (compilation happens here), then timed ones; the peak is over the whole
    variant (models loaded, warm-up, timed steps), as the engine's gpu_mem_peak is."""
    losses = [step() for _ in range(args.warmup)]
    kt.sync(device)
    times = []
    for _ in range(args.steps):
        kt.sync(device)
        t0 = time.perf_counter()
        losses.append(step())
        kt.sync(device)
        times.append(time.perf_counter() - t0)
    out = {**step_stats(times, args.batch * args.seq), "timed_steps": len(times),
           "first_loss": losses[0], "last_loss": losses[-1]}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        if args.kernel_time:
            out["kernel_ms"] = kt.kernel_seconds(step, device) * 1e3
    return out


def hf_model(path: Path, device: torch.device, dtype: torch.dtype):
    """transformers' model class for the config.json at `path`, with its safetensors weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    state = load_file(str(path / "model.safetensors"), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: transformers' {type(model).__name__} does not match the "
                         f"checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.config.use_cache = False
    return model


def hf_pair(pair: Pair, device, dtype):
    teacher = hf_model(pair.teacher_dir, device, dtype).eval().requires_grad_(False)
    student = hf_model(pair.student_dir, device, torch.float32).train()
    return teacher, student


def run_naive(args, pair: Pair, device, dtype, ids, labels) -> dict[str, Any]:
    teacher, student = hf_pair(pair, device, dtype)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = kt.make_optimizer(params, device)
    T, alpha = args.temperature, args.alpha
    mask = labels != kt.IGNORE_INDEX

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with kt.autocast(device, dtype):
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits
            s_logits = student(input_ids=ids, use_cache=False).logits
        loss = kt.naive_kd_loss(s_logits, t_logits, labels, mask, T, alpha)
        return kt.optimizer_step(loss, params, opt)

    return timed_steps(step, args, device)


def run_liger(args, pair: Pair, device, dtype, ids, labels) -> dict[str, Any]:
    """Liger's model kernels patched into transformers' classes of the pair's family (restored
    after), its fused JSD loss at beta=0; if the kernels fail here, the loss alone on plain
    models, with a note saying so."""
    import liger_kernel.transformers as liger  # absent: skipped
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    apply = getattr(liger, f"apply_liger_kernel_to_{pair.family}")
    modeling = importlib.import_module(
        f"transformers.models.{pair.family}.modeling_{pair.family}")
    saved = dict(vars(modeling))

    def restore() -> None:
        for key, value in saved.items():
            if vars(modeling).get(key) is not value:
                setattr(modeling, key, value)
        for key in set(vars(modeling)) - set(saved):
            delattr(modeling, key)

    # beta=0 is forward KL, KL(teacher || student), in Liger 0.8.5's jsd_loss.py; Liger does not
    # scale by T^2, so the soft weight carries it: the same objective as the other variants
    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=args.alpha,
                                      weight_soft_loss=(1 - args.alpha) * args.temperature**2,
                                      beta=0.0, temperature=args.temperature,
                                      chunk_size=args.liger_chunk)
    try:
        try:
            out = _liger_steps(args, pair, device, dtype, ids, labels, loss_fn, apply)
            out["kernels"] = "RoPE, RMSNorm, SwiGLU patched into both models"
            return out
        except (ModuleNotFoundError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - measure the loss alone rather than nothing
            note = (f"with its model kernels it failed ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); measured its loss on plain transformers models")
            log(f"liger: {note}")
            restore()
            kt.free_memory()
            out = _liger_steps(args, pair, device, dtype, ids, labels, loss_fn, None)
            out["kernels"] = note
            return out
    finally:
        restore()


def _liger_steps(args, pair, device, dtype, ids, labels, loss_fn, apply) -> dict[str, Any]:
    teacher, student = hf_pair(pair, device, dtype)
    if apply is not None:
        for model in (teacher, student):
            apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                  fused_linear_cross_entropy=False, model=model)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = kt.make_optimizer(params, device)
    flat = labels.reshape(-1)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with kt.autocast(device, dtype):
            with torch.no_grad():
                t_h = teacher.model(input_ids=ids, use_cache=False).last_hidden_state
            s_h = student.model(input_ids=ids, use_cache=False).last_hidden_state
        # Liger's loss takes one dtype: bf16 operands, the fp32 master weight cast by autograd
        loss = loss_fn(s_h.flatten(0, 1).to(dtype), student.lm_head.weight.to(dtype),
                       t_h.flatten(0, 1).to(dtype), teacher.lm_head.weight.to(dtype), flat)
        return kt.optimizer_step(loss, params, opt)

    return timed_steps(step, args, device)


def run_bare(args, pair: Pair, device, dtype, ids, labels, fp8: bool = False,
             fp8_student: bool = False, one_pass: bool = True) -> dict[str, Any]:
    """KDTrainer.train_step on the pair's checkpoints, the batch fixed (kd_throughput's
    kdengine variant, on these models and this objective); `fp8`: the teacher quantized as
    --teacher-dtype float8 does (`one_pass` False: the norms, SwiGLU and their quantization
    compiled by Inductor instead); `fp8_student`: the student's matmuls too, as
    --student-matmuls float8. With --profile, its GPU kernel time by kind and its idle time
    (3 steps run as the CLI's loop runs them) go to OUT/profile_<pair>_<variant>.txt. The
    student compiles as KDENGINE_STUDENT_COMPILE says, as in the CLI."""
    from kdengine.config import RunConfig
    from kdengine.data import TokenSplits
    from kdengine.models.hf_layout import load_decoder
    from kdengine.providers import ModelStudent, ModelTeacher
    from kdengine.runlog import RunLog
    from kdengine.trainer import KDTrainer

    teacher = load_decoder(pair.teacher_dir, dtype, device)
    if fp8:
        from kdengine.models.fp8 import quantize_teacher

        # frozen, as load_teacher's
        quantize_teacher(teacher.requires_grad_(False).eval(), one_pass=one_pass)
    student = load_decoder(pair.student_dir, torch.float32, device).train()
    if fp8_student:
        from kdengine.models.fp8_train import use_fp8_matmuls

        use_fp8_matmuls(student)
    config = RunConfig(teacher="bench://teacher", student="bench://student",
                       data="bench://random", steps=10**6, batch_size=args.batch,
                       seq_len=args.seq, lr=kt.LR, grad_clip=kt.CLIP,
                       temperature=args.temperature, alpha=args.alpha, loss="forward_kl",
                       eval_batches=1, device=str(device), dtype=args.dtype_name)
    stream = torch.cat([ids.reshape(-1).cpu(), labels.reshape(-1)[-1:].cpu()])
    run_dir = pair.work / "run-bare"
    run_dir.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(run_dir)
    try:
        trainer = KDTrainer(config, ModelTeacher(teacher), ModelStudent(student),
                            TokenSplits(stream, stream, 0), runlog, device, dtype)
        trainer.sampler = kt.FixedBatch(ids.cpu(), labels.cpu())
        out = timed_steps(lambda: trainer.train_step()["loss"], args, device)
        if args.profile and device.type == "cuda":
            variant = ("bare-fp8s" if fp8_student else "bare" if not fp8
                       else "bare-fp8" if one_pass else "bare-fp8-torch")
            name = f"profile_{pair.name}_{variant}.txt"
            # as the CLI's loop runs: each step queued before the last one's loss is read
            kt.profile_steps(overlapped_steps(trainer), device, args.out / name, steps=3,
                             trace=True)
            out["profile"] = name
        return out
    finally:
        runlog.close()


def overlapped_steps(trainer) -> Any:
    """A step function that runs steps as `KDTrainer._train_loop` does between evaluations:
    each queued while the device still works on the one before, whose numbers are read (and
    whose loss is checked) between this one's backward and its update."""
    queued = None

    def step() -> None:
        nonlocal queued
        before = queued
        finish = (lambda: trainer._finish(before)) if before is not None else None
        queued = trainer.queue_step(before_update=finish)

    return step


# -- the driver ------------------------------------------------------------------------------------

def write_text(path: Path, size: int) -> None:
    """The repo's own sources and docs, repeated to `size` bytes (one byte, one token)."""
    parts = [p.read_text(errors="replace") for pattern in ("docs/*.md", "kdengine/**/*.py")
             for p in sorted(ROOT.glob(pattern))]
    text = "\n".join(parts) or "the teacher scores and the student learns\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((text * (size // len(text) + 1))[:size])


NOTES = [
    "dense MFU = (2 x teacher matmul params + 6 x student matmul params) x tokens/s / the bf16 "
    "8192^3 matmul measured at the start of this run; matmul params = every Linear weight incl. "
    "the lm head (a tied head counts), not the embedding lookup; attention scores not counted. "
    "The FP8 run's teacher FLOPs count as bf16's.",
    "Liger's soft weight is (1 - alpha) x T^2 (Liger does not scale by T^2): the same objective "
    "as kdengine's and naive's; speed does not depend on it.",
    "peaks: the CLI runs' gpu_mem_peak (since the engine started); the in-process variants' "
    "torch.cuda.max_memory_allocated over the variant (models, warm-up, timed steps).",
    "CLI runs: step time from their step events (log_every 1) after the warm-up steps; stopped "
    "by SIGTERM once logged (no final checkpoint); each pair has its own compile caches, so "
    "`cli` starts cold and `cli-warm` reuses what `cli` compiled.",
    "cli-ranks: `kdengine train` under torchrun, one GPU per rank, each rank the 1-GPU run's "
    "batch (global batch ranks x B); tok/s all ranks together; its dense MFU per GPU; scaling "
    "= its tok/s / (ranks x the 1-GPU run's); peak = rank 0's GPU.",
]


class Bench:
    """One invocation: the pairs in turn, each phase timed against its estimate and saved."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        args.dtype_name = str(self.dtype).removeprefix("torch.")
        self.data = work / "data"
        write_text(self.data / "text.txt", args.data_bytes)
        self.results: dict[str, Any] = {
            "env": self.environment(), "batch": args.batch, "seq": args.seq,
            "tokens": args.batch * args.seq, "ranks": args.ranks, "alpha": args.alpha,
            "temperature": args.temperature, "loss": "forward_kl", "dtype": args.dtype_name,
            "cli_warmup": args.cli_warmup, "cli_steps": args.cli_steps, "warmup": args.warmup,
            "steps": args.steps, "budget_s": args.budget_s, "pairs": {}, "phases": [],
            "notes": list(NOTES)}
        log(f"env {json.dumps(self.results['env'])}")
        self.ceiling = kt.matmul_ceiling(self.device)
        self.results["matmul_ceiling_flops"] = self.ceiling
        what = "bf16 8192^3" if self.device.type == "cuda" else "fp32 512^3"
        log(f"matmul ceiling {self.ceiling / 1e12:.3g} TFLOP/s ({what})")
        self.plan = Plan(args, self.ceiling)
        self.fp8_flags = args.fp8_flags.split()
        self.student_flags = args.student_flags.split()
        self.fp8_missing = self.student_missing = None
        if {"cli-fp8", "cli-fp8s", "cli-ranks-fp8"} & set(args.variants):
            known = cli_flags_known()
            if self.fp8_flags and self.fp8_flags[0] not in known:
                self.fp8_missing = f"this kdengine's `train` has no {self.fp8_flags[0]} flag"
            if self.student_flags and self.student_flags[0] not in known:
                self.student_missing = (f"this kdengine's `train` has no "
                                        f"{self.student_flags[0]} flag")

    def environment(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        env = {"torch": torch.__version__, "python": platform.python_version(),
               "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
               "cuda": torch.version.cuda, "command": " ".join(sys.argv),
               "work": str(self.work),
               "teacher_compile": os.environ.get("KDENGINE_TEACHER_COMPILE") or "layers (default)",
               "work_free_gib": round(shutil.disk_usage(self.work).free / GIB, 1)}
        for pkg in ("transformers", "liger_kernel", "triton"):
            try:  # the distribution's metadata: liger_kernel has no __version__
                env[pkg] = importlib.metadata.version(pkg.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                env[pkg] = getattr(importlib.util.find_spec(pkg) and importlib.import_module(pkg),
                                   "__version__", None)
        return env

    def save(self) -> None:
        (self.args.out / "kd_pairs.json").write_text(
            json.dumps(self.results, indent=1, default=str))

    def announce(self, pairs: list[Pair]) -> None:
        phases = [(pr, "write") for pr in pairs] + [(pr, v) for pr in pairs
                                                    for v in self.variants_of(pr)]
        total = sum(self.plan.estimate(pr, v) for pr, v in phases)
        budget = f" (budget {self.args.budget_s:.0f} s)" if self.args.budget_s else ""
        log(f"plan: {len(phases)} phases, estimated {total:.0f} s{budget}")
        for pr, v in phases:
            log(f"  {pr.name:9s} {v:9s} ~{self.plan.estimate(pr, v):5.0f} s")

    def variants_of(self, pair: Pair) -> list[str]:
        """The variants that run on `pair`: cli-ckpt on --ckpt-pairs only, where it is the
        pair's second run and takes cli-warm's place (its start is the warm start)."""
        ckpt = "cli-ckpt" in self.args.variants and pair.name in self.args.ckpt_pairs
        return [v for v in self.args.variants
                if (v != "cli-ckpt" or ckpt) and (v != "cli-warm" or not ckpt)]

    def run(self, pairs: list[Pair]) -> None:
        self.announce(pairs)
        for index, pair in enumerate(pairs):
            self.run_pair(pair, pairs[index + 1:])
            if self.args.work is None:
                shutil.rmtree(pair.work, ignore_errors=True)

    def run_pair(self, pair: Pair, later: list[Pair]) -> None:
        res: dict[str, Any] = {
            "teacher": pair.teacher_name, "student": pair.student_name, "family": pair.family,
            "teacher_matmul_params": pair.pt, "student_matmul_params": pair.ps,
            "dense_flops_per_token": pair.dense_flops_per_token, "variants": {}}
        self.results["pairs"][pair.name] = res
        written = self.phase(pair, later, "write", lambda _t: self.write_models(pair, res))
        if "error" in written:
            res["write_error"] = written["error"]
            return
        args = self.args
        ids, labels = kt.random_batch(pair.student_cfg["vocab_size"], args.batch, args.seq,
                                      self.device)
        os.environ.update(pair.env())  # in-process compiles share the pair's caches
        in_process = {"liger": run_liger, "naive": run_naive, "bare": run_bare,
                      "bare-fp8": partial(run_bare, fp8=True),
                      "bare-fp8-torch": partial(run_bare, fp8=True, one_pass=False),
                      "bare-fp8s": partial(run_bare, fp8=True, fp8_student=True)}
        for v in self.variants_of(pair):
            skip = self.precondition(pair, v)
            if skip:
                res["variants"][v] = {"skipped": skip}
                log(f"[{pair.name} {v}] skipped ({skip})")
                continue
            if v in in_process:
                fn = partial(self.in_process, in_process[v], pair, ids, labels)
            else:
                fn = partial(cli_run, args, pair, self.data, v,
                             {"cli-fp8": self.fp8_flags, "cli-ranks-fp8": self.fp8_flags,
                              "cli-fp8s": self.fp8_flags + self.student_flags}.get(v, []),
                             ckpt_every=args.ckpt_every if v == "cli-ckpt" else 0,
                             checkpoints=self.checkpoints_that_fit(pair)[0]
                             if v == "cli-ckpt" else 0,
                             profile_start=args.start_profile and v in ("cli-warm", "cli-ckpt"),
                             env=args.warm_env if v == "cli-warm-env" else None,
                             ranks=args.ranks if v in RANKS_OF else 1)
            out = self.phase(pair, later, v, fn)
            one = res["variants"].get(RANKS_OF.get(v, ""), {})
            if "tokens_per_s" in out and "tokens_per_s" in one:
                out["scaling"] = out["tokens_per_s"] / (out["ranks"] * one["tokens_per_s"])
                log(f"[{pair.name} {v}] scaling {out['scaling']:.3f} = "
                    f"{out['tokens_per_s']:,.0f} / ({out['ranks']} x {one['tokens_per_s']:,.0f})")
            res["variants"][v] = out
            self.save()
        first_losses(res)

    def in_process(self, run, pair: Pair, ids, labels, _timeout: float) -> dict[str, Any]:
        """A variant in this process (a subprocess's timeout does not apply)."""
        return run(self.args, pair, self.device, self.dtype, ids, labels)

    def precondition(self, pair: Pair, variant: str) -> str | None:
        """Why `variant` cannot run on this box, or None."""
        if variant in RANKS_OF and self.args.ranks < 2:
            return (f"{self.args.ranks} device here: {variant} needs --ranks N >= 2 "
                    "(one GPU per rank)")
        if variant in ("cli-fp8", "bare-fp8", "bare-fp8-torch", "cli-ranks-fp8"):
            return self.fp8_missing
        if variant in ("cli-fp8s", "bare-fp8s"):
            return self.fp8_missing or self.student_missing
        if variant == "cli-ckpt":
            count, why = self.checkpoints_that_fit(pair)
            if count < 2:
                log(f"[{pair.name} cli-ckpt] {why}")
            return why if count == 0 else None
        return None

    def checkpoints_that_fit(self, pair: Pair) -> tuple[int, str]:
        """Mid-run checkpoints the CLI will agree to write here (it refuses a run whose
        checkpoints cannot fit): 2 when three fit at once (two kept, a new one beside them),
        1 when two and the final student fit, else 0; and why not 2."""
        free, ckpt = shutil.disk_usage(self.work).free, pair.checkpoint_bytes
        final = 2 * pair.params(pair.student_cfg)
        if free >= 3 * ckpt * 1.05:
            return 2, ""
        why = (f"{self.work} has {free / GIB:.0f} GiB free, two mid-run checkpoints need "
               f"{3 * ckpt * 1.05 / GIB:.0f} GiB")
        if free >= (2 * ckpt + final) * 1.05:
            return 1, why + ": one checkpoint only"
        return 0, why

    def write_models(self, pair: Pair, res: dict[str, Any]) -> dict[str, Any]:
        where = "cuda" if self.device.type == "cuda" else "cpu"
        res["teacher_params"] = P.write_model(pair.teacher_dir, pair.teacher_cfg, 1, where)
        res["student_params"] = P.write_model(pair.student_dir, pair.student_cfg, 2, where)
        return {"teacher_params": res["teacher_params"], "student_params": res["student_params"]}

    def phase(self, pair: Pair, later: list[Pair], name: str, fn) -> dict[str, Any]:
        """fn(timeout_s) timed against its estimate; skipped when it would not fit the budget
        (less what the later pairs' essential phases need); its error caught and kept."""
        plan, tag = self.plan, f"[{pair.name} {name}]"
        est, left, keep = plan.estimate(pair, name), plan.left(), plan.reserve(
            later, self.args.variants)
        row: dict[str, Any] = {"pair": pair.name, "phase": name, "estimate_s": round(est)}
        self.results["phases"].append(row)
        if name != "write" and est > left - keep:
            why = (f"budget: needs ~{est:.0f} s, {left:.0f} s left, {keep:.0f} s kept for the "
                   "later pairs")
            log(f"{tag} skipped ({why})")
            row["skipped"] = True
            return {"skipped": why}
        log(f"{tag} estimate {est:.0f} s (at {plan.elapsed():.0f} s)")
        kt.free_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.monotonic()
        try:
            out = fn(max(left - keep, 30.0) if self.args.budget_s else 3 * est + 600)
        except ModuleNotFoundError as exc:
            out = {"skipped": str(exc)}
        except torch.OutOfMemoryError as exc:
            out = {"error": f"OOM: {str(exc)[:300]}"}
        except Exception as exc:  # noqa: BLE001 - one broken variant must not lose the others
            out = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
        finally:
            torch._dynamo.reset()
            kt.free_memory()
        elapsed = time.monotonic() - t0
        row["elapsed_s"] = round(elapsed, 1)
        if "error" not in out and "skipped" not in out:
            plan.learn(pair, name, elapsed)
        if "tokens_per_s" in out:  # per GPU
            out["dense_mfu"] = (pair.dense_flops_per_token * out["tokens_per_s"]
                                / (self.ceiling * out.get("ranks", 1)))
        log(f"{tag} {describe(out)}")
        log(f"{tag} elapsed {elapsed:.0f} s (estimate {est:.0f} s; total {plan.elapsed():.0f} s)")
        self.save()
        return out

    def finish(self) -> None:
        table = summary_tables(self.results)
        self.results["table"] = table
        self.save()
        (self.args.out / "kd_pairs.md").write_text(table + "\n")
        log("\n" + table)
        log(f"total {self.plan.elapsed():.0f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="toy shapes of each family, fp32 (CPU)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/out")))
    p.add_argument("--work", type=Path, default=None,
                   help="models, runs and caches (default: a temp dir, removed at the end)")
    p.add_argument("--pairs", default=",".join(P.PAIRS), help=f"of {', '.join(P.PAIRS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--ckpt-pairs", default="llama3.2", help="pairs that run cli-ckpt")
    p.add_argument("--ckpt-every", type=int, default=110,
                   help="steps between checkpoints: longer than a write (a 1B student: ~20 s), "
                   "or each save waits for the one before")
    p.add_argument("--warm-env", default="TORCH_WARM_POOL=0",
                   help="KEY=VALUE[,KEY=VALUE]: the environment cli-warm-env adds")
    p.add_argument("--fp8-flags", default="--teacher-dtype float8",
                   help="what cli-fp8 adds to the command line")
    p.add_argument("--student-flags", default="--student-matmuls float8",
                   help="what cli-fp8s adds to cli-fp8's command line")
    p.add_argument("--ranks", type=int, default=None,
                   help="cli-ranks' processes (default: the GPUs here; 2 on the CPU: gloo)")
    p.add_argument("--batch", type=int, default=None, help="rows a step (per rank)")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--cli-warmup", type=int, default=None, help="first steps not timed")
    p.add_argument("--cli-steps", type=int, default=None, help="timed steps of a CLI run")
    p.add_argument("--warmup", type=int, default=None, help="in-process warm-up steps")
    p.add_argument("--steps", type=int, default=None, help="in-process timed steps")
    p.add_argument("--liger-chunk", type=int, default=1024)
    p.add_argument("--kernel-time", action="store_true",
                   help="also profile the in-process variants' GPU kernel time (3 steps more)")
    p.add_argument("--profile", action="store_true",
                   help="the bare variants' GPU kernel time by kind and where the GPU idles "
                        "(3 steps as the CLI's loop runs them): OUT/profile_<pair>_<v>.txt and "
                        "its GPU timeline (.trace.json.gz)")
    p.add_argument("--start-profile", action="store_true",
                   help="sample the warm CLI run's start with py-spy (the carried wheel): "
                   "OUT/start_<pair>.txt, its frames by time")
    p.add_argument("--step-profile", action="store_true",
                   help="sample the one-process CLI runs' timed steps with py-spy: "
                   "OUT/steps_<pair>_<variant>.txt, the host's frames by time")
    p.add_argument("--data-bytes", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip phases that would not fit (default 540 on CUDA, none on the CPU)")
    args = p.parse_args(argv)
    pairs, variants = args.pairs.split(","), args.variants.split(",")
    unknown = sorted(set(pairs) - set(P.PAIRS) | set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown pair or variant: {', '.join(unknown)} (pairs: {', '.join(P.PAIRS)}; "
                f"variants: {', '.join(VARIANTS)})")
    args.pairs, args.variants = pairs, [v for v in VARIANTS if v in variants]
    args.ckpt_pairs = set(args.ckpt_pairs.split(","))
    args.warm_env = dict(kv.split("=", 1) for kv in args.warm_env.split(",") if "=" in kv)
    tiny = args.tiny
    if args.ranks is None:
        args.ranks = torch.cuda.device_count() if args.device.startswith("cuda") else 2
    args.batch = args.batch or (2 if tiny else 4)
    args.seq = args.seq or (64 if tiny else 2048)
    args.cli_warmup = args.cli_warmup if args.cli_warmup is not None else (1 if tiny else 3)
    args.cli_steps = args.cli_steps or (3 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.steps = args.steps or (2 if tiny else 10)
    args.data_bytes = args.data_bytes or (1 << 16 if tiny else 1 << 21)
    if tiny:
        args.ckpt_every = min(args.ckpt_every, 2)
    if args.budget_s is None:
        args.budget_s = 540.0 if args.device.startswith("cuda") else 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-pairs-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench = Bench(args, work)
        try:
            bench.run([Pair(name, args.tiny, work) for name in args.pairs])
        finally:
            bench.finish()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def first_losses(res: dict[str, Any]) -> None:
    """The in-process variants start from the same weights and batch with the same objective:
    their first losses agree (bf16) unless one of them computes something else."""
    seen = {k: v["first_loss"] for k, v in res["variants"].items()
            if k in ("liger", "naive", "bare", "bare-fp8", "bare-fp8-torch")
            and isinstance(v.get("first_loss"), float)}
    if len(seen) > 1:
        lo, hi = min(seen.values()), max(seen.values())
        res["first_loss_spread"] = (hi - lo) / max(abs(hi), 1e-9)
        log(f"[first losses] {seen} spread {res['first_loss_spread']:.2%}")


def describe(out: dict[str, Any]) -> str:
    if "skipped" in out:
        return f"skipped: {out['skipped']}"
    if "error" in out:
        return f"ERROR: {out['error'][:1500]}"
    if "tokens_per_s" not in out:
        return json.dumps(out)
    parts = [f"{out['tokens_per_s']:,.0f} tok/s", f"step {out['step_ms']:.1f} ms "
             f"({out['p25_ms']:.1f}-{out['p75_ms']:.1f})", f"dense MFU {out['dense_mfu']:.2f}"]
    if "peak_gib" in out:
        parts.append(f"peak {out['peak_gib']:.2f} GiB")
    if "kernel_ms" in out:
        parts.append(f"kernels {out['kernel_ms']:.1f} ms")
    if "startup_s" in out:
        parts.append(f"first step {out['startup_s']:.1f} s after start")
    if "compile_s" in out:
        parts.append(f"(set-up {out.get('setup_s', 0):.1f} s, step-0 eval "
                     f"{out.get('eval0_s', 0):.1f} s, first step {out.get('first_step_s', 0):.1f} "
                     f"s; torch.compile {out['compile_s']:.1f} s, tracing {out['trace_s']:.1f} s; "
                     f"stages {out.get('stages_s')})")
    if out.get("first_loss") is not None:
        parts.append(f"loss {out['first_loss']:.4f}")
    for c in out.get("checkpoints", []):
        parts.append("checkpoint " + ", ".join(f"{k}={v}" for k, v in c.items()))
    return ", ".join(parts)


def summary_tables(results: dict[str, Any]) -> str:
    def get(pair: dict[str, Any], variant: str) -> dict[str, Any]:
        return pair["variants"].get(variant, {})

    def rate(r: dict[str, Any]) -> str:
        if "tokens_per_s" in r:
            return f"{r['tokens_per_s']:,.0f}"
        return "error" if "error" in r else "-"

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
        if "tokens_per_s" in a and "tokens_per_s" in b:
            return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}"
        return "-"

    def fmt(r: dict[str, Any], key: str, spec: str, unit: str = "") -> str:
        return f"{format(r[key], spec)}{unit}" if r.get(key) is not None else "-"

    ceiling = results.get("matmul_ceiling_flops", 0)
    lines = [f"B={results['batch']} x S={results['seq']}, alpha {results['alpha']}, "
             f"T {results['temperature']:g}, forward KL, {results['dtype']}; "
             f"{results['env']['device']}, torch {results['env']['torch']}, transformers "
             f"{results['env']['transformers']}, liger-kernel {results['env']['liger_kernel']}; "
             f"matmul ceiling {ceiling / 1e12:.3g} TFLOP/s.", "",
             "| pair | kdengine tok/s | +FP8 tok/s | +FP8 student tok/s | HF+Liger tok/s | "
             "naive tok/s | x Liger | x Liger FP8 | x Liger FP8 both | dense MFU | FP8 MFU | "
             "FP8 both MFU | peaks (GiB: kd / FP8 / FP8 both / Liger / naive) | "
             "first-run start | second-run start |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for pr in results["pairs"].values():
        cli, fp8, both = get(pr, "cli"), get(pr, "cli-fp8"), get(pr, "cli-fp8s")
        warm = get(pr, "cli-warm") or get(pr, "cli-ckpt")  # both are the pair's second run
        liger, naive = get(pr, "liger"), get(pr, "naive")
        peaks = " / ".join(fmt(r, "peak_gib", ".1f") for r in (cli, fp8, both, liger, naive))
        lines.append(
            f"| {pr['teacher']} -> {pr['student']} | {rate(cli)} | {rate(fp8)} | {rate(both)} "
            f"| {rate(liger)} | {rate(naive)} | {ratio(cli, liger)} | {ratio(fp8, liger)} | "
            f"{ratio(both, liger)} | {fmt(cli, 'dense_mfu', '.2f')} | "
            f"{fmt(fp8, 'dense_mfu', '.2f')} | {fmt(both, 'dense_mfu', '.2f')} | {peaks} | "
            f"{fmt(cli, 'startup_s', '.1f', ' s')} | {fmt(warm, 'startup_s', '.1f', ' s')} |")
    scaled = [(pr, v) for pr in results["pairs"].values() for v in RANKS_OF
              if "tokens_per_s" in get(pr, v)]
    if scaled:
        lines += ["", "Data parallel (torchrun, the student replicated or sharded by size; scaling "
                  "= N-GPU tok/s / (N x 1-GPU tok/s)):", "",
                  "| pair | run | 1 GPU tok/s | N GPUs tok/s | N | scaling | dense MFU per GPU "
                  "(1 / N) | peak GiB (1 / N, rank 0) | first step (1 / N) |",
                  "|---|---|---:|---:|---:|---:|---|---|---|"]
        for pr, v in scaled:
            one, many = get(pr, RANKS_OF[v]), get(pr, v)
            lines.append(
                f"| {pr['teacher']} -> {pr['student']} | {v} | {rate(one)} | {rate(many)} | "
                f"{many['ranks']} | {fmt(many, 'scaling', '.3f')} | "
                f"{fmt(one, 'dense_mfu', '.2f')} / {fmt(many, 'dense_mfu', '.2f')} | "
                f"{fmt(one, 'peak_gib', '.1f')} / {fmt(many, 'peak_gib', '.1f')} | "
                f"{fmt(one, 'startup_s', '.1f', ' s')} / {fmt(many, 'startup_s', '.1f', ' s')} |")
    lines += ["", "Every variant (step ms: median and p25-p75 of the timed steps):", "",
              "| pair | variant | tok/s | step (ms) | p25-p75 (ms) | dense MFU | peak (GiB) | "
              "first step after start | first loss | last timed step's loss |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, pr in results["pairs"].items():
        for v, r in pr["variants"].items():
            if "tokens_per_s" in r:
                at = f" (step {r['last_step']})" if r.get("last_step") else ""
                lines.append(
                    f"| {name} | {v} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                    f"{r['p25_ms']:.1f}-{r['p75_ms']:.1f} | {r['dense_mfu']:.2f} | "
                    f"{fmt(r, 'peak_gib', '.2f')} | {fmt(r, 'startup_s', '.1f', ' s')} | "
                    f"{fmt(r, 'first_loss', '.4f')} | {fmt(r, 'last_loss', '.4f')}{at} |")
            else:
                why = (r.get("skipped") or r.get("error") or "?").strip().splitlines()[0]
                lines.append(f"| {name} | {v} | - | - | - | - | - | - | - | "
                             f"{'skipped' if 'skipped' in r else 'error'}: {why[:90]} |")
    ckpt_rows = [(name, r, c) for name, pr in results["pairs"].items()
                 for v, r in pr["variants"].items() for c in r.get("checkpoints", [])]
    if ckpt_rows:
        lines += ["", "Checkpoints (cli-ckpt; gap = host time between the step events around "
                  "it, less the next step's own time):", "",
                  "| pair | step | stall_s | write_s | next step (ms) | median step (ms) | "
                  "gap (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r, c in ckpt_rows:
            lines.append(f"| {name} | {c['step']} | {fmt(c, 'stall_s', '.2f')} | "
                         f"{fmt(c, 'write_s', '.2f')} | {fmt(c, 'next_step_ms', '.1f')} | "
                         f"{fmt(r, 'step_ms', '.1f')} | {fmt(c, 'gap_s', '.2f')} |")
    lines += ["", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
