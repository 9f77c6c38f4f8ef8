"""The run screen's side panels: stage tracker, progress (step, epoch, tokens/s, ETA) and
verdict."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Static

from kdengine.durations import format_seconds
from kdengine.verdict import DistillReport, Verdict, loss_texts
from kdtui.samples import generation_rate, step_split

ENGINE_STAGES = ("prepare", "load_teacher", "load_student", "data", "train", "final_eval",
                 "verdict")
_ICONS = {"pending": "·", "running": "▶", "done": "✓", "failed": "✗", "skipped": "–",
          "cancelled": "■"}


@dataclass
class StageRow:
    name: str
    state: str = "pending"
    elapsed: float = 0.0
    detail: str = ""
    since: float | None = None  # monotonic time it started running, for a live clock
    host: str = ""
    started_at: float | None = None  # unix time it started running (its event's `t`)


def foreground(style: Style) -> Style:
    """A component class's colour and emphasis without its background: a background baked into
    a Text keeps the theme it was drawn in (a dark block in the light theme after a switch) and
    covers the widget's own background."""
    return Style(color=style.color, bold=style.bold, dim=style.dim, italic=style.italic,
                 underline=style.underline)


class StageTracker(Widget):
    """Each stage with its state and elapsed time; a running stage's clock ticks.

    Drawn by render() with a height fixed to its rows, so a tick repaints this widget alone
    instead of re-laying-out the screen (Static.update would)."""

    COMPONENT_CLASSES = {f"stage--{state}" for state in _ICONS}
    DEFAULT_CSS = """
    StageTracker {
        /* the faint border is decoration; its title is text: in the border's 35% it was
           2.1:1 on kdtui-light (tests/tui/test_border_titles_contrast.py) */
        border: round $foreground 35%; border-title-color: $foreground;
        height: auto; padding: 0 1;
        & > .stage--pending { color: $text-muted; }
        & > .stage--running { color: $accent; text-style: bold; }
        & > .stage--done { color: $text-success; }
        & > .stage--failed { color: $text-error; text-style: bold; }
        & > .stage--skipped { color: $text-muted; }
        & > .stage--cancelled { color: $text-warning; }
    }
    """

    def __init__(self, stages: tuple[str, ...] = ENGINE_STAGES, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[str, StageRow] = {name: StageRow(name) for name in stages}
        self.border_title = "stages"
        self._table: Table | Text | None = None
        self.compact = False  # one line (where the run is) instead of a row a stage

    @property
    def full_height(self) -> int:
        """Its height with a row a stage (borders included)."""
        return len(self.rows) + 2

    def set_compact(self, compact: bool) -> None:
        if compact != self.compact:
            self.compact = compact
            self._draw()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._table = None  # the theme changed: draw again in its colours

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)
        self._draw()

    def set_stages(self, stages: tuple[str, ...]) -> None:
        self.rows = {name: self.rows.get(name, StageRow(name)) for name in stages}
        self._draw()

    def render(self) -> Table | Text:
        if self._table is None:
            self._draw()
        assert self._table is not None
        return self._table

    def update_stage(self, name: str, state: str, elapsed: float = 0.0, detail: str = "",
                     host: str = "", started_at: float | None = None) -> None:
        """started_at: the unix time of the stage's event; a running stage's clock counts from
        it, so a dashboard that attaches late shows how long the stage has really run."""
        if name not in self.rows:
            self.rows[name] = StageRow(name)
        row = self.rows[name]
        row.state = state
        row.elapsed = float(elapsed or 0.0)
        row.host = host or row.host
        if detail:
            row.detail = detail
        row.since = None
        if state == "running":
            if isinstance(started_at, (int, float)):
                row.started_at = float(started_at)
                row.elapsed = max(row.elapsed, time.time() - row.started_at)
            row.since = time.monotonic() - row.elapsed
        self._draw()

    def restart(self, stages: tuple[str, ...]) -> None:
        """A resumed part of the run starts: `stages` run again, so each is pending with no
        detail (the previous part's, "SIGTERM received", would read as the new part's)."""
        for name in stages:
            if name in self.rows:
                self.rows[name] = StageRow(name, host=self.rows[name].host)
        self._draw()

    def finish_running(self, state: str, ended_at: float | None = None) -> None:
        """The run ended: a stage still marked running ended with it (a killed engine); ended_at:
        the unix time of the run's last event, when known (the stage ran until then)."""
        for row in self.rows.values():
            if row.state == "running":
                row.state = state
                if row.started_at is not None and isinstance(ended_at, (int, float)):
                    row.elapsed = max(0.0, ended_at - row.started_at)
                elif row.since is not None:
                    row.elapsed = time.monotonic() - row.since
                row.since = None
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _tick(self) -> None:
        if any(r.since is not None for r in self.rows.values()):
            self._draw()

    def _draw(self) -> None:
        if self.compact:
            self._table = self._summary()
            if self.is_attached:
                self.styles.height = 3
            self.refresh()
            return
        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(min_width=12)
        table.add_column(justify="right", min_width=6)
        # the detail gets what the other columns leave: a long one (gloo's "[/.../pair.cc:553]
        # Connection closed by peer ...") otherwise squeezed the icons and names to nothing
        name_width = max([12, *(len(name) for name in self.rows)])
        room = self.content_size.width - (1 + name_width + 6 + 3)
        table.add_column(overflow="ellipsis", no_wrap=True,
                         max_width=max(room, 4) if self.content_size.width else None)
        styles = self._styles()
        now = time.monotonic()
        for row in self.rows.values():
            elapsed = now - row.since if row.since is not None else row.elapsed
            clock = format_seconds(elapsed) if row.state != "pending" else ""
            style = styles.get(row.state, "")
            table.add_row(Text(_ICONS.get(row.state, "?"), style=style),
                          Text(row.name, style=style), Text(clock, style="dim"),
                          Text(row.detail, style="dim"))
        self._table = table
        if self.is_attached:
            self.styles.height = self.full_height
        self.refresh()

    def _summary(self) -> Text:
        """One line for a short terminal: the stage that matters now (running, failed,
        cancelled, else the last one with news) with its clock, and how many are done."""
        styles = self._styles()
        rows = list(self.rows.values())
        done = sum(row.state in ("done", "skipped") for row in rows)
        now = time.monotonic()
        focus = next((r for r in rows if r.state in ("failed", "cancelled")), None) or next(
            (r for r in rows if r.state == "running"), None)
        text = Text(no_wrap=True, overflow="ellipsis")
        if focus is None and done == len(rows):
            text.append(f"{_ICONS['done']} all {len(rows)} stages done", style=styles["done"])
            return text
        if focus is None:
            focus = next((r for r in rows if r.state == "pending"), rows[0]) if rows else None
        if focus is not None:
            style = styles.get(focus.state, "")
            elapsed = now - focus.since if focus.since is not None else focus.elapsed
            text.append(f"{_ICONS.get(focus.state, '?')} {focus.name}", style=style)
            if focus.state != "pending":
                text.append(f" {format_seconds(elapsed)}", style="dim")
            if focus.state != "running" and focus.state != "pending":
                text.append(f" {focus.state}", style=style)
            text.append(" · ", style="dim")
        text.append(f"{done}/{len(rows)} done", style="dim")
        return text

    def _styles(self) -> dict[str, Style]:
        return {state: foreground(self.get_component_rich_style(f"stage--{state}"))
                for state in _ICONS}


