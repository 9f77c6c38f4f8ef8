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
                         "the run is asked to stop (SIGTERM). A kdengine run finishes its "
                         "current step, saves a checkpoint of it for `kdtui resume` (under "
                         "torchrun, its last periodic checkpoint is kept) and is recorded as "
                         "cancelled.",
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


# a dialog's rows around its scrolled part: border 2, padding 2, title 2, buttons 4
DIALOG_FRAME_ROWS = 10


class PlanScreen(ModalScreen[None]):
    """The dry run's plan: every command it would run; nothing was touched. Its lines scroll
    within the terminal's height, so the Close button always shows (80x24 included)."""

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

    def on_mount(self) -> None:
        self.query_one(".dialog-scroll", VerticalScroll).focus()  # the arrows scroll at once

    def on_resize(self) -> None:
        # at most the dialog's height (app.tcss: 90% of the terminal) less its frame, title and
        # buttons: the rest scrolls (a fixed 30 rows cut the Close button off at 80x24 and
        # 120x40)
        scroll = self.query_one(".dialog-scroll", VerticalScroll)
        scroll.styles.max_height = max(3, int(self.size.height * 0.9) - DIALOG_FRAME_ROWS)

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.dismiss()


# one paragraph an item: the help wraps them at whatever width the terminal has (what each key
# does is in the table above them, from the bindings' own tooltips)
RUN_HELP = (  # on a screen with the log pane
    'Log pane: follows the run; scroll up to stop following ("+N new lines" counts what '
    "arrived), End to follow again.",
    "Highlighted: panic, error, Traceback blocks, CUDA out-of-memory and NaN (any case).",
    "Chart: train loss with its KD and CE parts, val loss as points.",
)
COMPARE_HELP = (  # on the compare screen
    "Table: ← → scroll to the columns that do not fit the terminal.",
    "Judge runs by final val CE: val loss and train loss are each run's own objective "
    "(alpha*CE + (1-alpha)*T^2*KD), so across runs of another alpha, T or loss the chart draws "
    "train CE for train loss.",
    "⚠ beside a verdict: that run has a warning, said under the table.",
)
RUNS_HELP = (  # on the runs list
    "✓ before a run: selected to compare (space). • before a run: it ended and you have not "
    "opened it since (opening it clears the mark).",
)
HELP_TEXT = "\n".join((  # everywhere (then F8's line: where it saves depends on the screen)
    "ctrl+p: every action of this screen by name, the runs list, a run to open by its name, "
    "the theme (remembered; or kdtui --theme NAME).",
))


class HelpScreen(ModalScreen[None]):
    """Every key of the screen below (its own and its kdtui widgets') and of the app, with what
    each does, and what the panes do: scrollable, so it fits 80x24."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        from kdtui.palette import bindings_for, tooltip_on

        # this screen is already on the stack while it composes: the one beneath is before it
        beneath = [screen for screen in self.app.screen_stack if screen is not self]
        below = beneath[-1] if beneath else None
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        seen: set[tuple[str, str]] = set()
        # Textual's own widgets' keys (scrolling, text editing) are left to the footer
        for _, binding in bindings_for(below, self.app):
            key = binding.key_display or self.app.get_key_display(binding)  # as the footer
            if (key, binding.description) in seen:
                continue
            seen.add((key, binding.description))
            what = Text(binding.description)
            tip = tooltip_on(binding, below, self.app)
            if tip.lower().startswith(binding.description.lower()):
                what = Text(tip)  # 'Quit (asks about a run still going)' says it all
            elif tip:
                what.append(f": {tip}", style="dim")
            table.add_row(key.replace(",", " / "), what)
        with Vertical(classes="dialog help"):
            yield Label("Keys", classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll", id="help-scroll"):
                yield Static(table)
                panes = RUN_HELP if below is not None and below.query("LogView") else \
                    COMPARE_HELP if below is not None and below.query("#compare-table") else \
                    RUNS_HELP if below is not None and below.query("#runs-where") else ()
                place = getattr(self.app, "screenshot_place", None)
                shot = f"F8 saves an SVG screenshot {place(below)[1]}." if place else ""
                yield Static("\n" + "\n".join((*panes, HELP_TEXT, shot)),
                             classes="dialog-body")
            yield Static("Esc, F1 or q closes · ↑ ↓ PgUp PgDn scroll", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#help-scroll", VerticalScroll).focus()  # the arrows scroll at once

    def on_resize(self) -> None:
        # as tall as its text, at most the terminal less the frame, title and hint: the rest
        # scrolls (a percentage of an auto-height dialog cannot say that)
        scroll = self.query_one("#help-scroll", VerticalScroll)
        scroll.styles.max_height = max(3, self.size.height - 4)
