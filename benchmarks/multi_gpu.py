"""Data-parallel scaling of the KD train step: tokens/s on N GPUs over N x tokens/s on one.

The pair of the GPU-speed benchmark: a teacher with Qwen2.5-1.5B's config and a student with
Qwen2.5-0.5B's, random weights, random tokens, `--per-rank-batch` x `--seq-len` tokens per GPU.
It drives the engine's own KDTrainer (student and teacher replicated or sharded by size), so
it measures what `kdengine train` does under torchrun.

    python benchmarks/multi_gpu.py --out one.json                       # 1 GPU
    torchrun --nproc-per-node 2 benchmarks/multi_gpu.py --out two.json  # 2 GPUs
    python benchmarks/multi_gpu.py --compare one.json two.json          # efficiency + check
    benchmarks/multi_gpu.sh OUT_DIR                                      # all of the above

`--tiny` runs small models on the CPU (gloo) to test the script itself. `--check-batch B` first
trains a few steps at global batch B and records their losses: a one-process run and an N-rank
run of the same global batch must agree (the data-parallel correctness check).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdengine.config import RunConfig  # noqa: E402
from kdengine.data import TokenSplits  # noqa: E402
from kdengine.distributed import PARAM_GATHERS, Dist, from_env  # noqa: E402
from kdengine.models import Decoder, DecoderConfig  # noqa: E402
from kdengine.providers import ModelStudent, ModelTeacher  # noqa: E402
from kdengine.trainer import KDTrainer  # noqa: E402

QWEN_VOCAB = 151936
# Qwen2.5-1.5B and Qwen2.5-0.5B config.json values (tied embeddings, q/k/v bias)
TEACHER = dict(vocab_size=QWEN_VOCAB, hidden_size=1536, intermediate_size=8960,
               num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)
STUDENT = dict(vocab_size=QWEN_VOCAB, hidden_size=896, intermediate_size=4864,
               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)
TINY_TEACHER = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
TINY_STUDENT = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)


def build(shape: dict, device: torch.device, dtype: torch.dtype, seed: int) -> Decoder:
    """A Qwen2-family decoder with seeded random weights, made on `device` (identical on every
    rank: the same seed on the same kind of device)."""
    config = DecoderConfig(**shape, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                           attention_bias=True, model_type="qwen2", max_position_embeddings=32768)
    with torch.device(device):
        model = Decoder(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype)


def make_trainer(args: argparse.Namespace, dist, device: torch.device, batch: int,
                 steps: int, run_dir: Path):

    tiny = args.tiny
    compute = getattr(torch, args.cpu_dtype) if device.type == "cpu" else torch.bfloat16
    teacher = ModelTeacher(build(TINY_TEACHER if tiny else TEACHER, device, compute, 1))
    placed = dist.place_teacher(teacher, device, args.teacher)
    dist.reshard_student = {"auto": None, "yes": True, "no": False}[args.reshard]
    dist.param_gather = args.param_gather
    dist.prefetch_student = not args.no_prefetch
    dist.local_optim = not args.dtensor_optim
    dist.layers_per_group = args.layers_per_group
    student = dist.place_student(
        ModelStudent(build(TINY_STUDENT if tiny else STUDENT, device, torch.float32, 2).train()),
        args.student_placement)
    vocab = teacher.vocab_size
    gen = torch.Generator().manual_seed(3)
    stream = torch.randint(0, vocab, (max(4 * batch * args.seq_len, 200_000),), generator=gen)
    splits = TokenSplits(train=stream, val=stream[: 4 * (args.seq_len + 1)], eos_id=0)
    config = RunConfig.from_mapping(dict(
        teacher="bench", student="bench", data="bench", steps=steps, batch_size=batch,
        seq_len=args.seq_len, lr=1e-5, warmup_steps=0, lr_schedule="constant",
        eval_batches=1, temperature=2.0, alpha=0.3, seed=0))
    log = dist.run_log(run_dir)
    kwargs = {}
    if args.no_compile:
        kwargs["compile_models"] = False
    try:
        trainer = KDTrainer(config, teacher, student, splits, log, device, compute, dist=dist,
                            **kwargs)
    except TypeError:  # an engine without the compile switch
        trainer = KDTrainer(config, teacher, student, splits, log, device, compute, dist=dist)
    return trainer, placed, log


def run_bench(args: argparse.Namespace) -> dict:
    dist = from_env("cpu" if args.tiny else "auto")
    device = dist.device(torch.device("cpu" if args.tiny else "cuda"))
    world = dist.world_size
    result: dict = {"world_size": world, "device": str(device), "torch": torch.__version__,
                    "per_rank_batch": args.per_rank_batch, "seq_len": args.seq_len,
                    "teacher_mode": args.teacher}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)  # each rank's own: only rank 0 writes events there
        (run_dir / "check").mkdir()
        (run_dir / "speed").mkdir()
        if args.check_batch:
            trainer, _, log = make_trainer(args, dist, device, args.check_batch, args.check_steps,
                                           run_dir / "check")
            result["check_losses"] = [trainer.train_step()["loss"]
                                      for _ in range(args.check_steps)]
            log.close()
            del trainer
            # forget the check's shapes: the timed run compiles for its own batch, as a run
            # that never saw another would (no dynamic-shape graphs in one run and not the other)
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if dist.enabled and args.comm_probe:
            result["comm"] = comm_probe(device)
        batch = args.per_rank_batch * world
        total = args.warmup + args.steps + args.profile + 10  # the loop runs ahead till the end
        trainer, placed, log = make_trainer(args, dist, device, batch, total, run_dir / "speed")
        result["teacher_placed"] = placed
        result["engine"] = {"fused_update": trainer._fused_update, "compile": trainer.compile,
                            "compile_options": repr(getattr(trainer, "compile_options", None)),
                            "student_placement": dist.student_placement,
                            "param_gather": dist.param_gather if dist.enabled else None,
                            "prefetch": dist.prefetch_student if dist.enabled else None,
                            "local_optim": dist.local_optim if dist.enabled else None,
                            "optimizer": type(trainer.optimizer).__name__}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm = engine_loop(trainer, args.warmup)
        trainer.startup_s = 0.0  # from here the loop runs a step ahead, as kdengine train's
        dist.barrier()
        t0 = time.perf_counter()
        timed = engine_loop(trainer, args.steps)
        dist.barrier()
        wall = time.perf_counter() - t0
        losses = [m["loss"] for m, _ in warm + timed]
        rates = [m["tokens_per_s"] for m, _ in timed]
        result["steps_ms"] = [round(batch * args.seq_len / r * 1e3, 1) for r in rates]
        result["host_ms"] = [round(h * 1e3, 1) for _, h in timed]
        if args.sync_debug and device.type == "cuda":
            result["syncs"] = sync_points(trainer, 2)
        if args.profile:
            result["profile"] = profile_steps(trainer, args.profile, device,
                                              Path(args.out).with_suffix(".prof.txt")
                                              if args.out and dist.is_main else None)
        try:
            result["phases_s"] = phase_times(trainer, device, 3)
        except Exception as exc:  # an engine whose step is built differently: no breakdown
            result["phases_s"] = repr(exc)
        log.close()
    result.update(
        tokens_per_step=batch * args.seq_len, steps_timed=args.steps,
        tokens_per_s_median=statistics.median(rates), tokens_per_s_min=min(rates),
        tokens_per_s_max=max(rates), tokens_per_s_wall=batch * args.seq_len * args.steps / wall,
        losses=losses,
        peak_memory_gib=(torch.cuda.max_memory_allocated(device) / 2**30
                         if device.type == "cuda" else None))
    if dist.enabled:  # every rank's peak memory, gathered to rank 0
        peaks = [None] * world
        torch.distributed.all_gather_object(peaks, result["peak_memory_gib"])
        result["peak_memory_gib_per_rank"] = peaks
    dist.close()
    return result


def engine_loop(trainer, n: int) -> list[tuple[dict, float]]:
    """`n` steps as KDTrainer's train loop runs them (a step left queued while the next one is
    queued, where the trainer allows it), no evaluations: [(metrics, host seconds to queue)]."""
    rows: list[tuple[dict, float]] = []
    queued = None

    def finish() -> None:
        nonlocal queued
        step, queued = queued, None
        rows.append((trainer._finish(step), step.host_s))

    for _ in range(n):
        step = trainer.queue_step(before_update=finish if queued is not None else None)
        if trainer._overlaps(step.number):
            queued = step
            continue
        rows.append((trainer._finish(step), step.host_s))
    if queued is not None:
        finish()
    return rows


def sync_points(trainer, steps: int) -> list[dict]:
    """Where the host waits for the device inside `steps` steps of the loop (CUDA's sync debug
    mode): each distinct Python stack with its count. The loop's own read of the step before
    (QueuedStep.values) is expected; anything else stalls the loop running ahead."""
    stacks: collections.Counter[str] = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        stacks["".join(traceback.format_stack(limit=12)[:-1])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine_loop(trainer, steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [{"count": n, "stack": st[-2500:]} for st, n in stacks.most_common(8)]


def profile_steps(trainer, steps: int, device: torch.device, table: Path | None) -> dict:
    """torch.profiler over `steps` steps of the loop: per step the wall time, the device's busy
    time (the union of its kernels), NCCL's kernel time, the kernel count and the host's time
    in CUDA synchronizations; the top ops by device time go to `table`."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    engine_loop(trainer, 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        engine_loop(trainer, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    kernels, syncs = [], 0.0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((e.time_range.start, e.time_range.end, e.name))
        elif "Synchronize" in e.name:
            syncs += e.time_range.elapsed_us()
    busy, end = 0.0, -1.0
    for start, stop, _ in sorted(kernels):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    nccl = sum(b - a for a, b, n in kernels if "nccl" in n.lower())
    if table is not None:
        table.write_text(prof.key_averages().table(sort_by="self_device_time_total",
                                                   row_limit=45, max_name_column_width=70))
    return {"steps": steps, "wall_ms": wall * 1e3 / steps, "busy_ms": busy / 1e3 / steps,
            "nccl_kernel_ms": nccl / 1e3 / steps, "kernels": len(kernels) / steps,
            "host_sync_ms": syncs / 1e3 / steps}


