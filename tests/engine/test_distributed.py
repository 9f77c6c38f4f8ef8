"""Data parallel under torchrun on the CPU (gloo, 2 ranks): the same loss curve as one process
with the same global batch, one event stream written by rank 0, an HF-layout final student, exact
resume from a sharded (DCP) checkpoint, and a failed rank named in the events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdengine.events import read_events

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2"]
# torchrun, but a cancelled run exits as one process does (kdengine.distributed.launch)
LAUNCH = [sys.executable, "-m", "kdengine.distributed.launch", *TORCHRUN[3:]]
STEPS = 8


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               KDENGINE_RUNS_DIR=str(tmp_path / "runs"), **extra)
    # the repository first: the subprocesses import the engine under test
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + \
        env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], tmp_path: Path, timeout: int = 120,
         **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=_env(tmp_path, **env))
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "step"}


def _val_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["val_loss"] for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "eval"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 8-step run with one process and the same run under torchrun with 2 ranks, the
    student replicated (what its size picks) and sharded (KDENGINE_STUDENT_PLACEMENT)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_run_args, write_tiny_inputs

    tmp = tmp_path_factory.mktemp("dp")
    inputs = write_tiny_inputs(tmp, student_layers=2)
    dirs = {"one": tmp / "one", "two": tmp / "two", "two-sharded": tmp / "two-sharded"}
    for name, prefix, env in (("one", [sys.executable], {}), ("two", TORCHRUN, {}),
                              ("two-sharded", TORCHRUN,
                               {"KDENGINE_STUDENT_PLACEMENT": "sharded"})):
        args = tiny_run_args(inputs, dirs[name], steps=STEPS, eval_every=4, checkpoint_every=4,
                             log_every=1)
        out = _run([*prefix, "-m", "kdengine", *args], tmp, **env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dirs["tmp"] = tmp
    return dirs


@pytest.mark.parametrize("two_ranks", ["two", "two-sharded"])
def test_two_ranks_follow_the_one_process_loss_curve(runs: dict[str, Path],
                                                     two_ranks: str) -> None:
    one, two = _losses(runs["one"]), _losses(runs[two_ranks])
    assert sorted(two) == list(range(1, STEPS + 1))
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert _val_losses(runs[two_ranks]) == pytest.approx(_val_losses(runs["one"]), rel=1e-5)
    placement = two_ranks.removeprefix("two-") if "-" in two_ranks else "replicated"
    assert (f"trainable params, {placement} over 2 ranks"
            in (runs[two_ranks] / "launch.log").read_text())
    # the loss must move, or equal curves would prove nothing
    assert two[STEPS] < two[1]


def test_only_rank_0_writes_events_and_the_final_student(runs: dict[str, Path]) -> None:
    events = read_events(runs["two"] / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events)))
    started = [e for e in events if e["type"] == "run_started"]
    assert len(started) == 1 and started[0]["world_size"] == 2
    assert started[0]["backend"] == "gloo"
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    log = (runs["two"] / "launch.log").read_text()
    assert log.count(f"step {STEPS}/{STEPS} ") == 1
    assert "replicated over 2 ranks" in log
    one = load_file(str(runs["one"] / "final" / "model.safetensors"))
    two = load_file(str(runs["two"] / "final" / "model.safetensors"))
    assert sorted(one) == sorted(two)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    assert (runs["two"] / "final" / "tokenizer.json").exists()


def _interrupted_copy(run_dir: Path, dest: Path, step: int) -> Path:
    """The run as a kill right after its step-`step` checkpoint would have left it."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy2(run_dir / "config.json", dest / "config.json")
    name = f"step-{step:08d}"
    shutil.copytree(run_dir / "checkpoints" / name, dest / "checkpoints" / name)
    lines = []
    for line in (run_dir / "events.jsonl").read_text().splitlines(keepends=True):
        lines.append(line)
        event = json.loads(line)
        if event["type"] == "checkpoint" and event["step"] == step:
            break
    (dest / "events.jsonl").write_text("".join(lines))
    return dest


