"""Every kdtui command's error is one line on stderr, exit 2, prefixed with the command as the
headless commands prefix theirs (`kdtui watch: error: ...`), dashboard or not; only what comes
before a command (`kdtui bogus`, `kdtui --theme`) is `kdtui: error:`."""

from __future__ import annotations

import pytest

from kdtui.cli import main as kdtui_main


@pytest.mark.parametrize("argv,prefix", [
    (["watch", "nosuch"], "kdtui watch: error: no run 'nosuch'"),
    (["watch", "nosuch", "--headless"], "kdtui watch: error: no run 'nosuch'"),
    (["resume", "nosuch"], "kdtui resume: error: no run 'nosuch'"),
    (["resume", "nosuch", "--headless"], "kdtui resume: error: no run 'nosuch'"),
    (["cancel", "nosuch"], "kdtui cancel: error: no run 'nosuch'"),
    (["compare", "a", "b"], "kdtui compare: error: no run 'a' with events"),
    (["compare", "a", "b", "--plain"], "kdtui compare: error: no run 'a' with events"),
    (["launch", "--headless"], "kdtui launch: error: --teacher: is required"),
    (["launch", "--bogus"], "kdtui launch: error: unknown argument --bogus (see `kdtui launch "
                            "--help`)"),
    (["runs", "--bogus"], "kdtui runs: error: unknown argument --bogus"),
    (["watch"], "kdtui watch: error: the following arguments are required: run"),
    (["bogus"], "kdtui: error: argument command: invalid choice: 'bogus'"),
    (["--theme"], "kdtui: error: argument --theme: expected one argument"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_an_error_is_one_line_prefixed_with_its_command(argv, prefix, capsys):
    code = kdtui_main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    assert "error: compare:" not in lines[0]  # the command is said once


@pytest.mark.parametrize("argv,prefix", [
    ([], "kdtui: error: the dashboard needs a terminal"),
    (["launch", "--demo"], "kdtui launch: error: the dashboard needs a terminal"),
    (["watch", "done-run"], "kdtui watch: error: the dashboard needs a terminal"),
    (["compare", "done-run", "other-run"], "kdtui compare: error: the dashboard needs a terminal"),
], ids=lambda v: " ".join(v) or "kdtui" if isinstance(v, list) else "")
def test_the_dashboards_no_terminal_refusal_is_prefixed_with_its_command(
        argv, prefix, runs_dir, write_run, capsys):
    # under pytest stdout and stderr are no terminal: the dashboard refuses to start
    write_run(runs_dir / "done-run", steps=20)
    write_run(runs_dir / "other-run", steps=20)
    code = kdtui_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    assert "--headless" in lines[0] or "--plain" in lines[0]  # the way without a terminal


def test_a_launch_config_that_cannot_be_read_is_refused_before_the_dashboard(tmp_path, capsys):
    # was `kdtui: error: ...` and then the form, which starts at once without the file's values
    missing = tmp_path / "nosuch.toml"
    code = kdtui_main(["launch", "--config", str(missing)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("kdtui launch: error: --config: cannot read ")  # the flag typed
    assert str(missing) in lines[0]
    assert "needs a terminal" not in lines[0]


def test_headless_watch_of_no_run_names_the_runs_dir_as_the_dashboard_does(
        runs_dir, tmp_path, capsys):
    for extra in ([], ["--runs-dir", str(tmp_path / "elsewhere")]):
        where = tmp_path / "elsewhere" if extra else runs_dir
        lines = {}
        for headless in ([], ["--headless"]):
            assert kdtui_main([*extra, "watch", "nosuch", *headless]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1, err
            lines[bool(headless)] = err[0]
        assert f"in {where} or the evidence dir" in lines[True], lines[True]
        assert lines[True] == lines[False]  # one message, dashboard or headless
