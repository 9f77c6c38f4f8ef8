"""The command palette's kdtui commands, and the keys they come from.

Every key of a screen, of its kdtui widgets and of the app is a palette command too, run on the
node that binds it, so the palette, the footer and the F1 help cannot drift apart. The app adds
where it can go from a screen (`KDApp.navigation`) and every run by name (`KDApp.run_commands`,
read once each time the palette opens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    help: str
    run: Callable[[], Any]


def kdtui_bindings(node: Any) -> Iterator[Binding]:
    """The bindings kdtui's own classes give `node` (a kdtui text field inherits Input's cursor
    keys: those are Textual's, left to the footer)."""
    for cls in type(node).__mro__:
        if cls.__module__.startswith("kdtui."):
            for binding in cls.__dict__.get("BINDINGS", []):
                if isinstance(binding, Binding) and binding.description:
                    yield binding


def tooltip_on(binding: Binding, screen: Screen | None, app: App) -> str:
    """What `binding` does, as true on `screen`: F8 saves into the open run's directory, but
    into the runs directory on the form, the runs list and compare (KDApp.screenshot_place)."""
    place = getattr(app, "screenshot_place", None)
    if binding.id == "app.screenshot" and place is not None:
        return f"Save an SVG screenshot {place(screen)[1]}"
    return binding.tooltip


def bindings_for(screen: Screen | None, app: App) -> Iterator[tuple[Any, Binding]]:
    """(node, binding) for the keys of `screen`, of its kdtui widgets (the log view's filter,
    next error...) and of the app that are available now (`check_action`): what the help lists
    and the palette offers."""
    ours = [w for w in screen.query("*") if type(w).__module__.startswith("kdtui.")] \
        if screen is not None else []
    for node in (screen, *ours, app):
        if node is not None:
            for binding in kdtui_bindings(node):
                # a key its node says is not available here (the samples key of a run without
                # a samples pane) is not offered
                if node.check_action(binding.action.partition("(")[0], ()) is not False:
                    yield node, binding


def binding_commands(screen: Screen, app: App) -> Iterator[PaletteCommand]:
    """The palette's commands for `screen`: its keys (bindings_for), each running its own action
    on its own node, so the palette and the keys cannot drift apart."""
    for node, binding in bindings_for(screen, app):
        key = binding.key_display or app.get_key_display(binding)
        what = tooltip_on(binding, screen, app) or binding.description
        yield PaletteCommand(binding.description, f"{what} ({key})",
                             partial(app.run_action, binding.action, node))


class KDCommands(Provider):
    """kdtui's own actions in the command palette (ctrl+p), for the screen it was opened on: that
    screen's keys (start, demo, stop, chart modes, log filter and search...), the way to the
    launch form and the runs list, and, when searching, every run by name to open it."""

    _runs: list[PaletteCommand] = []

    async def startup(self) -> None:
        # every run by name, read once when the palette opens and off the event loop: each
        # search read every run's events (head and tail), at every key typed
        self._runs = await asyncio.to_thread(lambda: list(self.app.run_commands()))

    def commands(self) -> list[PaletteCommand]:
        app = self.app
        found: dict[str, PaletteCommand] = {}
        for command in (*binding_commands(self.screen, app), *app.navigation(self.screen)):
            found.setdefault(command.name.lower(), command)  # the screen's own comes first
        return list(found.values())

    async def discover(self) -> Hits:
        for command in self.commands():
            yield DiscoveryHit(command.name, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in (*self.commands(), *self._runs):
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(score, matcher.highlight(command.name), command.run, help=command.help)
            elif (score := matcher.match(command.help)) > 0:  # 'log' finds Filter: Show only...
                yield Hit(score / 2, command.name, command.run, help=command.help)
