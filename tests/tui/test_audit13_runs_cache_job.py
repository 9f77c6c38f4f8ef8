"""A teacher-cache job in the runs lists (audit 13): it scores rows and trains nothing, so its
step column counts rows and its verdict is complete or not, in the dashboard's list, `kdtui runs`
and `kdtui runs --plain` alike, local or dispatched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdtui.app import KDApp
from kdtui.cli import main


def _write_cache_job(job: Path, *, finished: bool = True) -> None:
    """A teacher-cache job's events as `kdengine cache-teacher` writes them (a real job's first
    and last events: step events are finished shards, counted in rows)."""
    job.mkdir(parents=True)
    rows = [{"type": "run_started", "run_id": job.name, "job": "cache-teacher",
             "config": {"teacher": "/models/t", "data": "/data", "seq_len": 32},
             "cache": {"k": 8, "targets": "topk", "dtype": "float16"}},
            {"type": "step", "step": 500, "ce": 5.6, "tokens_per_s": 9e4, "total_steps": 937,
             "shard": 0, "shards": 2},
            {"type": "step", "step": 937, "ce": 5.58, "tokens_per_s": 9e4, "total_steps": 937,
             "shard": 1, "shards": 2}]
    if finished:
        rows.append({"type": "run_finished", "status": "completed", "exit_code": 0,
                     "steps": 937, "cache": str(job), "bytes": 607176})
    else:
        rows.append({"type": "run_finished", "status": "failed", "exit_code": 1,
                     "error": "disk full"})
        rows.pop(2)
    (job / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "seq": i, "t": 1760000000.0 + i, **row}) + "\n"
        for i, row in enumerate(rows)))


def _dispatched_cache_job(evidence: Path) -> None:
    """A cache job dispatched to gpu-box whose watch recorded its end in the manifest."""
    folder = evidence / "cache-remote"
    folder.mkdir(parents=True)
    (folder / "dispatch.json").write_text(json.dumps(
        {"run_id": "cache-remote", "host": "gpu-box", "launched": True, "state": "completed",
         "dispatched_at": "2025-10-09T08:00:00Z", "config": {"steps": 500},
         "engine_command": ["python3", "-m", "kdengine", "cache-teacher", "--out", "/r/c"],
         "engine_last_step": 937, "verdict": {"status": "pass"},
         "run_finished": {"type": "run_finished", "status": "completed", "steps": 937}}))


def test_audit13_runs_plain_says_a_cache_job_s_rows_and_complete_not_a_step_and_pass(
        runs_dir, write_run, capsys, monkeypatch, tmp_path):
    """`kdtui runs --plain` printed a cache job as '937/937  pass' (and `kdtui runs` 'pass'),
    beside runs whose pass is the smoke verdict of a distillation; its screen says COMPLETE
    and 'rows 937 / 937'."""
    import os

    _write_cache_job(runs_dir / "cache-job")
    _write_cache_job(runs_dir / "cache-broken", finished=False)
    write_run(runs_dir / "a-run", steps=20)
    _dispatched_cache_job(Path(os.environ["KDTUI_EVIDENCE_DIR"]))
    assert main(["runs", "--plain"]) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in
             capsys.readouterr().out.splitlines()}
    assert lines["cache-job"][3:5] == ["rows:937/937", "complete"], lines["cache-job"]
    assert lines["cache-broken"][3:5] == ["rows:500/937", "not-complete"], lines
    # its rows as the watch recorded them; not over the config's steps (500, unread by a job)
    assert lines["cache-remote"][3:5] == ["rows:937", "complete"], lines["cache-remote"]
    assert lines["a-run"][3:5] == ["20/20", "pass"], lines["a-run"]
    assert all(" " not in field for line in lines.values() for field in line)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["runs"]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "  complete  " in table["cache-job"] and " pass " not in table["cache-job"]
    assert "  not complete  " in table["cache-broken"], table["cache-broken"]
    assert "  pass  " in table["a-run"]


@pytest.mark.parametrize("size", [(120, 30), (80, 24)], ids=["120x30", "80x24"])
async def test_audit13_the_runs_list_s_step_column_counts_a_cache_job_s_rows(size, runs_dir,
                                                                            write_run,
                                                                            wait_for):
    """The dashboard's runs list said '937 / 937' in the step column of a job that takes no
    step (its screen says 'rows 937 / 937'), at 80 columns too."""
    from kdtui.screens.runs import RunsScreen

    _write_cache_job(runs_dir / "cache-job")
    write_run(runs_dir / "a-run", steps=20)
    app = KDApp(runs_dir=runs_dir)
    async with app.run_test(size=size) as pilot:
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and len(app.screen.runs) == 2)
        await pilot.pause()
        table = app.screen.query_one("DataTable")
        rows = {str(table.get_row_at(i)[0]).split()[0].strip("✓• "): table.get_row_at(i)
                for i in range(table.row_count)}
        job = [str(c) for c in rows["cache-job"]]
        assert "rows 937 / 937" in job and "COMPLETE" in job, job
        assert "20 / 20" in [str(c) for c in rows["a-run"]], rows["a-run"]
