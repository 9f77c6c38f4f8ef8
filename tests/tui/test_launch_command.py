"""`kdtui launch ...` (not headless): the dashboard starts the run at once, or, when a value is
bad, stays on the form with the error on its field and starts nothing."""

from __future__ import annotations

import argparse

from kdtui.app import KDApp, prefill_from_args


def launch_args(**values: object) -> argparse.Namespace:
    from kdtui.cli import build_parser

    argv = ["launch"]
    for key, value in values.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return build_parser().parse_args(argv)


TINY = dict(steps=10, batch_size=4, seq_len=32, lr=3e-3, eval_every=5, eval_batches=2,
            log_every=1, checkpoint_every=0, temperature=2.0, run_name="from-cli")


async def test_launch_command_starts_the_run_in_the_dashboard(runs_dir, tiny_run_inputs,
                                                             wait_for, wait_for_run):
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.run_panels import VerdictPanel

    args = launch_args(**tiny_run_inputs, **TINY)
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and bool(app.screen.query(VerdictPanel)), 120)
        panel = app.screen.query_one(VerdictPanel)
        await wait_for_run(pilot, runs_dir / "from-cli", lambda: panel.status != "pending",
                           "the verdict")
        assert panel.status == "pass"
    assert (runs_dir / "from-cli" / "events.jsonl").exists()


async def test_launch_command_with_a_bad_value_stays_on_the_form(runs_dir, tiny_run_inputs,
                                                                 wait_for):
    from kdtui.screens.launch import LaunchScreen

    args = launch_args(**tiny_run_inputs, **{**TINY, "alpha": "2"})
    app = KDApp(runs_dir=runs_dir, command="launch", prefill=prefill_from_args(args))
    async with app.run_test(size=(150, 44)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.form_ready, 30)
        await pilot.pause(0.5)
        assert isinstance(app.screen, LaunchScreen)
        assert "must be a number >= 0 and <= 1 (got 2)" in app.screen.field_error("alpha")
    assert not (runs_dir / "from-cli").exists()


def _kdtui(*argv: str, env_extra: dict[str, str] | None = None):
    """`python -m kdtui ARGV` in a real subprocess whose stdout is a pipe (not a terminal)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "kdtui", *argv], capture_output=True,
                          text=True, timeout=120, env=env)


def test_watch_of_an_unknown_run_is_one_line_and_exit_2_before_any_dashboard(runs_dir):
    done = _kdtui("watch", "nope")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kdtui watch: error: no run 'nope'")
    assert str(runs_dir) in lines[0]
    assert done.stdout == ""  # no escape codes: the dashboard never started


def test_dashboard_with_stdout_not_a_terminal_refuses_and_names_headless(runs_dir, write_run):
    write_run(runs_dir / "done-run", steps=20)
    for argv in ([], ["launch", "--demo"], ["watch", "done-run"]):
        done = _kdtui(*argv)  # a dashboard drawing into the pipe would never exit: timeout
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, done.stderr)
        assert "needs a terminal" in lines[0] and "--headless" in lines[0]
        assert done.stdout == ""
    # what needs no terminal still works into a pipe
    plain = _kdtui("runs", "--plain")
    assert plain.returncode == 0 and plain.stdout.startswith("done-run\t")


def test_config_file_keys_and_kdtui_variables_are_named_as_the_user_wrote_them(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "run.toml"
    bad.write_text("steps = 0\n")
    unknown = tmp_path / "typo.toml"
    unknown.write_text("stepz = 3\n")
    engine = subprocess.run([sys.executable, "-m", "kdengine", "train", "--demo", "--config",
                             str(bad), "--check"], capture_output=True, text=True, timeout=120)
    assert engine.returncode == 2
    assert engine.stderr == f"kdengine train: error: steps in {bad}: must be an integer >= 1 " \
        "and <= 1000000000 (got 0)\n"
    cases = [
        (["--config", str(bad)], {}, f"steps in {bad}: must be an integer"),
        (["--config", str(unknown)], {}, f"stepz in {unknown}: is not a field of a run"),
        ([], {"KDTUI_STEPS": "-4"}, "KDTUI_STEPS: must be an integer"),
        ([], {"KDTUI_TEMPERATURE": "hot"}, "KDTUI_TEMPERATURE: must be a number (got 'hot')"),
    ]
    for argv, env, said in cases:
        done = _kdtui("launch", "--headless", "--demo", "--dry-run", *argv, env_extra=env)
        assert done.returncode == 2, (argv, env, done.stderr)
        assert done.stderr.startswith(f"kdtui launch: error: {said}"), done.stderr
        assert "--steps" not in done.stderr and "--temperature" not in done.stderr
        assert len(done.stderr.splitlines()) == 1
