"""`kdtui launch --demo --steps 10 --headless` was refused `--warmup-steps: must be below steps
(10) (got 25)`, a flag the user never gave (the demo preset's warm-up); the launch now says as
`kdengine train --demo` does that the 25 is the preset's, and the fix. A value set through
KDTUI_<FIELD> counts as the user's, as a flag does."""

from __future__ import annotations

from kdtui.cli import main as kdtui_main


def test_a_headless_demo_launch_names_the_presets_warmup_and_the_fix(capsys,
                                                                     monkeypatch) -> None:
    expected = ("kdtui launch: error: --warmup-steps: the --demo preset's 25 must be below "
                "--steps 10: give a --warmup-steps below 10 (0 for none), or --steps above 25")
    assert kdtui_main(["launch", "--headless", "--demo", "--steps", "10"]) == 2
    assert capsys.readouterr().err.strip() == expected
    monkeypatch.setenv("KDTUI_STEPS", "10")
    assert kdtui_main(["launch", "--headless", "--demo"]) == 2
    assert capsys.readouterr().err.strip() == expected
    monkeypatch.setenv("KDTUI_WARMUP_STEPS", "25")  # both the user's: the plain refusal
    assert kdtui_main(["launch", "--headless", "--demo"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kdtui launch: error: --warmup-steps: must be below steps (10) (got 25)")