MAX_RANK_BADGES = 16  # more ranks than this: a count instead of a badge each


@dataclass
class RankStatus:
    """The ranks of a torchrun run (world_size > 1), from rank 0's events: each is ok until a
    `log` error event with its `rank` arrives (or run_finished names it in `failed_ranks`)."""

    world_size: int
    backend: str = ""
    failed: dict[int, str] = field(default_factory=dict)  # rank -> first line of its message
    ended: str = ""  # "", or how the run ended: completed, failed, cancelled

    @property
    def title(self) -> str:
        backend = f" ({self.backend})" if self.backend else ""
        return f"torchrun · {self.world_size} ranks{backend}"

    def fail(self, rank: int, message: str) -> None:
        """The first error of a rank is its cause; a later one (often an echo) is kept out."""
        if rank not in self.failed:
            self.failed[rank] = first_line(message)

    def summary(self) -> str:
        """Plain words, for the tooltip and tests: 'rank 1 failed: FileNotFoundError: ...'."""
        if not self.failed:
            return f"all {self.world_size} ranks ok"
        return "\n".join(f"rank {rank} failed: {msg}" for rank, msg in sorted(self.failed.items()))


def first_line(message: str) -> str:
    """The first non-empty line of a message, without the relay's own 'rank N failed: '."""
    line = next((ln.strip() for ln in str(message).splitlines() if ln.strip()), "")
    head, sep, rest = line.partition(" failed: ")
    if sep and head.startswith("rank ") and head[5:].isdigit():
        return rest
    return line


