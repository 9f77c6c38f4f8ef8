"""The run screen's samples pane: what the student writes as an on-policy run goes.

Newest completion first, each under a header (step, split and prompt number, tokens, finished or
truncated, the teacher's mean log-prob) with the prompt's tail dimmed above it; scroll back
through earlier ones. `v` steps through the held-out prompts: one prompt's completions at each
evaluation, newest first, so a change in the student's writing reads top to bottom. The bottom
border holds the held-out scores (reverse KL, the teacher's log-prob) now and at step 0.

A virtual view, like the log: each sample is rendered once per width and theme into rows, and
only the visible rows are drawn. Reading older samples is not disturbed by new ones: the view
keeps its place when a sample arrives above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kdtui.samples import HeldOutGeneration, Sample, held_out_summary, one_line
from kdtui.widgets.run_panels import foreground

MAX_SAMPLES = 1000  # the oldest go first; at a few rows every sample_every steps, a long run
NARROW_BELOW = 64  # content cells: below, a sample's header is terse, so it stays one row (the
# full one, "step 40 · train #0 · 48 tok · truncated · teacher logp -5.661", needs ~62)
SHORT_BELOW = 10  # content rows: below, the prompt's tail gets one row, not two


@dataclass
class _Entry:
    serial: int  # arrival order, the key of its rendered rows
    sample: Sample


class SamplesView(ScrollView, can_focus=True):
    """The samples pane (see the module's docstring)."""

    BINDINGS = [
        Binding("v", "next_prompt", "By prompt", id="samples.by_prompt",
                tooltip="Samples pane: one held-out prompt's completion at each evaluation "
                        "(again: the next prompt, then every sample)"),
        Binding("z", "zoom", "Zoom", id="samples.zoom",
                tooltip="Samples pane: fill the screen with it, or put it back (Esc too)"),
        Binding("home,g", "scroll_home", "Newest", show=False, id="samples.newest"),
    ]

    COMPONENT_CLASSES = {"samples--step", "samples--facts", "samples--prompt",
                         "samples--finished", "samples--truncated", "samples--teacher",
                         "samples--empty"}

    DEFAULT_CSS = """
    SamplesView {
        background: $surface;
        color: $foreground;
        overflow: hidden scroll;
        scrollbar-size-vertical: 1;
        border: round $foreground 35%; border-title-color: $foreground;
        border-subtitle-color: $text-muted;
        & > .samples--step { color: $accent; text-style: bold; }
        & > .samples--facts { color: $text-muted; }
        & > .samples--prompt { color: $text-muted; text-style: italic; }
        & > .samples--finished { color: $text-success; }
        & > .samples--truncated { color: $text-warning; }
        & > .samples--teacher { color: $text-warning; text-style: bold; }
        & > .samples--empty { color: $text-muted; }
        &:focus { border: round $primary; }
    }
    """

    def __init__(self, *, max_samples: int = MAX_SAMPLES, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_samples = max_samples
        self.entries: list[_Entry] = []
        self.prompt_index: int | None = None  # None: every sample; k: held-out prompt k
        self.first_held_out: HeldOutGeneration | None = None
        self.last_held_out: HeldOutGeneration | None = None
        self._serial = 0
        self._rendered: dict[tuple[int, int, bool], list[Strip]] = {}  # (serial, width, prompt)
        self._rows: list[Strip] = []
        self._rows_width = -1
        self.layout_width: int | str | None = None  # what the run screen last made its width
        self.border_title = "samples"

    # -- content ------------------------------------------------------------------------------
    @property
    def shown(self) -> list[Sample]:
        """The samples of the current view, newest first."""
        return [entry.sample for entry in self._shown_entries()]

    def add_samples(self, samples: list[Sample]) -> None:
        """New samples (in arrival order): they go on top; a reader scrolled down stays put."""
        if not samples:
            return
        for sample in samples:
            self._serial += 1
            self.entries.append(_Entry(self._serial, sample))
        if len(self.entries) > self.max_samples:
            dropped = self.entries[: len(self.entries) - self.max_samples]
            del self.entries[: len(dropped)]
            gone = {entry.serial for entry in dropped}
            self._rendered = {k: v for k, v in self._rendered.items() if k[0] not in gone}
        before = len(self._rows)
        self._rebuild(keep_place=True, before=before)

    def add_held_out(self, scores: HeldOutGeneration) -> None:
        """An eval's held-out generation scores: the first is the baseline kept beside the
        latest in the bottom border."""
        if self.first_held_out is None or scores.step < self.first_held_out.step:
            self.first_held_out = scores
        if self.last_held_out is None or scores.step >= self.last_held_out.step:
            self.last_held_out = scores
        self._subtitle()

    def held_out_prompts(self) -> list[int]:
        return sorted({e.sample.index for e in self.entries if e.sample.split == "val"})

    # -- actions ------------------------------------------------------------------------------
    def action_next_prompt(self) -> None:
        """Every sample -> held-out prompt 0 -> 1 -> ... -> every sample."""
        prompts = self.held_out_prompts()
        if not prompts:
            self.notify("No held-out samples yet: they come with each evaluation", timeout=4)
            return
        if self.prompt_index is None:
            self.prompt_index = prompts[0]
        else:
            later = [p for p in prompts if p > self.prompt_index]
            self.prompt_index = later[0] if later else None
        self.border_title = "samples" if self.prompt_index is None else \
            f"samples · val #{self.prompt_index} at each eval"
        self.scroll_to(y=0, animate=False)
        self._rebuild()

    def action_zoom(self) -> None:
        screen = self.screen
        if screen.maximized is self:
            screen.minimize()
        else:
            screen.maximize(self, container=False)
            self.focus()

    # -- rendering ----------------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._rendered.clear()  # the theme changed: render again in its colours
        self._rows_width = -1

    def on_resize(self) -> None:
        self._rebuild()
        self._subtitle()

    def _shown_entries(self) -> list[_Entry]:
        entries = self.entries if self.prompt_index is None else [
            e for e in self.entries if e.sample.split == "val" and e.sample.index ==
            self.prompt_index]
        # newest step first; one step's samples (a batch's rows, an eval's prompts) in order
        return sorted(entries, key=lambda e: (-e.sample.step, e.serial))

    def _rebuild(self, keep_place: bool = False, before: int = 0) -> None:
        width = self.scrollable_content_region.width
        if width <= 0:
            return
        rows: list[Strip] = []
        entries = self._shown_entries()
        with_prompt = self.prompt_index is None
        if self._rows_width != width:
            self._rendered.clear()  # rows of the other width (the header's form depends on it)
        if not with_prompt and entries:
            rows += self._render(Text.assemble(
                ("prompt ", self._style("samples--facts")),
                (self._prompt_text(entries[0].sample, rows=4), self._style("samples--prompt"))),
                width)
            rows.append(Strip.blank(width, self.rich_style))
        for entry in entries:
            key = (entry.serial, width, with_prompt)
            if key not in self._rendered:
                self._rendered[key] = self._render(self._entry_text(entry.sample, with_prompt),
                                                   width) + [Strip.blank(width, self.rich_style)]
            rows += self._rendered[key]
        if not entries:
            rows = self._render(Text(
                "no samples yet: an on-policy run writes some every sample_every steps and at "
                "each evaluation", style=self._style("samples--empty")), width)
        added = len(rows) - before if keep_place and self._rows_width == width else 0
        self._rows, self._rows_width = rows, width
        self.virtual_size = Size(width, len(rows))
        if added > 0 and self.scroll_y > 0:  # reading older samples: they stay where they are
            self.scroll_to(y=self.scroll_y + added, animate=False)
        self.refresh()

    def _render(self, text: Text, width: int) -> list[Strip]:
        console = self.app.console
        lines = console.render_lines(text, console.options.update_width(width),
                                     style=self.rich_style, pad=True)
        return [Strip(line, width) for line in lines]

    def _style(self, name: str) -> Style:
        return foreground(self.get_component_rich_style(name))

    def _prompt_text(self, sample: Sample, rows: int | None = None) -> str:
        """The prompt's tail on one line, cut to `rows` rows of the pane (two; one in a short
        pane, where the completion needs the room)."""
        region = self.scrollable_content_region
        if rows is None:
            rows = 1 if region.height < SHORT_BELOW else 2
        room = max(8, rows * max(region.width, 20))
        prompt = one_line(sample.prompt.strip())
        return prompt if len(prompt) <= room else "…" + prompt[-(room - 1):]

    def _entry_text(self, sample: Sample, with_prompt: bool) -> Text:
        facts = self._style("samples--facts")
        terse = self.scrollable_content_region.width < NARROW_BELOW
        text = Text(no_wrap=False, overflow="fold")
        text.append(f"step {sample.step}", style=self._style("samples--step"))
        for fact in sample.facts()[1:]:
            style = {"finished": self._style("samples--finished"),
                     "truncated": self._style("samples--truncated")}.get(fact, facts)
            if fact.startswith("by the "):
                style = self._style("samples--teacher")
            if terse:  # one row at 80 columns: 'step 120 val #1 20 tok ✓ logp -0.90'
                fact = {"finished": "✓", "truncated": "✂"}.get(fact, fact)
                if fact.startswith("teacher logp ") and sample.teacher_logp is not None:
                    fact = f"logp {sample.teacher_logp:.2f}"
            text.append(" " if terse else " · ", style=facts)
            text.append(fact, style=style)
        if with_prompt and sample.prompt.strip():
            text.append("\n")
            text.append(self._prompt_text(sample), style=self._style("samples--prompt"))
        text.append("\n")
        text.append(sample.completion.rstrip() or "(empty completion)")
        return text

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        row = self.scroll_offset.y + y
        if self._rows_width != self.scrollable_content_region.width:
            self._rebuild()
        if 0 <= row < len(self._rows):
            return self._rows[row].crop_extend(0, width, self.rich_style)
        return Strip([Segment(" " * width, self.rich_style)], width)

    def _subtitle(self) -> None:
        if self.last_held_out is None:
            return
        cells = max(12, self.size.width - 4)
        self.border_subtitle = held_out_summary(self.first_held_out, self.last_held_out, cells)
