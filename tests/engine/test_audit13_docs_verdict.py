"""Audit 13: docs/events.md's verdict rules: `inconclusive` when the step-0 or a later eval is
missing, with the reason. An on-policy stream (its evals carry val_gen_kl) whose step-0 or last
eval lacked val_gen_kl (an eval written by another tool, or edited) ended `kdengine verdict` in a
TypeError traceback, and the dashboard's verdict with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdengine.cli import main
from kdengine.verdict import verdict_from_events

DONE = {"type": "run_finished", "status": "completed", "exit_code": 0, "steps": 10}


@pytest.mark.parametrize("evals, reason", [
    ([{"step": 0, "val_loss": 2.0, "val_gen_kl": 1.0}, {"step": 10, "val_loss": 1.0}],
     "no val gen KL after step 0"),
    ([{"step": 0, "val_loss": 2.0}, {"step": 10, "val_loss": 1.0, "val_gen_kl": 0.5}],
     "no val gen KL at step 0"),
], ids=["last-eval-without-gen-kl", "step-0-without-gen-kl"])
def test_an_on_policy_stream_missing_a_val_gen_kl_is_inconclusive_not_a_traceback(
        tmp_path: Path, capsys, evals: list[dict], reason: str) -> None:
    events = [{"type": "eval", **e} for e in evals] + [DONE]
    verdict = verdict_from_events(events)
    assert verdict.status == "inconclusive" and verdict.reason == reason
    (tmp_path / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "seq": i, "t": 1.0, **e}) + "\n" for i, e in enumerate(events)))
    assert main(["verdict", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("F-DISTILL-SMOKE-001 INCONCLUSIVE") and reason in out.out
    assert "Traceback" not in out.err
