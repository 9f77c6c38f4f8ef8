"""The compare table of a run still going (no run_finished yet) said INCONCLUSIVE in its verdict
column, beside a finished run's PASS, as if it had ended without a verdict; it says '–' (no
verdict yet), as the runs list does for a running run."""

from __future__ import annotations

from kdtui.compare import load_summary, plain_table, table_rows


def test_a_run_still_going_has_no_verdict_in_the_compare_table(runs_dir, write_run):
    going = load_summary(write_run(runs_dir / "going", steps=200, upto=120, finished=False))
    done = load_summary(write_run(runs_dir / "done", steps=200))
    head, rows = table_rows([going, done])
    verdict = head.index("verdict")
    assert rows[0][verdict] == "–", rows[0]
    assert rows[1][verdict] == "PASS", rows[1]
    assert "INCONCLUSIVE" not in plain_table([going, done])