def phase_times(trainer, device: torch.device, steps: int) -> dict[str, float]:
    """Median seconds of forward+loss, backward and the update (clip + AdamW, as train_step
    does it), each synchronized: where the time goes, not the step time (syncs add gaps)."""
    from kdengine.compiled import fused_clipped_step

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trainer.dist.barrier()
        return time.perf_counter()

    rows: list[list[float]] = []
    for k in range(steps):
        trainer.optimizer.zero_grad(set_to_none=True)
        t0 = now()
        parts = trainer._loss(*trainer.sampler.batch(10_000 + k))
        parts.loss.item()
        t1 = now()
        parts.loss.backward()
        t2 = now()
        if trainer._fused_update:
            fused_clipped_step(trainer.optimizer, trainer.params, parts.loss, 1.0,
                               trainer.dist.grad_norm)
        else:
            trainer.dist.clip_grad_norm_(trainer.params, 1.0)
            trainer.optimizer.step()
        t3 = now()
        rows.append([t1 - t0, t2 - t1, t3 - t2])
    names = ("forward_loss", "backward", "update")
    return {n: statistics.median(r[i] for r in rows) for i, n in enumerate(names)}


def comm_probe(device: torch.device, mib: int = 256, reps: int = 5) -> dict[str, float]:
    """Bus bandwidth (GB/s, NCCL-tests' definition) of an all-gather and a reduce-scatter of
    `mib` MiB of output per rank: what the student's gathers and gradient reductions move."""
    import torch.distributed as tdist

    world = tdist.get_world_size()
    numel = mib * 2**20 // 4
    out = torch.empty(numel, device=device)
    shard = torch.randn(numel // world, device=device)
    full = torch.randn(numel, device=device)
    result = {}
    for name, op in (("all_gather", lambda: tdist.all_gather_into_tensor(out, shard)),
                     ("reduce_scatter", lambda: tdist.reduce_scatter_tensor(shard, full))):
        op()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            op()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        result[f"{name}_busbw_GBps"] = numel * 4 * (world - 1) / world / seconds / 1e9
        result[f"{name}_ms"] = seconds * 1e3
    result["MiB"] = mib
    return result


def compare(one: dict, many: dict, rtol: float) -> dict:
    """Scaling efficiency and the loss check of two results (1 rank, N ranks)."""
    n = many["world_size"]
    out = {"world_size": n,
           "tokens_per_s_1": one["tokens_per_s_median"],
           "tokens_per_s_n": many["tokens_per_s_median"],
           "efficiency": many["tokens_per_s_median"] / (n * one["tokens_per_s_median"]),
           "efficiency_wall": many["tokens_per_s_wall"] / (n * one["tokens_per_s_wall"])}
    a, b = one.get("check_losses"), many.get("check_losses")
    if a and b:
        rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True)]
        out.update(check_losses_1=a, check_losses_n=b, check_max_rel_diff=max(rel),
                   check_ok=max(rel) <= rtol)
    return out