RATE_INTERVALS = 8  # the step events the ETA's rate is read over: a few seconds of steps


def recent_step_rate(marks: list[tuple[float, int]]) -> float:
    """Steps a second now: the median of the last RATE_INTERVALS gaps between step events,
    each its steps over its seconds, so it follows the rate the step's tokens/s shows. The
    rate over the last 50 events (as before) lagged a change of pace by minutes, and under CPU
    contention the ETA told twice or half the time the tokens/s did; the median also keeps an
    eval's or a checkpoint's pause between two steps from swinging it."""
    recent = marks[-RATE_INTERVALS - 1:]
    rates = [(s1 - s0) / (t1 - t0) for (t0, s0), (t1, s1) in zip(recent, recent[1:], strict=False)
             if t1 > t0 and s1 > s0]
    return statistics.median(rates) if rates else 0.0


def _positive_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _to_come(every: int, step: int, total: int, seen: set[int]) -> int:
    """How many of a run's every-`every`-steps pauses (evals, checkpoints) before `total` are
    still ahead at `step`: the multiples of `every` in (step, total), and `step`'s own when its
    step event came and the pause's has not."""
    if not every or total <= step:
        return 0
    ahead = (total - 1) // every - step // every
    return ahead + (0 < step and step % every == 0 and step not in seen)


