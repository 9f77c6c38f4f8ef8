"""SIGINT/SIGTERM as a flag the train loop checks between steps, from the process's first moment.

`catch_early()` runs first thing in `kdengine train`, before torch is imported (a second or more):
a cancel that arrives while the engine starts is remembered, not fatal, and the run then ends as
cancelled with its events written, like a cancel at any later step. No torch here.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_early: dict[str, Any] = {"received": None, "installed": False}


class RunCancelled(Exception):
    pass


@contextmanager
def cut_by_a_signal() -> Iterator[None]:
    """Work done after a cancel that a second signal must cut short (the checkpoint a cancel
    writes, kdengine.trainer): inside, SIGINT or SIGTERM raises RunCancelled at once, wherever the
    main thread is, whichever handlers were installed before (restored after)."""
    def abort(signum: int, frame: Any) -> None:
        raise RunCancelled(signal.Signals(signum).name)

    old: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            try:
                old[sig] = signal.signal(sig, abort)
            except ValueError:  # not the main thread (tests): nothing to cut it short
                pass
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _note_early(signum: int, frame: Any) -> None:
    if _early["received"] and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C while starting: stop at once
    _early["received"] = signal.Signals(signum).name


def early_signal() -> str | None:
    """The name of a SIGINT/SIGTERM caught before a StopSignals took over (catch_early), if any."""
    return _early["received"]


def catch_early() -> None:
    """Remember SIGINT/SIGTERM until a StopSignals takes over (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note_early)
    _early["installed"] = True


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second SIGINT interrupts).
    A signal caught early (catch_early) counts as received."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        self._interrupt = False  # inside interruptible(): a signal raises at once

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (tests): rely on check() not firing
                pass
        if _early["received"]:
            self.received, _early["received"] = _early["received"], None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self._interrupt:
            self._interrupt = False
            raise RunCancelled(self.received)

    def check(self) -> None:
        if self.received:
            raise RunCancelled(self.received)

    def agreed(self) -> bool:
        """Whether the run stops here (one process: a signal was received)."""
        return bool(self.received)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Work with no step to finish between, where a stop must not wait for its end: a
        model's download, the demo teacher's training (minutes on a small CPU). Inside, a stop
        signal raises RunCancelled at once, wherever the main thread is; one that came before
        raises on entry. What such work leaves is temporary (hub downloads resume from their
        .incomplete files; the demo teacher is saved whole or not at all)."""
        self.check()
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
