"""One line on the run screen: the state of the SSH link a remote run is watched over.

Connected, lost and reconnecting (with the countdown to the next try and to giving up),
reconnected, given up: so a 35 s outage reads as an outage, not as a stalled run. Hidden for a
local run, whose files need no link.
"""

from __future__ import annotations

import time
from typing import Any

from textual.widgets import Static

from kdtui.remote.link import CONNECTED, GIVEN_UP, LOST, RECONNECTED, LinkState

STYLE = {CONNECTED: "dim", RECONNECTED: "green", LOST: "bold yellow", GIVEN_UP: "bold red"}
MARK = {CONNECTED: "●", RECONNECTED: "●", LOST: "◌", GIVEN_UP: "✕"}


class LinkStatus(Static):
    """`follow(handle)` subscribes to the handle's SSH source; the countdown ticks each second."""

    DEFAULT_CSS = """
    LinkStatus { height: 1; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.state: LinkState | None = None
        self.display = False  # until a remote handle is followed

    def follow(self, handle: Any) -> None:
        source = getattr(handle, "source", None)
        listeners = getattr(source, "link_listeners", None)
        if listeners is None:
            self.display = False
            return
        listeners.append(self._changed)
        self.state = getattr(source, "link", None) or LinkState(
            CONNECTED, str(getattr(handle, "host", "")), time.monotonic())
        self.display = True
        self._show()
        self.set_interval(1.0, self._show)

    def _changed(self, state: LinkState) -> None:
        self.state = state
        self._show()

    def _show(self) -> None:
        state = self.state
        if state is None:
            return
        from rich.text import Text

        line = state.line()
        if len(line) + 2 > self.size.width - 2:  # the reason and advice give way, not the counts
            line = state.line(short=True)
        self.update(Text.assemble((f"{MARK[state.state]} ", STYLE[state.state]),
                                  (line, STYLE[state.state])))

    def on_resize(self) -> None:
        self._show()
