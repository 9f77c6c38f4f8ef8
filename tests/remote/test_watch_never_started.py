"""`kdtui watch RUN --headless` of a dispatch that never started a run (its preflight failed)
said `ERROR: /path/dispatch.json: ...` on stdout, where every command's refusal is one line on
stderr prefixed with the command (docs/dashboard.md): now `kdtui watch: error: RUN: ...`."""

from __future__ import annotations

import json

from kdtui.cli import main


def test_watch_of_a_dispatch_that_never_started_is_the_commands_one_line_error(remote_env,
                                                                              capsys):
    manifest = remote_env["evidence"] / "never" / "dispatch.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"run_id": "never", "host": "kdtest", "launched": False,
                                    "error": "kdtest: preflight failed: no torch"}))
    assert main(["watch", "never", "--headless"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured
    lines = captured.err.strip().splitlines()
    assert lines == ["kdtui watch: error: never: this dispatch never started a run (kdtest: "
                     "preflight failed: no torch): launch it again"], lines
