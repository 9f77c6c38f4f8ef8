"""A run started from the dashboard on this machine takes every GPU it may, as a run on a
remote host does: several GPUs (device auto or cuda, a batch they divide) start it under
torchrun (`python -m kdengine.distributed.launch`), and its resume starts as many ranks again.
The engine's own `--check` counts the GPUs; on a machine with one GPU or none it does not wait
for torch's import to say so. (The GPU side: benchmarks/gpu_features.py, case local-2-gpus.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdengine.config import RunConfig
from kdengine.preflight import cuda_devices_here
from kdtui.launch.local import LocalLauncher, _gpus_found
from kdtui.launch.resume import LocalResumer

TORCHRUN = [sys.executable, "-m", "kdengine.distributed.launch", "--standalone",
            "--nproc-per-node"]


def test_the_engines_check_counts_the_gpus_and_a_machine_without_them_runs_one_process(
        runs_dir, tiny_run_inputs) -> None:
    config = RunConfig(**tiny_run_inputs, steps=4, batch_size=4, seq_len=32, run_name="one")
    launcher = LocalLauncher(config, runs_dir)
    launcher.check()  # the real `kdengine train --check`, in a child process
    assert launcher.gpus == 0  # this machine has no CUDA device
    assert launcher._ranks_note() == ""
    assert launcher.command()[:4] == [sys.executable, "-m", "kdengine", "train"]


def test_several_gpus_start_the_run_under_torchrun_with_as_many_ranks_as_divide_the_batch(
        runs_dir, tiny_run_inputs) -> None:
    check = {"ok": True, "preflight": {"cuda_devices": 4}}
    assert _gpus_found(json.dumps(check)) == 4
    assert _gpus_found(json.dumps({"ok": True, "preflight": {}})) == 0  # an older engine's
    assert _gpus_found("not json") == 0
    launcher = LocalLauncher(RunConfig(**tiny_run_inputs, batch_size=6), runs_dir)
    launcher.gpus = 4
    command = launcher.command()
    assert command[:6] == [*TORCHRUN, "3"]  # 3 of the 4 GPUs divide the batch of 6
    assert launcher._ranks_note() == "4 GPUs: torchrun, 3 ranks"  # the check stage says so
    assert command[6:9] == ["-m", "kdengine", "train"]
    for one_process in (RunConfig(**tiny_run_inputs, batch_size=8, device="cuda:1"),
                        RunConfig(**tiny_run_inputs, batch_size=8, lmbda=0.5)):
        launcher = LocalLauncher(one_process, runs_dir)
        launcher.gpus = 4
        assert launcher.command()[:2] == [sys.executable, "-m"], one_process
        assert launcher.command()[2] == "kdengine"


def test_gpus_are_counted_by_torch_only_where_the_driver_lists_several(tmp_path: Path) -> None:
    driver = tmp_path / "gpus"
    assert cuda_devices_here("auto", driver) == 0  # no NVIDIA driver
    driver.mkdir()
    (driver / "0000:01:00.0").mkdir()
    assert cuda_devices_here("cuda", driver) == 1  # one GPU: torch not asked
    (driver / "0000:02:00.0").mkdir()
    assert cuda_devices_here("auto", driver) == 0  # torch here sees no CUDA device
    assert cuda_devices_here("cuda:1", driver) == 0  # a named GPU: one process
    assert cuda_devices_here("cpu", driver) == 0


def test_the_resume_of_a_torchrun_run_starts_as_many_ranks_again(runs_dir) -> None:
    run = runs_dir / "ranks"
    run.mkdir()
    started = {"v": 1, "seq": 0, "type": "run_started", "run_id": "ranks", "world_size": 2,
               "backend": "nccl"}
    step = {"v": 1, "seq": 1, "type": "step", "step": 10, "loss": 1.0}
    (run / "events.jsonl").write_text(json.dumps(started) + "\n" + json.dumps(step) + "\n")
    assert LocalResumer(run).command() == [*TORCHRUN, "2", "-m", "kdengine", "train",
                                           "--resume", str(run)]
    one = runs_dir / "one"
    one.mkdir()
    (one / "events.jsonl").write_text(json.dumps({**started, "world_size": None}) + "\n")
    assert LocalResumer(one).command()[:3] == [sys.executable, "-m", "kdengine"]
