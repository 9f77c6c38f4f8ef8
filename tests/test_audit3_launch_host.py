"""`kdtui launch [flags]` in the dashboard starts at once on the host `--help` names (--host,
else KDTUI_HOST, else local), as `kdtui launch --headless` does: not on the form's last host,
which after one remote run sent a plain `kdtui launch --demo` to the GPU box unasked."""

from __future__ import annotations

import pytest

from kdtui.app import prefill_from_args
from kdtui.cli import build_parser


def _host(argv: list[str]) -> str:
    return prefill_from_args(build_parser().parse_args(["launch", *argv]))["host"]


def test_launch_flags_without_a_host_start_locally_or_on_kdtui_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDTUI_HOST", raising=False)
    assert _host(["--demo", "--steps", "40"]) == "local"
    assert _host([]) == "local"
    assert _host(["--host", "gpu1", "--demo"]) == "gpu1"
    monkeypatch.setenv("KDTUI_HOST", "gpu2")
    assert _host(["--demo"]) == "gpu2"
    assert _host(["--host", "gpu1"]) == "gpu1"