class RunProgress(Widget):
    """step N of M (and epoch N/M when the engine has epochs), tokens/s, ETA: the steps left at
    the recent step rate plus the evaluations and checkpoint pauses still to come, each at the
    last one's measured time (render(), fixed height: an update repaints this widget only)."""

    COMPONENT_CLASSES = {"rank--ok", "rank--failed", "rank--stopped"}
    DEFAULT_CSS = """
    RunProgress {
        border: round $foreground 35%; border-title-color: $foreground; height: 6;
        padding: 0 1;
        & > .rank--ok { color: $text-success; }
        & > .rank--failed { color: $text-error; text-style: bold; }
        & > .rank--stopped { color: $text-muted; }
    }
    RunProgress.-rank-failed { border-subtitle-color: $text-error; }
    """

    def count_rows(self) -> None:
        """A teacher-cache job: its steps are rows scored, and the panel says so."""
        self.border_title = "progress (rows scored)"
        self.unit = "rows"
        self._draw()

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "progress"
        self.unit = "step"  # what step counts: "rows" for a teacher-cache job (rows scored)
        self.ranks: RankStatus | None = None  # a torchrun run's ranks; None: one process
        self.step = 0
        self.total: int | None = None
        self.tokens_per_s: float | None = None
        self.eta: float | None = None
        self._engine_eta: float | None = None  # the last step event's eta_s (a cache job's)
        self.epoch: int | None = None  # the epoch in progress, or the last one that ended
        self.epochs: int | None = None
        self._epochs_done = 0
        self._epoch_end_step: int | None = None
        self._marks: list[tuple[float, int]] = []  # (event time, step), a sliding window
        # the run's schedule (run_started's config; 0: none or unknown) and what its pauses
        # measured: the step rate leaves them out, so the ETA adds those still to come
        self._eval_every = 0
        self._checkpoint_every = 0
        self._schedule_known = False
        self._eval_s: float | None = None  # the last evaluation's seconds
        self._stall_s: float | None = None  # the last checkpoint's hold on the training loop
        self._write_s: float | None = None  # and its write (the final one waits for it)
        self._evals_seen: set[int] = set()
        self._checkpoints_seen: set[int] = set()
        self.split = ""  # an on-policy step's time split (kdtui.samples.step_split); "": none
        self.gen_rate: float | None = None  # an on-policy step's generated tokens/s
        self._text = Text("")
        self.compact = False  # two lines (bar; step and ETA) for a short terminal

    @property
    def full_height(self) -> int:
        """Its height with every line (borders included)."""
        return self._lines(compact=False) + 2

    def set_compact(self, compact: bool) -> None:
        if compact != self.compact:
            self.compact = compact
            self._draw()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self.ranks is not None:  # the rank badges' colours come from the theme
            self._text = Text("")
            self._draw()

    def expect_total(self, steps: object) -> None:
        """The steps the run was asked for (its config), known before the first step event."""
        if self.total is None and isinstance(steps, int) and not isinstance(steps, bool) \
                and steps > 0:
            self.total = steps
            self._draw()

    def _lines(self, compact: bool) -> int:
        rank_lines = 0 if self.ranks is None else 1 + bool(self.ranks.failed)
        split_lines = 1 if self.split and not compact else 0
        return (2 if compact else 4) + rank_lines + split_lines

    def render(self) -> Text:
        return self._text

    def on_mount(self) -> None:
        self._draw()

    def on_resize(self) -> None:
        self._draw()  # the bar and a failed rank's message are cut to the width

    def add_step(self, event: dict) -> None:
        step = int(event.get("step", 0))
        self.step = max(self.step, step)
        total = event.get("total_steps")
        if isinstance(total, int):
            self.total = total
        tps = event.get("tokens_per_s")
        if isinstance(tps, (int, float)):
            self.tokens_per_s = float(tps)
        eta = event.get("eta_s")  # a teacher-cache job's own ETA: its log line says the same
        self._engine_eta = float(eta) if isinstance(eta, (int, float)) and eta >= 0 else None
        self.split = step_split(event) or self.split
        self.gen_rate = generation_rate(event) or self.gen_rate
        epoch = event.get("epoch")
        if isinstance(epoch, int) and epoch > 0:
            self.epoch = max(self.epoch or 0, epoch)
        elif self.epochs and (self._epoch_end_step is None or step > self._epoch_end_step):
            # a step with no epoch of its own (apr numbering steps across epochs): it belongs
            # to the epoch after the last one that ended
            self.epoch = max(self.epoch or 0, min(self._epochs_done + 1, self.epochs))
        t = event.get("t")
        if isinstance(t, (int, float)):
            self._marks.append((float(t), step))
            if len(self._marks) > 50:
                del self._marks[: len(self._marks) - 50]

    def expect_schedule(self, config: object) -> None:
        """run_started's effective config: when the run evaluates and checkpoints."""
        if isinstance(config, dict):
            self._eval_every = _positive_int(config.get("eval_every"))
            self._checkpoint_every = _positive_int(config.get("checkpoint_every"))
            self._schedule_known = True

    def add_eval(self, event: dict) -> None:
        """An `eval` event, written as the evaluation ends: its time is measured from the step
        event just before it (the step it evaluates after), or from where the step rate puts
        that step when the run logs no event at it."""
        step, t = event.get("step"), event.get("t")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        self._evals_seen.add(step)
        if step == 0 or not isinstance(t, (int, float)):
            # step 0's (the first step event's eval0_s) is no measure of the later ones: it
            # also scores the teacher's own val CE and pays the first calls' warm-up (a demo
            # run's took 26.7 s, its step-100 eval 2.0 s: five evals counted 2m13s, not 10 s)
            return
        before = [(t0, s0) for t0, s0 in self._marks if s0 <= step and t0 <= t]
        if not before:
            return
        t0, s0 = before[-1]
        if s0 < step:
            rate = recent_step_rate(self._marks)
            if rate <= 0:
                return
            t0 += (step - s0) / rate
        self._eval_s = max(0.0, float(t) - t0)

    def add_checkpoint(self, event: dict) -> None:
        """A `checkpoint` event: its `stall_s` (the loop held) and `write_s` (the final
        checkpoint's wait)."""
        step = event.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self._checkpoints_seen.add(step)
        if event.get("reason") == "cancel":
            return
        for name in ("stall_s", "write_s"):
            value = event.get(name)
            if isinstance(value, (int, float)) and value >= 0:
                setattr(self, f"_{name}", float(value))

    def pauses_to_come(self) -> float:
        """Seconds of evaluations and checkpoints still ahead of the run (from step `step`),
        each at the last one's measured time; 0 for those not yet measured, or when the run's
        schedule is unknown."""
        if not self._schedule_known or not self.total:
            return 0.0
        step, total = self.step, self.total
        seconds = 0.0
        eval_s = self._eval_s or 0.0
        if eval_s:
            evals = _to_come(self._eval_every, step, total, self._evals_seen)
            evals += total not in self._evals_seen  # the final evaluation
            seconds += evals * eval_s
        if self._stall_s is not None:
            stalls = _to_come(self._checkpoint_every, step, total, self._checkpoints_seen)
            seconds += stalls * self._stall_s
            if total not in self._checkpoints_seen:  # the final one: the run waits for it
                seconds += self._stall_s + (self._write_s or 0.0)
        return seconds

    def end_at(self, steps: object) -> None:
        """run_finished's `steps`: the last step trained, which a run that logs every N steps
        (or was cancelled between two logged steps) may not have shown in a step event."""
        if isinstance(steps, int) and not isinstance(steps, bool) and steps > self.step:
            self.step = steps

    def expect_epochs(self, epochs: int | None) -> None:
        """The run was asked for this many epochs (known before its first epoch ends)."""
        if isinstance(epochs, int) and epochs > 0:
            self.epochs = epochs

    def add_epoch(self, event: dict) -> None:
        """An `epoch` event: epoch N of M ended (at step `step`)."""
        epoch, epochs, step = event.get("epoch"), event.get("epochs"), event.get("step")
        if isinstance(epochs, int) and epochs > 0:
            self.epochs = epochs
        if isinstance(epoch, int) and epoch > 0:
            self._epochs_done = max(self._epochs_done, epoch)
            self.epoch = max(self.epoch or 0, epoch)
        if isinstance(step, int):
            self._epoch_end_step = step

    def set_ranks(self, world_size: object, backend: object = "") -> None:
        """run_started said how many ranks there are; one process (or none said) shows none."""
        if isinstance(world_size, int) and world_size > 1:
            self.ranks = RankStatus(world_size, str(backend or ""))
            self.border_subtitle = self.ranks.title
            self._draw()

    def rank_failed(self, rank: object, message: object) -> None:
        """A `log` error event with a `rank` field: that rank is marked failed."""
        if self.ranks is None or not isinstance(rank, int) or isinstance(rank, bool):
            return
        self.ranks.fail(rank, str(message or ""))
        self._draw()

    def ranks_ended(self, finished: dict) -> None:
        """run_finished: its `failed_ranks` (rank 0's watcher ended the run) count as failed."""
        if self.ranks is None:
            return
        for rank in finished.get("failed_ranks") or ():
            if isinstance(rank, int):
                self.ranks.fail(rank, "failed (named in run_finished)")
        self.ranks.ended = str(finished.get("status") or "failed")
        self._draw()

    def refresh_view(self, finished: bool = False) -> None:
        if finished:
            self.eta = 0.0 if self.total and self.step >= self.total else None
        elif self._engine_eta is not None:
            self.eta = self._engine_eta
        elif len(self._marks) >= 2 and self.total:
            rate = recent_step_rate(self._marks)
            self.eta = ((self.total - self.step) / rate + self.pauses_to_come()
                        if rate > 0 else None)
        self._draw()

    def _draw(self) -> None:
        width = self.content_size.width
        bar_width = max(8, min(28, width - 6)) if width else 28
        frac = min(1.0, self.step / self.total) if self.total else 0.0
        filled = int(frac * bar_width)
        bar = Text("█" * filled, style="bold") + Text("░" * (bar_width - filled), style="dim")
        total = f"{self.total:,}" if self.total else "?"
        tps = f"{self.tokens_per_s:,.0f}" if self.tokens_per_s is not None else "–"
        sep = (" · ", "dim")  # the compact line's parts: a visible separator, never glued
        generated = Text("")  # an on-policy run's generation rate, beside the trained rate
        if self.gen_rate is not None:
            generated = Text.assemble(("   gen tok/s ", "dim"), f"{self.gen_rate:,.0f}")
        step = Text.assemble((f"{self.unit} ", "dim"), f"{self.step:,} / {total}")
        epoch = Text("")
        if self.epoch is not None:
            epoch = Text.assemble(("   epoch ", "dim"), f"{self.epoch}/{self.epochs or '?'}")
        eta = Text.assemble(("ETA ", "dim"), format_seconds(self.eta))
        if self.compact:
            # one line for step, epoch and ETA: a narrow panel drops the epoch, then the ETA
            line = Text.assemble(step, epoch, sep, eta)
            if width and line.cell_len > width:
                line = Text.assemble(step, sep, eta)
            if width and line.cell_len > width:
                line = step
            text = Text.assemble(bar, f" {frac:4.0%}\n", line)
        else:
            text = Text.assemble(
                bar, f" {frac:4.0%}\n", step, epoch, "\n",
                ("tokens/s ", "dim"), tps, generated, "\n", eta,
            )
            if self.split:  # an on-policy run: where the step's time went
                split = Text(self.split, style="dim", no_wrap=True, overflow="ellipsis")
                if width:
                    split.truncate(width, overflow="ellipsis")
                text.append("\n")
                text.append_text(split)
        if self.ranks is not None:
            text.append("\n")
            text.append_text(self._rank_lines())
        if text.plain != self._text.plain or text.spans != self._text.spans:
            self._text = text
            self.styles.height = text.plain.count("\n") + 3
            if self.ranks is not None:
                self.set_class(bool(self.ranks.failed), "-rank-failed")
                self.tooltip = f"{self.ranks.title}\n{self.ranks.summary()}"
            self.refresh()

    def _rank_lines(self) -> Text:
        """'ranks ✓0 ✗1   1 failed', then the lowest failed rank's message (every failed rank's
        is in the tooltip). Ranks that did not fail show as stopped once the run ended badly."""
        ranks = self.ranks
        assert ranks is not None
        ok, bad, stopped = (foreground(self.get_component_rich_style(f"rank--{name}"))
                            for name in ("ok", "failed", "stopped"))
        halted = ranks.ended in ("failed", "cancelled")
        calm_icon, calm = ("■", stopped) if halted else ("✓", ok)
        line = Text("ranks ", style="dim")
        if ranks.world_size <= MAX_RANK_BADGES:
            for rank in range(ranks.world_size):
                if rank in ranks.failed:
                    line.append(f"✗{rank}", style=bad)
                else:
                    line.append(f"{calm_icon}{rank}", style=calm)
                line.append(" ")
        else:  # too many for a badge each: how many are fine, and which failed
            fine = ranks.world_size - len(ranks.failed)
            line.append(f"{fine} {'stopped' if halted else 'ok'} ", style=calm)
        if not ranks.failed:
            if not halted:
                line.append(" all ok", style=ok)
            return line
        failed = sorted(ranks.failed)
        if ranks.world_size <= MAX_RANK_BADGES:
            line.append(f" {len(failed)} failed", style=bad)
        else:
            line.append(f" failed: {', '.join(map(str, failed))}", style=bad)
        more = f" +{len(failed) - 1} more" if len(failed) > 1 else ""
        detail = Text(f"rank {failed[0]}: {ranks.failed[failed[0]]}", style=bad)
        width = self.content_size.width
        detail.truncate(max(width - len(more), 8) if width else 200, overflow="ellipsis")
        line.append("\n")
        line.append_text(detail)
        line.append(more, style="dim")
        return line


