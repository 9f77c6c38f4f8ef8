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
