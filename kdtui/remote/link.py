"""The state of the SSH link a remote run is watched over, for the run screen and headless output.

`SSHRunSource` moves it: connected -> lost (reconnecting: the next try and the give-up time are
known, so a countdown can be shown) -> reconnected, or -> given up. Listeners hear every change
and every retry of a loss; `LinkState.line()` says it in words, `changed()` tells a change of
state from a retry (headless prints only changes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

CONNECTED, LOST, RECONNECTED, GIVEN_UP = "connected", "lost", "reconnected", "given up"


@dataclass(frozen=True)
class LinkState:
    state: str  # CONNECTED | LOST | RECONNECTED | GIVEN_UP
    host: str
    since: float  # time.monotonic() of the change (of the first failure, while lost)
    reason: str = ""  # why it was lost
    retry_at: float | None = None  # while lost: the next reconnect try
    give_up_at: float | None = None  # while lost: when watching stops
    reconnects: int = 0

    def changed(self, before: LinkState | None) -> bool:
        """A new state, not another retry of the same loss."""
        return before is None or before.state != self.state

    def line(self, now: float | None = None, *, short: bool = False) -> str:
        """One line: 'link to gpu1 lost 12s ago (ConnectionLost); retry in 4s, gives up in
        9m48s'. `short`: without the reason and the advice (an 80-column screen)."""
        now = time.monotonic() if now is None else now
        why = "" if short or not self.reason else f" ({self.reason})"
        if self.state == LOST:
            retry = max(0.0, (self.retry_at or now) - now)
            give_up = max(0.0, (self.give_up_at or now) - now)
            return (f"link to {self.host} lost {_span(now - self.since)} ago{why}; "
                    f"retry in {_span(retry)}, gives up in {_span(give_up)}")
        if self.state == RECONNECTED:
            return (f"link to {self.host} reconnected ({self.reconnects} "
                    f"reconnect{'s' if self.reconnects != 1 else ''}); nothing lost")
        if self.state == GIVEN_UP:
            advice = "" if short else "; the run may still be going: watch it again later"
            return f"link to {self.host} given up after {_span(now - self.since)}{why}{advice}"
        return f"link to {self.host} connected"


def _span(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"
