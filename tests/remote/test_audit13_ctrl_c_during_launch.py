"""Ctrl-C in `kdtui launch --headless` (docs/remote.md: "Detach (... Ctrl-C in a headless
watch) leaves the run going and prints `kdtui watch RUN`"). Before, a Ctrl-C during the
dispatch's preflight or check, or a local launch's check, printed the same 'detached: the run
goes on; come back with: kdtui watch RUN' of a run that was never started: nothing ran, no
manifest was written, and that `kdtui watch` found nothing. Now only a started run is said to go
on; `kdtui resume --headless` likewise (its Ctrl-C before the start said the stopped run went
on). A real SIGINT to this process, sent when the stage's line is printed."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

import pytest

from kdtui.cli import main as kdtui_main

from .conftest import launch_flags


class InterruptAt(io.StringIO):
    """stdout that sends this process a real SIGINT (a Ctrl-C) once `text` is printed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.sent = text, False
        self.closed_to_signals = False  # set once the command returned: a late write (a
        # thread it left) must not interrupt whatever test this worker runs next

    def write(self, s: str) -> int:
        n = super().write(s)
        if not self.sent and self.text in self.getvalue() and not self.closed_to_signals:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return n


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal():
    """SIGINT as a command in a terminal gets it, KeyboardInterrupt: an xdist worker ignores
    SIGINT (its parent's Ctrl-C ends the session), and there the interrupt never came."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def launch_interrupted_at(text: str, *argv: str) -> tuple[int, str]:
    out = InterruptAt(text)
    with pytest.MonkeyPatch.context() as patch, ctrl_c_as_in_a_terminal():
        patch.setattr("sys.stdout", out)
        code = kdtui_main(["launch", "--headless", *argv])
    out.closed_to_signals = True
    assert out.sent, out.getvalue()
    return code, out.getvalue()


@pytest.mark.ssh
def test_ctrl_c_during_a_remote_dispatch_s_check_says_the_run_was_not_started(
        remote_env, tiny_run_inputs):
    code, out = launch_interrupted_at(
        "[check] running", "--host", "kdtest", "--run-name", "ctrl-c-check",
        *launch_flags(tiny_run_inputs, 2, 2))
    assert code == 2, out
    last = out.splitlines()[-1]
    assert "goes on" not in out and "kdtui watch" not in out, out
    assert last.startswith("interrupted before the run started") and "kdtest" in last, last
    assert not (remote_env["work"] / "runs" / "ctrl-c-check").exists()


def test_ctrl_c_during_a_local_launch_s_check_says_the_run_was_not_started(
        tiny_run_inputs):
    code, out = launch_interrupted_at(
        "[check] running", "--run-name", "ctrl-c-local",
        *launch_flags(tiny_run_inputs, 2, 2))
    assert code == 2, out
    assert "goes on" not in out and "kdtui watch" not in out, out
    assert out.splitlines()[-1].startswith("interrupted before the run started"), out
    assert not (Path(os.environ["KDENGINE_RUNS_DIR"]) / "ctrl-c-local").exists()


@pytest.mark.ssh
def test_ctrl_c_in_a_headless_watch_of_a_started_remote_run_detaches_and_says_how_to_come_back(
        remote_env, tiny_run_inputs):
    pid_file = remote_env["work"] / "runs" / "ctrl-c-run" / "engine.pid"
    try:
        code, out = launch_interrupted_at(
            "[manifest] done", "--host", "kdtest", "--run-name", "ctrl-c-run",
            *launch_flags(tiny_run_inputs, 400, 0))
        assert code == 2, out
        assert out.splitlines()[-1] == \
            "detached: the run goes on; come back with: kdtui watch ctrl-c-run", out
        os.kill(int(pid_file.read_text()), 0)  # it does go on
    finally:  # this test is about the line: the engine is ended at once, not cancelled
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def resume_interrupted_at(text: str, *argv: str) -> tuple[int, str]:
    out = InterruptAt(text)
    with pytest.MonkeyPatch.context() as patch, ctrl_c_as_in_a_terminal():
        patch.setattr("sys.stdout", out)
        code = kdtui_main(["resume", "--headless", *argv])
    out.closed_to_signals = True
    assert out.sent, out.getvalue()
    return code, out.getvalue()


@pytest.mark.ssh
def test_ctrl_c_during_a_remote_resume_s_connect_says_the_run_was_not_resumed(
        launched_on_down_host):
    launched_on_down_host("ctrl-c-resume")
    code, out = resume_interrupted_at("[connect] running", "ctrl-c-resume")
    assert code == 2, out
    assert "goes on" not in out, out
    assert out.splitlines()[-1] == "interrupted before the resume started: ctrl-c-resume " \
        "stays as it was; `kdtui resume ctrl-c-resume` resumes it", out


def test_the_interrupt_s_line_starts_a_line_of_its_own_after_a_half_written_one() -> None:
    """A Ctrl-C raises KeyboardInterrupt wherever the main thread is, also between a print's
    text and its newline: the suite saw '[check] running on localinterrupted before the run
    started ...'. The interrupt's line ends the half-written one first (and, on a terminal,
    the ^C it echoed)."""
    from kdtui.headless import Lines

    half = io.StringIO()
    out = Lines(half)
    out.write("[check] running on local")  # the print's text; its newline never came
    out.say_after_interrupt("interrupted before the run started: nothing runs")
    assert half.getvalue().splitlines() == [
        "[check] running on local", "interrupted before the run started: nothing runs"]
    whole = io.StringIO()
    out = Lines(whole)
    print("[check] running on local", file=out)
    out.say_after_interrupt("interrupted")
    assert whole.getvalue() == "[check] running on local\ninterrupted\n"  # no blank line