@pytest.mark.parametrize("two_ranks", ["two", "two-sharded"])
def test_a_sharded_checkpoint_resumes_exactly(runs: dict[str, Path], two_ranks: str) -> None:
    """A DCP checkpoint of two ranks (the student replicated, or sharded with FSDP2) resumes
    under torchrun bit for bit."""
    ckpt = runs[two_ranks] / "checkpoints" / "step-00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["sharded"] is True and meta["world_size"] == 2
    assert (ckpt / ".metadata").exists() and not list(ckpt.parent.glob(".tmp-*"))
    resumed = _interrupted_copy(runs[two_ranks], runs["tmp"] / f"resumed2-{two_ranks}", 4)
    env = {"KDENGINE_STUDENT_PLACEMENT": "sharded"} if two_ranks == "two-sharded" else {}
    out = _run([*TORCHRUN, "-m", "kdengine", "train", "--resume", str(resumed)], runs["tmp"],
               **env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    whole, again = _losses(runs[two_ranks]), _losses(resumed)
    assert sorted(again) == list(range(1, STEPS + 1))
    assert [again[s] for s in range(5, STEPS + 1)] == [whole[s] for s in range(5, STEPS + 1)]
    assert "resumed from" in (resumed / "launch.log").read_text()


def test_one_process_resumes_a_two_rank_checkpoint(runs: dict[str, Path]) -> None:
    resumed = _interrupted_copy(runs["two-sharded"], runs["tmp"] / "resumed1", 4)
    out = _run([sys.executable, "-m", "kdengine", "train", "--resume", str(resumed)],
               runs["tmp"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    whole, again = _losses(runs["two-sharded"]), _losses(resumed)
    assert [again[s] for s in range(5, STEPS + 1)] == pytest.approx(
        [whole[s] for s in range(5, STEPS + 1)], rel=1e-5)


def _workers(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of a torchrun's worker processes (its children, by their RANK variable)."""
    ranks = {}
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = [v for v in env if v.startswith(b"RANK=")]
            if rank:
                ranks[int(rank[0][5:])] = int(child)
    return ranks


def _cancel_two_ranks(tmp_path: Path, send) -> tuple[subprocess.Popen, str, list[dict]]:
    """A 2-rank run started by kdengine.distributed.launch in its own process group, `send(proc)`
    once it has taken 3 steps: the launcher, its stderr and the run's events."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_run_args, write_tiny_inputs

    inputs = write_tiny_inputs(tmp_path, student_layers=2)
    run_dir = tmp_path / "run"
    args = tiny_run_args(inputs, run_dir, steps=100000, eval_every=0, checkpoint_every=0,
                         log_every=1)
    proc = subprocess.Popen([*LAUNCH, "-m", "kdengine", *args], env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len([e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        send(proc)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, stderr, read_events(run_dir / "events.jsonl")


def _ended_cancelled(events: list[dict], code: int, log: str) -> None:
    # a one-process cancel checkpoints its last step; torchrun's ranks keep the periodic ones
    # only (kdengine.trainer.KDTrainer.checkpoint_at_cancel; none here: checkpoint_every=0)
    assert not [e for e in events if e["type"] == "checkpoint"]
    finished = [e for e in events if e["type"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["status"] == "cancelled", events[-3:]
    assert finished[0]["exit_code"] == code
    assert not [e for e in events if e["type"] == "log" and e.get("level") == "error"]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_a_signal_only_one_rank_receives_stops_every_rank_as_cancelled(
        tmp_path: Path) -> None:
    """Ranks agree on a stop over the host (the loop keeps a step queued on the device): rank 1
    alone gets SIGTERM; rank 0, which writes the events, stops at the same step, and no rank
    waits in a collective for one that left. The ranks end as a cancelled engine does (128 +
    SIGTERM), which plain torchrun reports as a failure (exit 1, a traceback); the launcher
    exits 143 as one process would."""
    proc, stderr, events = _cancel_two_ranks(
        tmp_path, lambda proc: os.kill(_workers(proc.pid)[1], signal.SIGTERM))
    _ended_cancelled(events, 143, stderr + (tmp_path / "run" / "launch.log").read_text())
    assert proc.returncode == 143


def test_a_cancelled_torchrun_run_exits_as_a_cancelled_single_process_run(
        tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, torchrun included, as `kdtui cancel` sends
    SIGTERM to it): plain torchrun re-raises the signal as a SignalException once its workers
    stopped, exit 1 with its traceback in launch.log; the launcher exits 130 as `kdengine train`
    alone does, and the events and log are those of a cancelled run."""
    proc, stderr, events = _cancel_two_ranks(
        tmp_path, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    _ended_cancelled(events, 130, stderr + (tmp_path / "run" / "launch.log").read_text())
    assert proc.returncode == 130


# Two ranks of the tiny bench pair, trained by KDTrainer's own loop (a step left queued while
# the next is queued); at step 3 only rank 1's own loss is NaN. Each rank writes how it ended.
NAN_ON_ONE_RANK = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import multi_gpu
    from kdengine.distributed import from_env
    from kdengine.stop import StopSignals
    from kdengine.trainer import LossNotFinite

    out, placement, signalled = Path(sys.argv[1]), sys.argv[3], sys.argv[4:] == ["signal"]
    args = multi_gpu.parse_args(["--tiny", "--seq-len", "32", "--student-placement", placement])
    dist = from_env("cpu")
    run_dir = out / f"rank-{dist.rank}"
    run_dir.mkdir(parents=True)
    trainer, _, log = multi_gpu.make_trainer(args, dist, dist.device(multi_gpu.torch.device("cpu")),
                                             4, 8, run_dir)
    globalize = dist.globalize

    def nan_on_rank_1_at_step_3(parts):  # the rank's own loss, before the ranks sum it
        if dist.rank == 1 and trainer.step == 3 and parts.loss.requires_grad:
            parts.loss = parts.loss * float("nan")
        if signalled and dist.rank == 0 and trainer.step == 3 and parts.loss.requires_grad:
            os.kill(os.getpid(), signal.SIGTERM)  # a cancel reaching rank 0 first
        return globalize(parts)

    dist.globalize = nan_on_rank_1_at_step_3
    trainer.stop = dist.agreed_stop(StopSignals())  # as kdengine.run stops its ranks
    try:
        with trainer.stop:
            trainer.run(evaluate_start=False)
        ended = "completed"
    except LossNotFinite as exc:
        ended = str(exc)
    (out / f"ended-{dist.rank}.json").write_text(json.dumps(
        {"ended": ended, "step": trainer.step}))
    log.close()
    dist.close()
""")


@pytest.mark.parametrize(("placement", "signalled"), [
    ("replicated", ""), ("sharded", ""),
    # a SIGTERM reaches rank 0 alone while that step is queued: rank 0 read the step's loss
    # before the ranks agreed on the stop, failed on it alone, and rank 1 waited in the stop's
    # all-reduce for it; now every rank reads it once they agree
    ("replicated", "signal")])
def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path: Path, placement: str,
                                                              signalled: str) -> None:
    """The backward runs on each rank's own loss, but the loss every rank reads (and the fused
    update's guard) is the all-reduced one: rank 0, whose own loss is finite, stops at the same
    step as rank 1, with no update applied, and neither waits for the other."""
    script = tmp_path / "nan_rank.py"
    script.write_text(NAN_ON_ONE_RANK)
    out = _run([*TORCHRUN, str(script), str(tmp_path), str(BENCH.parent), placement,
                *([signalled] if signalled else [])], tmp_path, timeout=180)
    ended = {r: json.loads((tmp_path / f"ended-{r}.json").read_text()) for r in (0, 1)}
    for rank in (0, 1):
        assert ended[rank]["step"] == 3, (ended, out.stderr[-2000:])
        assert ended[rank]["ended"].startswith("loss is nan at step 3"), ended


# A rank that fails while rank 0 waits: in a collective (gloo raises when the peer's connection
# closes) or stuck beyond what a collective reports (NCCL waits; rank 0's watcher ends the run).
FAILING_RANK = textwrap.dedent("""
    import signal, sys, time, traceback
    from pathlib import Path
    import torch.distributed as tdist
    from kdengine import events as ev
    from kdengine.distributed import from_env

    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    # torchrun sends SIGTERM when a rank dies; the trainer's StopSignals only notes it
    signal.signal(signal.SIGTERM, lambda *args: None)
    dist = from_env("cpu")
    log = dist.run_log(run_dir)
    try:
        if dist.rank == 1:
            raise FileNotFoundError("/data/shard-7.bin is missing on this node")
        if mode == "collective":
            tdist.barrier()
        else:
            time.sleep(60)
    except Exception as exc:  # what kdengine.run.run does with any failure
        log.emit(ev.LOG, level="error", message=f"{type(exc).__name__}: {exc}",
                 traceback=traceback.format_exc())
        log.emit(ev.RUN_FINISHED, status="failed", exit_code=1)
    finally:
        log.close()
        dist.close()
    sys.exit(1)
""")


@pytest.mark.parametrize("mode", ["collective", "stuck"])
def test_a_failed_rank_is_named_in_rank_0s_events(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = _run([*TORCHRUN, str(script), str(run_dir), mode], tmp_path, timeout=60)
    assert out.returncode != 0
    events = read_events(run_dir / "events.jsonl")
    errors = [e for e in events if e["type"] == "log" and e["level"] == "error"]
    assert errors[0]["rank"] == 1
    assert "shard-7.bin is missing" in errors[0]["message"]
    assert "FileNotFoundError" in errors[0]["traceback"]
    finished = [e for e in events if e["type"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["status"] == "failed"
    if mode == "stuck":
        assert finished[0]["failed_ranks"] == [1]
    log = (run_dir / "launch.log").read_text()
    assert "[rank 1] ERROR: FileNotFoundError: /data/shard-7.bin is missing" in log


def test_the_remote_launcher_starts_torchrun_on_a_multi_gpu_host() -> None:
    from kdengine.config import RunConfig
    from kdtui.remote.stages import engine_launcher

    py = "/env/bin/python"
    torchrun = [py, "-m", "kdengine.distributed.launch", "--standalone", "--nproc-per-node"]
    assert engine_launcher(py, 1, RunConfig(batch_size=8)) == [py]
    assert engine_launcher(py, 2, RunConfig(batch_size=8)) == [*torchrun, "2"]
    assert engine_launcher(py, 8, RunConfig(batch_size=12)) == [*torchrun, "6"]
    assert engine_launcher(py, 4, RunConfig(batch_size=8, device="cuda:1")) == [py]
    assert engine_launcher(py, 2, RunConfig(batch_size=3)) == [py]


BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_gpu.py"
BENCH_TINY = ["--tiny", "--cpu-dtype", "bfloat16", "--seq-len", "32", "--per-rank-batch", "2",
              "--warmup", "1", "--steps", "1", "--check-batch", "4", "--check-steps", "2"]


def test_an_unknown_student_placement_in_the_environment_is_refused_naming_it(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run([sys.executable, "-m", "kdengine", "train", "--demo", "--run-dir", str(run_dir)],
               tmp_path, timeout=60, KDENGINE_STUDENT_PLACEMENT="zero3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "kdengine train: error: KDENGINE_STUDENT_PLACEMENT: is 'zero3': set it to replicated "
        "(the whole student on every GPU), sharded (FSDP2) or auto (by its size), or unset it"]
    assert not run_dir.exists()


def test_a_student_is_replicated_while_its_training_state_is_a_tenth_of_a_gpu() -> None:
    """16 bytes a parameter (fp32 weights and gradients, two AdamW moments) against the
    device's memory: a 0.5B student on an H200 (8 GB of 141) is replicated, a 1.2B one (20 GB)
    is sharded."""
    from kdengine.distributed import student_placement_by_size

    h200 = 150_109_880_320
    assert student_placement_by_size(494_032_768, h200) == "replicated"  # Qwen2.5-0.5B
    assert student_placement_by_size(596_049_920, h200) == "replicated"  # Qwen3-0.6B
    assert student_placement_by_size(1_235_814_400, h200) == "sharded"  # Llama-3.2-1B
    assert student_placement_by_size(10**6, float("inf")) == "replicated"  # the CPU (gloo)


def test_fsdp_groups_take_consecutive_layers_up_to_a_size() -> None:
    """Layers of a few MB share a group (each group costs collectives and hooks every step);
    layers of a few hundred MB keep one each."""
    from torch import nn

    from kdengine.distributed import GROUP_BYTES_AT_LEAST, layers_per_group_of

    def layers(n: int, width: int) -> list[nn.Module]:
        return [nn.Linear(width, width, bias=False, device="meta") for _ in range(n)]

    mb60 = 3872  # ~60 MB of fp32 a layer, a Qwen2.5-0.5B block's size
    assert layers_per_group_of(layers(24, mb60)) == -(-GROUP_BYTES_AT_LEAST // (mb60 * mb60 * 4))
    assert layers_per_group_of(layers(24, mb60)) == 4
    assert layers_per_group_of(layers(16, 8192)) == 1  # 268 MB a layer
    assert layers_per_group_of(layers(2, 64)) == 2  # never more than there are
    assert layers_per_group_of([]) == 1


def test_bf16_ranks_compute_the_one_process_function(tmp_path: Path) -> None:
    """bf16 autocast over fp32 master weights on both paths: with the student's layers gathered
    in fp32 or in bf16 (what autocast casts them to), two ranks' first loss is the one-process
    loss up to the order of the cross-rank sum; later steps differ only by gradient rounding.
    (FSDP2's usual MixedPrecisionPolicy, inputs cast to bf16, would change the function.)"""
    one = tmp_path / "one.json"
    out = _run([sys.executable, str(BENCH), *BENCH_TINY, "--out", str(one)], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    first = json.loads(one.read_text())["check_losses"]
    # sharded: the tiny student's layers share one FSDP2 group by size, "compute" runs a group
    # per layer; replicated: DDP, the whole student on each rank
    sharded = ["--student-placement", "sharded"]
    for gather, flags in (("fp32", sharded), ("compute", [*sharded, "--layers-per-group", "1"]),
                          ("replicated", ["--student-placement", "replicated"])):
        two = tmp_path / f"two-{gather}.json"
        _run([*TORCHRUN, str(BENCH), *BENCH_TINY, *flags, "--out", str(two),
              *(["--param-gather", gather] if gather != "replicated" else [])], tmp_path)
        # (a rank may abort at gloo's teardown after the result is written: the file counts)
        assert two.exists(), f"no result for {gather}"
        result = json.loads(two.read_text())
        assert result["engine"]["optimizer"] == ("AdamW" if gather == "replicated"
                                                 else "ShardAdamW")
        losses = result["check_losses"]
        assert losses[0] == pytest.approx(first[0], rel=1e-6), gather
        assert losses[1] == pytest.approx(first[1], rel=1e-4), gather
        assert losses[1] != first[0]  # the step changed the weights


def test_fp8_student_matmuls_under_two_sharded_ranks_follow_the_one_process_run(
        tmp_path: Path) -> None:
    """--student-matmuls float8 under torchrun: FSDP2 gathers each block's weights and the FP8
    MLPs read them as one process does. Every quantization is per token or per weight row, and
    the weight gradients are not quantized, so splitting the batch over ranks changes only the
    order of the gradient's sums: the losses follow the one process's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_run_args, write_tiny_inputs

    inputs = write_tiny_inputs(tmp_path, student_layers=2)
    curves = {}
    for name, prefix in (("one", [sys.executable]), ("two", TORCHRUN)):
        args = tiny_run_args(inputs, tmp_path / name, steps=6, eval_every=3, checkpoint_every=0,
                             log_every=1, student_matmuls="float8")
        out = _run([*prefix, "-m", "kdengine", *args], tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        log = (tmp_path / name / "launch.log").read_text()
        assert "student: 2 MLPs of 2 through float8 e4m3 matmuls" in log
        curves[name] = _losses(tmp_path / name)
    assert "over 2 ranks" in log  # (the student is sharded whenever torchrun starts the run)
    one, two = curves["one"], curves["two"]
    assert two[1] == pytest.approx(one[1], rel=1e-6)
    assert two == pytest.approx(one, rel=1e-4)
    assert two[6] < two[1]
