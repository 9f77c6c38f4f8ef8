"""A --seq-len longer than a model's max_position_embeddings (its config.json) is refused before
any run directory exists, by `kdengine train`, its --check (what the dashboard's check stage
runs) and `kdengine cache-teacher`: exit 2, one line naming --seq-len, the model and its limit,
and the fix. A config.json without the key sets no limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _set_limit(model: str, limit: int | None) -> None:
    path = Path(model) / "config.json"
    config = json.loads(path.read_text())
    config.pop("max_position_embeddings", None)
    if limit is not None:
        config["max_position_embeddings"] = limit
    path.write_text(json.dumps(config))


def _train_argv(inputs: dict[str, str], run_dir: Path, seq_len: int, *extra: str) -> list[str]:
    return ["train", "--teacher", inputs["teacher"], "--student", inputs["student"], "--data",
            inputs["data"], "--run-dir", str(run_dir), "--seq-len", str(seq_len),
            "--batch-size", "2", "--steps", "2", "--device", "cpu", *extra]


def _train(inputs: dict[str, str], run_dir: Path, seq_len: int, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    """`kdengine train` as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "kdengine",
                           *_train_argv(inputs, run_dir, seq_len, *extra)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_seq_len_beyond_the_students_positions_is_refused_before_a_run_dir(
        tiny_run_inputs, tmp_path, check, one_line_refusal, engine_in_process) -> None:
    _set_limit(tiny_run_inputs["teacher"], 4096)
    _set_limit(tiny_run_inputs["student"], 256)
    run_dir = tmp_path / "run"
    if check:  # (in this process: a new interpreter's torch import checks nothing more)
        done = engine_in_process(*_train_argv(tiny_run_inputs, run_dir, 512, "--check"))
    else:  # as a user runs it
        done = _train(tiny_run_inputs, run_dir, 512)
    line = one_line_refusal(done, "train", "--seq-len: ")
    assert "512 is more than the student's max_position_embeddings (256" in line
    assert line.endswith("give --seq-len 256 or less")
    assert not run_dir.exists()


def test_a_seq_len_beyond_the_teachers_positions_names_the_teacher(
        tiny_run_inputs, tmp_path, one_line_refusal, engine_in_process) -> None:
    _set_limit(tiny_run_inputs["teacher"], 128)
    done = engine_in_process(*_train_argv(tiny_run_inputs, tmp_path / "run", 200, "--check"))
    line = one_line_refusal(done, "train", "--seq-len: ")
    assert "200 is more than the teacher's max_position_embeddings (128" in line
    assert line.endswith("give --seq-len 128 or less")


def test_a_config_without_max_position_embeddings_sets_no_limit(tiny_run_inputs, tmp_path,
                                                               engine_in_process) -> None:
    for role in ("teacher", "student"):
        _set_limit(tiny_run_inputs[role], None)
    done = engine_in_process(*_train_argv(tiny_run_inputs, tmp_path / "run", 512, "--check"))
    assert done.returncode == 0, done.stderr


def test_a_seq_len_at_the_limit_passes(tiny_run_inputs, tmp_path, engine_in_process) -> None:
    _set_limit(tiny_run_inputs["student"], 256)
    done = engine_in_process(*_train_argv(tiny_run_inputs, tmp_path / "run", 256, "--check"))
    assert done.returncode == 0, done.stderr


def test_cache_teacher_refuses_a_seq_len_beyond_the_teachers_positions(
        tiny_run_inputs, tmp_path, one_line_refusal, engine_in_process) -> None:
    _set_limit(tiny_run_inputs["teacher"], 256)
    out = tmp_path / "cache"
    done = engine_in_process(
        "cache-teacher", "--teacher", tiny_run_inputs["teacher"], "--data",
        tiny_run_inputs["data"], "--seq-len", "300", "--device", "cpu", "--top-k", "4", "--out",
        str(out), "--check")
    line = one_line_refusal(done, "cache-teacher", "--seq-len: ")
    assert "300 is more than the teacher's max_position_embeddings (256" in line
    assert not out.exists()


def test_the_dashboards_check_names_seq_len(tiny_run_inputs, tmp_path) -> None:
    from kdengine.config import ConfigError, RunConfig
    from kdtui.launch.local import LocalLauncher

    _set_limit(tiny_run_inputs["student"], 256)
    config = RunConfig.from_mapping(dict(teacher=tiny_run_inputs["teacher"],
                                         student=tiny_run_inputs["student"],
                                         data=tiny_run_inputs["data"], seq_len=512,
                                         batch_size=2, device="cpu",
                                         run_dir=str(tmp_path / "run")))
    with pytest.raises(ConfigError) as refused:
        LocalLauncher(config, tmp_path / "runs").check()
    assert refused.value.field == "seq_len"
    assert "max_position_embeddings (256" in refused.value.message


def test_the_limit_is_max_position_embeddings_times_a_linear_scaling() -> None:
    from kdengine.model_facts import position_limit

    assert position_limit({"max_position_embeddings": 4096}) == 4096
    assert position_limit({"max_position_embeddings": 4096,
                           "rope_scaling": {"type": "linear", "factor": 4.0}}) == 16384
    assert position_limit({"max_position_embeddings": 131072, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0}}) == 131072  # already the extended length
    assert position_limit({}) is None and position_limit({"max_position_embeddings": None}) is None
