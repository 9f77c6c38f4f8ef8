"""An apr run's verdict is on training-batch losses, whose first is step 1's batch: the panel
said `step-0 train-batch loss` (there is no step-0 evaluation); a held-out verdict keeps step 0."""

from __future__ import annotations

from textual.app import App, ComposeResult

from kdengine.verdict import TRAIN_BATCH, VAL_LOSS, Verdict
from kdtui.widgets.run_panels import VerdictPanel


class _PanelApp(App):
    def compose(self) -> ComposeResult:
        yield VerdictPanel(id="verdict")


async def test_a_train_batch_verdict_names_its_first_loss_at_step_1():
    app = _PanelApp()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(VerdictPanel)
        panel.show(Verdict("pass", "went down", initial_loss=5.2, final_loss=2.9, final_step=8,
                           loss_kind=TRAIN_BATCH))
        await pilot.pause()
        text = str(panel.render())
        assert "step-1 train-batch loss" in text and "step-0" not in text, text
        panel.show(Verdict("pass", "went down", initial_loss=5.2, final_loss=2.9, final_step=8,
                           loss_kind=VAL_LOSS))
        await pilot.pause()
        assert "step-0 val loss" in str(panel.render())


def test_a_train_batch_verdict_summary_says_step_1():
    summary = Verdict("pass", "went down", initial_loss=5.2, final_loss=2.9, final_step=8,
                      loss_kind=TRAIN_BATCH).summary()
    assert "train-batch loss 5.2000 (step 1) -> 2.9000 (step 8)" in summary, summary
    held_out = Verdict("pass", "went down", initial_loss=5.2, final_loss=2.9, final_step=8)
    assert "val loss 5.2000 (step 0) -> " in held_out.summary()
