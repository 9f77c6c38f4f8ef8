"""The screens' header: Textual's Header, whose title watcher survives its own teardown.

Header updates its title from a watcher on the app's and the screen's title and sub-title, and
looks the title widget up each time. A sub-title set while the header is being removed (a run
screen's worker naming the step as the app quits, or as the screen goes) found no title widget
and raised NoMatches out of the watcher, which ends the app with an error. This one registers
the same watchers, and a title that is gone is simply not updated.
"""

from __future__ import annotations

from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.events import Mount
from textual.widgets import Header
from textual.widgets._header import HeaderTitle


class TitleHeader(Header):
    def _on_mount(self, event: Mount) -> None:
        event.prevent_default()  # in place of Header's own watchers, not beside them

        async def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoScreen, NoMatches):  # torn down, or not yet composed: nothing to show
                pass

        self.watch(self.app, "title", set_title)
        self.watch(self.app, "sub_title", set_title)
        self.watch(self.screen, "title", set_title)
        self.watch(self.screen, "sub_title", set_title)