def summary_table(out_dir: Path) -> str:
    """A markdown table of every result in `out_dir` (one*.json against many*.json)."""
    one_files = sorted(out_dir.glob("one*.json"))
    if not one_files:
        return "no one-GPU result"
    one = json.loads(one_files[0].read_text())
    rows = ["| run | tokens/s | efficiency | peak GiB/GPU | fwd+loss / bwd / update (ms) |",
            "| --- | ---: | ---: | ---: | --- |"]

    def row(name: str, r: dict) -> str:
        n = r["world_size"]
        eff = r["tokens_per_s_median"] / (n * one["tokens_per_s_median"])
        ph = r.get("phases_s")
        phases = " / ".join(f"{v * 1e3:.0f}" for v in ph.values()) if isinstance(ph, dict) \
            else "-"
        peak = r.get("peak_memory_gib_per_rank") or [r.get("peak_memory_gib")]
        peak_s = "/".join(f"{p:.1f}" for p in peak if p is not None) or "-"
        return (f"| {name} | {r['tokens_per_s_median']:,.0f} | "
                f"{'-' if n == 1 else f'{eff:.3f}'} | {peak_s} | {phases} |")

    rows.append(row(one_files[0].stem, one))
    for f in sorted(out_dir.glob("many*.json")):
        rows.append(row(f.stem, json.loads(f.read_text())))
    lines = rows
    for f in sorted(out_dir.glob("compare*.json")):
        c = json.loads(f.read_text())
        lines.append(f"\n{f.stem}: efficiency {c['efficiency']:.3f} "
                     f"(wall {c['efficiency_wall']:.3f})"
                     f", loss check max rel diff {c.get('check_max_rel_diff')}"
                     f" {c.get('check_losses_1')} vs {c.get('check_losses_n')}")
    for f in sorted(out_dir.glob("many*.json")):
        r = json.loads(f.read_text())
        if "comm" in r:
            lines.append(f"{f.stem} comm: {r['comm']}")
        lines.append(f"{f.stem} engine: {r.get('engine')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the result JSON here (rank 0)")
    p.add_argument("--compare", nargs=2, metavar=("ONE", "MANY"),
                   help="compare a one-GPU and an N-GPU result file")
    p.add_argument("--rtol", type=float, default=2e-2,
                   help="loss check tolerance (bf16 compute: rows are summed in other orders)")
    p.add_argument("--tiny", action="store_true", help="small models on the CPU (tests the script)")
    p.add_argument("--per-rank-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--check-batch", type=int, default=0,
                   help="first train --check-steps steps at this global batch, record losses")
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--teacher", default="auto", choices=("auto", "replicated", "sharded"))
    p.add_argument("--no-compile", action="store_true", help="eager engine (no torch.compile)")
    p.add_argument("--reshard", default="auto", choices=("auto", "yes", "no"),
                   help="student layers resharded after forward (auto: by size)")
    p.add_argument("--cpu-dtype", default="float32", help="compute dtype of --tiny runs")
    p.add_argument("--param-gather", default=Dist().param_gather, choices=PARAM_GATHERS,
                   help="dtype of the student's all-gathers (kdengine.distributed)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="no gathers during the teacher's forward (FSDP2's own order)")
    p.add_argument("--dtensor-optim", action="store_true",
                   help="torch's clip_grad_norm_ and AdamW on the DTensors")
    p.add_argument("--student-placement", choices=("auto", "replicated", "sharded"),
                   default=None, help="how the ranks hold the student (default: "
                   "KDENGINE_STUDENT_PLACEMENT, else auto: by size)")
    p.add_argument("--layers-per-group", type=int, default=None,
                   help="consecutive student layers in one FSDP2 group (default: by size)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="profile STEPS more steps: busy, NCCL and sync time a step")
    p.add_argument("--sync-debug", action="store_true",
                   help="list where the host waits for the device in 2 more steps")
    p.add_argument("--comm-probe", action="store_true",
                   help="N ranks: time an all-gather and a reduce-scatter first")
    p.add_argument("--summary", metavar="DIR", help="print the table of a multi_gpu.sh OUT_DIR")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary:
        print(summary_table(Path(args.summary)))
        return 0
    if args.compare:
        one, many = (json.loads(Path(f).read_text()) for f in args.compare)
        result = compare(one, many, args.rtol)
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result.get("check_ok", True) else 1
    result = run_bench(args)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: result.get(k) for k in ("world_size", "tokens_per_s_median",
                                              "peak_memory_gib", "teacher_placed", "steps_ms",
                                              "host_ms", "profile")}
        print(json.dumps(summary))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
