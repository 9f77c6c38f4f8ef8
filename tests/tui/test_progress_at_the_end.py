"""A run that ended between two logged steps (a cancel at step 62 with log_every 5) showed its
progress at the last step event ('step 60 / 500') beside a verdict saying 'cancelled at step
62'; the progress now ends at the step run_finished names."""

from __future__ import annotations

import json

from kdtui.app import KDApp
from kdtui.widgets.run_panels import RunProgress


async def test_the_progress_ends_at_the_step_run_finished_names(runs_dir, write_run, wait_for):
    run = write_run(runs_dir / "cut", steps=500, upto=60, finished=False)
    with (run / "events.jsonl").open("a") as f:
        f.write(json.dumps({"v": 1, "seq": 999, "t": 1_760_000_010.0, "type": "run_finished",
                            "status": "cancelled", "exit_code": 143, "steps": 62}) + "\n")
    app = KDApp(runs_dir=runs_dir, command="watch", watch_ref=str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "state", None) is not None
                       and app.screen.state.finished is not None, 30)
        await pilot.pause(0.2)
        shown = str(app.screen.query_one(RunProgress).render())
        assert "step 62 / 500" in shown, shown