class VerdictPanel(Static):
    """pending, then PASS / FAIL / INCONCLUSIVE with the step-0 and final val loss and why."""

    DEFAULT_CSS = """
    VerdictPanel {
        border: round $foreground 35%; border-title-color: $foreground; height: auto;
        padding: 0 1;
    }
    VerdictPanel.pass { border: heavy $success; }
    VerdictPanel.fail { border: heavy $error; }
    VerdictPanel.inconclusive { border: heavy $warning; }
    VerdictPanel > .verdict--warning { color: $text-warning; text-style: bold; }
    """
    COMPONENT_CLASSES = {"verdict--warning"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "verdict F-DISTILL-SMOKE-001"
        self.verdict: Verdict | None = None
        self.status = "pending"
        self._heights: dict[tuple[int, str], int] = {}  # (width, text) -> height_for
        self._plain = ""
        self.report: DistillReport | None = None  # val CE/KD apart, teacher CE, warnings
        self._base = Text()
        self.brief = False  # val CE/KD lines folded away: the run screen is short
        # the delta line folded away too (the two numbers above it say it): shorter still, as
        # an on-policy run's two-line reason and two warnings at 80x24
        self.no_delta = False

    def on_mount(self) -> None:
        self.show(None)

    def height_for(self, width: int) -> int:
        """Its height (borders included) in a column `width` cells wide: what the run screen
        must leave it so that no line of the verdict is cut."""
        key = (width, self._plain)
        if key not in self._heights:  # asked on every update tick: measured once per text
            content = max(1, width - 4)  # borders and padding
            size = Size(content, 1000)
            self._heights = {key: self.get_content_height(size, size, content) + 2}
        return self._heights[key]

    def show(self, verdict: Verdict | None, initial: float | None = None,
             label: str = "val loss", latest: tuple[int, float] | None = None) -> None:
        """verdict None: the run goes on (initial: the step-0 number the verdict will judge by,
        once known: `label` says which, val loss or an on-policy run's val gen KL; latest:
        (step, value) of that number's newest eval after step 0, shown under it)."""
        self.verdict = verdict
        self.status = verdict.status if verdict else "pending"
        self.set_class(self.status == "pass", "pass")
        self.set_class(self.status == "fail", "fail")
        self.set_class(self.status == "inconclusive", "inconclusive")
        if verdict is None:
            step0 = f"{initial:.4f}" if initial is not None else "–"
            if latest is None:
                self._show_text(Text.assemble(("PENDING", "bold"), "\n",
                                              (f"step-0 {label} ", "dim"), step0))
                return
            # as the verdict will show them: step 0's and the latest, in one column
            col = max(17, len("latest " + label) + 1)
            self._show_text(Text.assemble(
                ("PENDING", "bold"), "\n", (f"{'step-0 ' + label:<{col}}", "dim"), step0, "\n",
                (f"{'latest ' + label:<{col}}", "dim"), f"{latest[1]:.4f}",
                (f" (step {latest[0]})", "dim")))
            return
        def num(x: float | None) -> str:
            return f"{x:.4f}" if x is not None else "–"
        initial_text, final_text = num(verdict.initial_loss), num(verdict.final_loss)
        delta = "–"
        if verdict.initial_loss is not None and verdict.final_loss is not None:
            # as the summary line: digits enough that PASS/FAIL and the numbers agree
            initial_text, final_text, delta = loss_texts(verdict.initial_loss,
                                                         verdict.final_loss)
        # labels padded to one column, with at least one space before the numbers
        first = f"step-{verdict.initial_step} "  # a train-batch verdict's first loss: step 1
        col = max(17, len(first + verdict.loss_label) + 1)
        self._show_text(Text.assemble(
            (verdict.status.upper(), "bold"), "\n",
            (f"{first + verdict.loss_label:<{col}}", "dim"), initial_text,
            "\n",
            (f"{'final ' + verdict.loss_label:<{col}}", "dim"), final_text,
            (f" (step {verdict.final_step})" if verdict.final_step is not None else "", "dim"),
            *(() if self.no_delta else ("\n", (f"{'delta':<{col}}", "dim"), delta)),
            "\n", verdict.reason,
        ))

    def show_launch_failed(self, message: str) -> None:
        """The launch failed: no run, so no verdict to wait for; why, in the error's border."""
        self.verdict = None
        self.status = "launch failed"
        self.set_class(True, "fail")
        self.set_class(False, "pass")
        self.set_class(False, "inconclusive")
        self.border_subtitle = "launch failed"
        self.report = None
        self._show_text(Text.assemble(("LAUNCH FAILED", "bold"), "\n", message))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self.report is not None and self.report.warnings:
            self._show_text(self._base)  # the warning's colour is the theme's

    @property
    def report_lines(self) -> int:
        """The val CE and val KD lines it shows, or would show unfolded (0 or 2)."""
        return 2 if self.report is not None and _ce_known(self.report) else 0

    @property
    def folded_lines(self) -> int:
        return (self.report_lines if self.brief else 0) + (
            1 if self.no_delta and self.verdict is not None else 0)

    def set_brief(self, brief: bool, no_delta: bool = False) -> None:
        """Fold the val CE/KD lines away (a short terminal), and with `no_delta` the delta
        line; warnings always show."""
        if brief != self.brief:
            self.brief = brief
            self._show_text(self._base)
        if no_delta != self.no_delta:
            self.no_delta = no_delta
            if self.verdict is not None:
                self.show(self.verdict)

    def show_report(self, report: DistillReport | None) -> None:
        """Under the verdict: val CE and val KD apart (step 0 -> latest), the teacher's CE, the
        share of the CE gap closed, and a warning where the objective misleads."""
        if report != self.report:
            self.report = report
            self._show_text(self._base)

    def _show_text(self, text: Text) -> None:
        self._base = text
        if self.report is not None:
            text = text.copy()
            warn = foreground(self.get_component_rich_style("verdict--warning"))
            text.append_text(distill_lines(self.report, warn, numbers=not self.brief))
        self._plain = text.plain
        self.update(text)


def _ce_known(report: DistillReport) -> bool:
    """Step 0's val CE, and the latest eval's when there is one (an engine that reports
    val_loss alone has nothing for these lines)."""
    return report.initial_ce is not None and (report.latest_step is None
                                              or report.latest_ce is not None)


def distill_lines(report: DistillReport, warn: Style | str = "bold", numbers: bool = True
                  ) -> Text:
    """'val CE 5.304 → 2.962 teacher 1.643' / 'val KD 1.933 → 0.567 gap closed 64%', then the
    warnings: each line fits the 36 cells of the panel at 80 columns."""
    def num(x: float | None) -> str:
        return f"{x:.3f}" if x is not None else "–"

    text = Text()
    if not _ce_known(report) or not numbers:
        for warning in report.warnings:
            text.append(f"\n⚠ {warning}", warn)
        return text
    text.append("\n")
    text.append("val CE ", "dim")
    text.append(f"{num(report.initial_ce)} → {num(report.latest_ce)}")
    if report.teacher_ce is not None:
        text.append(" teacher ", "dim")
        text.append(num(report.teacher_ce))
    text.append("\n")
    text.append("val KD ", "dim")
    text.append(f"{num(report.initial_kd)} → {num(report.latest_kd)}")
    if report.gap_closed is not None:
        text.append(" gap closed ", "dim")
        text.append(f"{report.gap_closed:.0%}")
    for warning in report.warnings:
        text.append("\n")
        text.append(f"⚠ {warning}", warn)
    return text
