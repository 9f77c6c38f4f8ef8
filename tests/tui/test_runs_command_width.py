"""`kdtui runs` (the list printed to the terminal) fits the terminal's width: at 80 columns each
run was wrapped onto two lines (its reattach command, a whole path, after an ISO start time);
now the columns give way as the dashboard's runs list's do (a short start time, the reattach
by the run's name, then the reattach said once below), and at 120 columns every column shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.cells import cell_len

from kdtui.cli import main as kdtui_main

NAMES = ("kd-20261130-074500", "kd-20261130-081500", "kd-20261130-090000")
LONG = "distill-qwen-0.5b-20261130-091500"  # an id of the user's own: kept whole at 80


@pytest.fixture
def listed(runs_dir: Path, write_run, tmp_path: Path) -> list[str]:
    return made(runs_dir, write_run, tmp_path, NAMES)


def made(runs_dir: Path, write_run, tmp_path: Path, names) -> list[str]:
    for i, name in enumerate(names):
        run = write_run(runs_dir / name, steps=40, upto=None if i else 20, finished=bool(i))
        events = run / "events.jsonl"  # started one after another
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        events.write_text("".join(json.dumps({**e, "t": e["t"] + 3600 * i}) + "\n"
                                  for e in lines))
    evidence = Path(tmp_path / "evidence" / "kd-20261130-093000")
    evidence.mkdir(parents=True)
    (evidence / "dispatch.json").write_text(json.dumps(
        {"run_id": "kd-20261130-093000", "host": "gpu-box-a100", "launched": True,
         "dispatched_at": "2026-11-30T09:30:00Z", "config": {"steps": 200},
         "state": "completed", "verdict": {"status": "inconclusive"}}))
    return [*names, "kd-20261130-093000"]


def printed(monkeypatch, capsys, columns: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert kdtui_main(["runs"]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("long_id", [False, True])
def test_kdtui_runs_puts_each_run_on_one_line_of_the_terminal(runs_dir, write_run, tmp_path,
                                                               monkeypatch, capsys, columns,
                                                               long_id):
    names = made(runs_dir, write_run, tmp_path, (*NAMES, LONG) if long_id else NAMES)
    lines = printed(monkeypatch, capsys, columns)
    assert all(cell_len(line) <= columns for line in lines), "\n".join(lines)
    for name in names:  # one line each, its id whole
        assert len([line for line in lines if line.startswith(name + " ")]) == 1, lines
    header = lines[0].split()
    assert header[:4] == ["RUN", "HOST", "STATE", "VERDICT"]
    # the start time gives way to a long id (newest first), at 80 columns only
    assert ("STARTED" in header) is not (long_id and columns == 80), header
    if "REATTACH" not in header:  # said once, below the runs
        assert lines[-1].startswith("reattach: kdtui watch RUN"), lines


def test_kdtui_runs_shows_every_column_at_120(listed, monkeypatch, capsys, runs_dir):
    lines = printed(monkeypatch, capsys, 120)
    assert all(cell_len(line) <= 120 for line in lines), "\n".join(lines)
    assert lines[0].split() == ["RUN", "HOST", "STATE", "VERDICT", "STARTED", "(UTC)",
                                "REATTACH"]
    assert len(lines) == 1 + len(listed)
    for name in listed:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.endswith(f"kdtui watch {name}"), row  # by name: the runs dir is the default


def test_kdtui_runs_is_whole_where_it_is_wide(listed, monkeypatch, capsys, runs_dir):
    lines = printed(monkeypatch, capsys, 400)
    assert "2026-" in lines[1] or "2025-" in lines[1]  # the whole start time, ISO
    assert any(line.endswith(f"kdtui watch {runs_dir / NAMES[0]}") for line in lines), lines
