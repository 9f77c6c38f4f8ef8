"""A train run's id is its directory's name, however the directory was chosen (--run-name in the
runs dir, or --run-dir anywhere, with or without a --run-name): the id its events carry, the id
`kdtui runs` lists it under and the id `kdtui watch` / `kdtui resume` find it by are one. Runs
written before, whose run_started carried --run-name, are listed under their directory's name
too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdengine.cli import parse_train_args, run_dir_for
from kdengine.events import read_events
from kdtui.runs import find_run, list_runs


@pytest.mark.parametrize("how", [("--run-dir", "elsewhere/mine", "--run-name", "a-label"),
                                 ("--run-dir", "elsewhere/plain"),
                                 ("--run-name", "named")])
def test_a_runs_events_carry_the_id_it_is_listed_and_found_by(
        how: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdengine.run import run

    monkeypatch.setenv("KDENGINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    # a teacher that is not there: the run starts (run_started), then fails loading it, which
    # is all this needs of a run, in a fraction of a second
    config, _ = parse_train_args(["--teacher", str(tmp_path / "no-teacher"), "--student",
                                  str(tmp_path / "no-student"), "--data", "demo://python-stdlib",
                                  "--device", "cpu", *how])
    run_dir = run_dir_for(config)
    run_dir.mkdir(parents=True)
    assert run(config, run_dir).status == "failed"
    started = read_events(run_dir / "events.jsonl")[0]
    assert started["type"] == "run_started" and started["run_id"] == run_dir.name
    assert started["config"]["run_name"] == config.run_name  # the label stays in the config
    assert f"run {run_dir.name} on cpu" in (run_dir / "launch.log").read_text()
    assert [r.run_id for r in list_runs(run_dir.parent)] == [run_dir.name]
    assert find_run(run_dir.parent, started["run_id"]) == run_dir


def test_an_old_run_whose_events_carry_its_run_name_is_listed_under_its_directory(
        tmp_path: Path) -> None:
    old = tmp_path / "mine"
    old.mkdir()
    (old / "events.jsonl").write_text(json.dumps(
        {"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "run_id": "kd-20261101-120000",
         "run_dir": str(old), "config": {}}) + "\n")
    assert [r.run_id for r in list_runs(tmp_path)] == ["mine"]
    assert find_run(tmp_path, "mine") == old
