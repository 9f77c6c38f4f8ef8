"""A box whose python3 is too old for kdengine (CentOS 7's and Ubuntu 18.04's 3.6): what
`kdtui launch` says. A python that old cannot even run the agent (it stops at `from __future__
import annotations`), so the probe's own version check never ran and the user read only
'probe the host: SyntaxError: future feature annotations is not defined'.

No python 3.6 can be installed here (no network), so the host's python is a stand-in that
answers as 3.6.9 does: `-V` and the SyntaxError it prints for the agent, exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdtui.cli import main

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(120)]

PYTHON_36 = """#!/bin/sh
if [ "$1" = "-V" ] || [ "$1" = "--version" ]; then echo "Python 3.6.9"; exit 0; fi
printf '  File "%s", line 12\\n    from __future__ import annotations\\n    ^\\nSyntaxError: \
future feature annotations is not defined\\n' "$1" >&2
exit 1
"""


def test_a_python_too_old_to_run_the_agent_is_named_with_its_version_and_the_fix(
        remote_env, tmp_path: Path, tiny_run_inputs, capsys):
    python = tmp_path / "old python" / "python3"
    python.parent.mkdir()
    python.write_text(PYTHON_36)
    python.chmod(0o755)
    hosts = remote_env["hosts"]
    hosts.write_text(hosts.read_text().replace(f'python = "{sys.executable}"',
                                               f"python = {json.dumps(str(python))}"))
    code = main(["launch", "--headless", "--host", "kdtest", "--run-name", "old-py",
                 "--teacher", tiny_run_inputs["teacher"], "--student",
                 tiny_run_inputs["student"], "--data", tiny_run_inputs["data"], "--steps", "4"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[preflight] failed")]
    assert line.endswith(
        f"kdtest: {python} is Python 3.6.9, too old (kdengine needs 3.10+): set python in "
        f"[hosts.kdtest] of {hosts} to a python 3.10+ that has torch (a conda env's or a "
        "venv's bin/python)"), line
    assert "Traceback" not in out and "[sync]" not in out
    manifest = json.loads((remote_env["evidence"] / "old-py" / "dispatch.json").read_text())
    assert manifest["launched"] is False and "is Python 3.6.9, too old" in manifest["error"]
