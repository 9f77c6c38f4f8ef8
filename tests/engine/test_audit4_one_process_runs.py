"""On-policy, seq_kd and teacher-cache runs train on one process (docs/on-policy.md, Limits;
docs/teacher-cache.md). Under torchrun they were refused only by the trainer, after the models
and data were loaded into a run directory: exit 1, a traceback per rank in launch.log, and the
run listed as failed; and the remote launcher started them under torchrun on any multi-GPU box,
so a dashboard's on-policy run there always failed. Now each rank refuses them at once (one
line, exit 2, no run directory) and the remote launcher starts them as one process."""

from __future__ import annotations

import os
import subprocess

import pytest

from kdengine.config import RunConfig


@pytest.mark.parametrize("extra, field", [
    (["--lmbda", "0.5", "--max-new-tokens", "8"], "--lmbda"),
    (["--seq-kd", "--max-new-tokens", "8"], "--seq-kd"),
])
@pytest.mark.parametrize("check", [True, False])
def test_a_rank_of_torchrun_refuses_an_on_policy_run_before_a_run_directory(
        tiny_run_inputs, tiny_args, tmp_path, engine_cmd, one_line_refusal, extra, field,
        check) -> None:
    run_dir = tmp_path / "run"
    argv = [*tiny_args(tiny_run_inputs, run_dir, seq_len=32), "--device", "cpu", *extra,
            *(["--check"] if check else [])]
    # what torchrun gives a rank (no rendezvous needed: the refusal comes first)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
           "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    done = subprocess.run([*engine_cmd, *argv], capture_output=True, text=True, timeout=120,
                          env=env)
    line = one_line_refusal(done, "train", f"{field}: on-policy and seq_kd runs train on one "
                            "process")
    assert line.endswith("run them without torchrun"), line
    assert not run_dir.exists()


def test_a_rank_of_torchrun_refuses_a_run_from_a_teacher_cache_before_a_run_directory(
        tiny_run_inputs, tmp_path, engine_cmd, one_line_refusal) -> None:
    cache = tmp_path / "cache"
    made = subprocess.run([*engine_cmd, "cache-teacher", "--teacher", tiny_run_inputs["teacher"],
                           "--data", tiny_run_inputs["data"], "--seq-len", "32", "--top-k", "4",
                           "--device", "cpu", "--out", str(cache)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    run_dir = tmp_path / "run"
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([*engine_cmd, "train", "--teacher-cache", str(cache), "--student",
                           tiny_run_inputs["student"], "--data", tiny_run_inputs["data"],
                           "--seq-len", "32", "--device", "cpu", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=120, env=env)
    one_line_refusal(done, "train", "--teacher-cache: runs from a teacher cache train on one "
                     "process for now: run them without torchrun")
    assert not run_dir.exists()


def test_the_remote_launcher_starts_one_process_runs_without_torchrun() -> None:
    from kdtui.remote.stages import engine_launcher

    py = "/venv/bin/python"
    assert engine_launcher(py, 4, RunConfig(batch_size=8))[1:3] == ["-m",
                                                                     "kdengine.distributed.launch"]
    for config in (RunConfig(batch_size=8, lmbda=0.5), RunConfig(batch_size=8, seq_kd=True),
                   RunConfig(batch_size=8, teacher_cache="/data/cache")):
        assert engine_launcher(py, 4, config) == [py], config
