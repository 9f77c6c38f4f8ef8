"""One name for one number on the run screen (audit 13): the verdict panel labels an on-policy
run's judged number `val gen KL` and the data's `val loss`, as the chart's legend and the samples
pane do; its reason said `val_gen_kl` and `val_loss` (the event fields) under those labels. The
event fields keep their names (docs/events.md); the words a person reads are the panel's."""

from __future__ import annotations

import math

import pytest

from kdengine.verdict import verdict_from_events
from kdtui.app import KDApp
from kdtui.screens.run import RunScreen
from kdtui.widgets.run_panels import VerdictPanel

from .conftest import verdict_shown


def _evals(val_loss: list[float], gen_kl: list[float] | None = None) -> list[dict]:
    events = [{"type": "eval", "step": 10 * i, "val_loss": loss, "val_ce": 3.0, "val_kd": 0.1,
               **({"val_gen_kl": gen_kl[i], "val_gen_teacher_logp": -1.0,
                   "val_gen_len": 8.0} if gen_kl else {})}
              for i, loss in enumerate(val_loss)]
    return [*events, {"type": "run_finished", "status": "completed", "exit_code": 0,
                      "steps": 10}]


@pytest.mark.parametrize("events, label", [
    (_evals([2.0, 1.5], [1.0, 0.5]), "val gen KL"),  # on-policy PASS
    (_evals([2.0, 1.5], [1.0, 1.5]), "val gen KL"),  # on-policy FAIL
    (_evals([2.0, 1.5], [1.0, math.nan]), "val gen KL"),  # on-policy, a NaN gen KL
    (_evals([math.nan, 1.5]), "val loss"),  # a NaN student at step 0
], ids=["on-policy-pass", "on-policy-fail", "gen-kl-nan", "val-loss-nan"])
def test_audit13_the_verdict_s_reason_names_its_numbers_as_its_labels_do(events, label):
    verdict = verdict_from_events(events)
    assert verdict.loss_label == label or label == "val loss"
    assert "val_gen_kl" not in verdict.reason and "val_loss" not in verdict.reason, \
        verdict.reason
    assert label in verdict.reason, verdict.reason
    assert "val_gen_kl" not in verdict.summary() and "val_loss" not in verdict.summary()
    # the event keeps the field names: a reader of events.jsonl finds the same keys
    event = verdict.to_event()
    if label == "val gen KL":
        assert event["loss_kind"] == "val_gen_kl" and "initial_val_gen_kl" in event


async def test_audit13_an_on_policy_run_s_verdict_panel_says_val_gen_kl_one_way(
        on_policy_run, runs_dir, wait_for):
    """The recorded on-policy run's panel: 'step-0 val gen KL', 'final val gen KL', then 'on-policy
    val_gen_kl went down; val_loss 3.000 -> 1.875'."""
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref="on-policy")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: verdict_shown(app))
        await pilot.pause()
        assert isinstance(app.screen, RunScreen)
        text = app.screen.query_one(VerdictPanel).render().plain
        assert "final val gen KL" in text and "on-policy val gen KL went down" in text, text
        assert "val_gen_kl" not in text and "val_loss" not in text, text
