"""Small modal screens: yes/no confirmation, quit-with-a-run-going, the dry-run plan, help."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """A question with two answers; Esc is 'no'."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel")]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.title_text, self.body, self.yes, self.no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="warning", id="yes")
                yield Button(self.no, variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class QuitScreen(ModalScreen[str]):
    """Quitting while runs this dashboard started are going: leave them, stop them, or stay."""

    BINDINGS = [Binding("escape", "dismiss('stay')", "Stay")]

    def __init__(self, runs: list[str]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        names = ", ".join(self.runs)
        with Vertical(classes="dialog"):
            yield Label("A run is still going", classes="dialog-title")
            yield Static(f"{names}\n\nLeave it going: it runs on without the dashboard; come "
                         "back to it from the runs list (or `kdtui watch RUN`).\nStop it: "
                         "SIGTERM, and the engine records it as cancelled.",
                         classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Leave it going", variant="primary", id="leave")
                yield Button("Stop it", variant="error", id="stop")
                yield Button("Stay", id="stay")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "stay")


class PlanScreen(ModalScreen[None]):
    """The dry run's plan: every command it would run; nothing was touched."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Dry run: the plan (nothing was started or written)",
                        classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(Text("\n".join(self.lines)), id="plan", classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.dismiss()


HELP_TEXT = """\
Log pane: follows the run; scroll up to stop following ("+N new lines" counts what arrived),
End to follow again. Lines with panic, error, Traceback blocks, CUDA out-of-memory and NaN
are highlighted (case-insensitive); `e` / `E` jump to the next / previous one.
`f` shows only step, initial_loss / final_loss, panic, error and verdict lines.
`/` searches, `n` / `N` go to the next / previous match.
Chart: train loss with its KD and CE parts, val loss as points; `m` EMA smoothing, `l` log y.
Themes: ctrl+p, then "theme" (or `kdtui --theme NAME`); the choice is remembered.
F8 saves an SVG screenshot into the run's directory."""


class HelpScreen(ModalScreen[None]):
    """Every binding of the screen below and of the app, and what the panes do."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        # this screen is already on the stack while it composes: the one beneath is before it
        beneath = [screen for screen in self.app.screen_stack if screen is not self]
        below = beneath[-1] if beneath else None
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        seen: set[tuple[str, str]] = set()
        # the screen's keys, then its kdtui widgets' (the log view's e/f/n...), then the app's;
        # Textual's own widgets' keys (scrolling, text editing) are left to the footer
        ours = [w for w in (below.query("*") if below is not None else [])
                if type(w).__module__.startswith("kdtui.")]
        sources = [below, *ours, self.app]
        for node in sources:
            for binding in getattr(node, "BINDINGS", []):
                if not isinstance(binding, Binding) or not binding.description:
                    continue
                key = binding.key_display or binding.key
                if (key, binding.description) in seen:
                    continue
                seen.add((key, binding.description))
                table.add_row(key.replace(",", " / "), binding.description)
        with Vertical(classes="dialog wide"):
            yield Label("Keys", classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(table)
                yield Static("\n" + HELP_TEXT, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.dismiss()
