"""The live loss chart: train loss with its KD and CE parts, the val-loss points, an on-policy
run's val gen KL points (what its verdict judges), and the epoch-end losses of an engine that
reports epochs (apr), by step.

Points go into `DecimatedSeries`, which keeps at most `cap` buckets by merging neighbours pairwise
when full (O(1) per point), so a million-step run costs the plot the same as a short one; the
newest point is always drawn as it is. EMA smoothing is computed per raw point on arrival.
Drawn with textual-plotext, at most every `REDRAW_S` seconds. The legend is in the bottom border,
never on the plot (plotext's sits on its top left, where step 0 is), and the step axis is labelled
with whole steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual.reactive import var
from textual.theme import Theme
from textual_plotext import PlotextPlot, plotext

EMA_BETA = 0.9
REDRAW_S = 0.25


@dataclass
class DecimatedSeries:
    """A series downsampled into at most `cap` equal-count buckets (their means), plus the last
    raw point, which is always kept so the chart's end is the run's latest value."""

    cap: int = 256
    bucket: int = 1  # raw points per bucket; doubles when the buckets are full
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    _sum_x: float = 0.0
    _sum_y: float = 0.0
    _n: int = 0
    last: tuple[float, float] | None = None
    count: int = 0

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return  # a NaN is reported by the log and the verdict; it has no place on an axis
        self.count += 1
        self.last = (x, y)
        self._sum_x += x
        self._sum_y += y
        self._n += 1
        if self._n == self.bucket:
            self.xs.append(self._sum_x / self._n)
            self.ys.append(self._sum_y / self._n)
            self._sum_x = self._sum_y = 0.0
            self._n = 0
            if len(self.xs) >= self.cap:
                self._halve()

    def _halve(self) -> None:
        xs, ys = self.xs, self.ys
        self.xs = [(xs[i] + xs[i + 1]) / 2 for i in range(0, len(xs) - 1, 2)]
        self.ys = [(ys[i] + ys[i + 1]) / 2 for i in range(0, len(ys) - 1, 2)]
        if len(xs) % 2:
            # an odd bucket out goes back into the running partial bucket
            self._sum_x += xs[-1] * self.bucket
            self._sum_y += ys[-1] * self.bucket
            self._n += self.bucket
        self.bucket *= 2

    def points(self) -> tuple[list[float], list[float]]:
        """Bucket means, then the last raw point (always kept)."""
        xs, ys = list(self.xs), list(self.ys)
        if self.last is not None and (not xs or xs[-1] != self.last[0]):
            xs.append(self.last[0])
            ys.append(self.last[1])
        return xs, ys


class EMA:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""

    def __init__(self, beta: float = EMA_BETA) -> None:
        self.beta = beta
        self.value = 0.0
        self.n = 0

    def add(self, y: float) -> float:
        if not math.isfinite(y):
            return y
        self.n += 1
        self.value = self.beta * self.value + (1 - self.beta) * y
        return self.value / (1 - self.beta ** self.n)


SERIES = ("loss", "kd", "ce")
# val loss in the compare chart's orange (256-colour 166): plotext's "orange" is the terminal
# palette's yellow, 2.6:1 on kdtui-light's chart (the points hard to see)
COLORS: dict[str, str | int] = {"loss": "cyan", "kd": "magenta", "ce": "green", "val_loss": 166,
                                 # the compare chart's blue
                                 "val_gen_kl": 32}
GEN_KL_LABEL = "val gen KL"  # the verdict panel's word for it
# epoch-end points: yellow reads well on a dark background, not on a light one
EPOCH_COLOR = {True: "yellow", False: "blue"}
EPOCH_LABEL = "epoch loss"
MAX_EPOCH_TAGS = 12  # more epochs than this: the points are drawn, their "eN" tags are not
LINE_MARK = "⢕"  # a line series' mark in the legend (plotext's own legend draws braille too)
Y_AXIS_CELLS = 6  # about what the y axis' labels and ticks take of the chart's width


def step_label(step: int) -> str:
    """A step as the axis shows it: whole, shortened from 100k (150k, 1.5M)."""
    if abs(step) < 100_000:
        return str(step)
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if abs(step) >= size:
            return f"{step / size:.3g}{unit}"
    return str(step)  # pragma: no cover - 100k and up has a unit


def integer_ticks(low: float, high: float, columns: int, most: int = 6) -> list[int]:
    """Whole-number ticks inside [low, high], 1, 2 or 5 times a power of ten apart, as many as
    fit `columns` cells with room between their labels (at least two): plotext's own ticks split
    the range in four (0.0 83.8 167.5 251.2 335.0), fractions of a step that does not exist."""
    first, last = math.ceil(low), math.floor(high)
    if last <= first:
        return [first] if first == last else []
    magnitude = 10 ** max(0, int(math.log10((last - first) / most)))
    for step in (m * magnitude * ten for ten in (1, 10, 100) for m in (1, 2, 5)):
        if (last - first) // step + 1 > most:
            continue
        ticks = list(range(math.ceil(first / step) * step, last + 1, step))
        cells = max(len(step_label(t)) for t in ticks) + 2
        if len(ticks) <= 2 or len(ticks) * cells <= columns:
            return ticks
    return [first, last]  # pragma: no cover - a step of 100x the span leaves one tick


def follow_ansi_themes(plot: PlotextPlot) -> None:
    """Draw `plot` in the terminal's own colours under an ANSI theme (ansi-dark, ansi-light),
    in the app theme's otherwise. An ANSI theme's colours are the terminal's defaults, which
    textual-plotext's "auto" theme reads as black: its axes and labels were black on black.
    Call before PlotextPlot.on_mount: on a theme change this callback runs first, so that
    going back to "auto" finds the new theme registered by PlotextPlot's own callback."""
    def follow(theme: Theme) -> None:
        plot.theme = "clear" if theme.ansi else "auto"  # plotext's "clear": no colours of its own

    follow(plot.app.current_theme)
    plot.app.theme_changed_signal.subscribe(plot, follow)


class LossChart(PlotextPlot):
    """Train loss, KD and CE parts, val loss, epoch-end loss; `smooth` (EMA) and `log_y` toggle
    how it is drawn (the EMA smooths the step series only: an epoch's loss is already a mean)."""

    DEFAULT_CSS = """
    LossChart {
        border: round $foreground 35%; border-title-color: $foreground; height: 1fr;
        /* the legend's labels in the text's colour, not the muted border's (faint in the
           high-contrast theme); its marks keep the plot's colours */
        border-subtitle-align: left; border-subtitle-color: $foreground;
    }
    """

    smooth: var[bool] = var(False)
    log_y: var[bool] = var(False)
    badge: var[str] = var("")  # after the title: a run from a teacher cache says so

    def __init__(self, *, cap: int = 256, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.raw = {name: DecimatedSeries(cap) for name in SERIES}
        self.ema = {name: DecimatedSeries(cap) for name in SERIES}
        self._ema = {name: EMA() for name in SERIES}
        self.val = DecimatedSeries(cap)
        # an on-policy run's held-out KL(student || teacher) on its own completions: the number
        # its verdict judges, which val loss (the objective on the data's completions) is not
        self.gen_kl = DecimatedSeries(cap)
        self.epoch = DecimatedSeries(cap)
        self.epoch_numbers: dict[float, int] = {}  # step -> the epoch that ended there
        self._dirty = True
        self._built = False  # built (plotext build()) since the last _replot
        self._x_range: tuple[float, float] | None = None  # the steps drawn, for the ticks
        self.legend = ""  # what the bottom border's legend says (plain)
        self.border_title = "loss"

    def on_mount(self) -> None:
        follow_ansi_themes(self)
        super().on_mount()
        self.set_interval(REDRAW_S, self._redraw_if_dirty)
        self._replot()

    def add_step(self, step: float, values: dict[str, float]) -> None:
        for name in SERIES:
            y = values.get(name)
            if isinstance(y, (int, float)):
                y = float(y)
                self.raw[name].add(step, y)
                self.ema[name].add(step, self._ema[name].add(y))
        self._dirty = True

    def add_eval(self, step: float, val_loss: float, val_gen_kl: float | None = None) -> None:
        if isinstance(val_loss, (int, float)):
            self.val.add(step, float(val_loss))
            self._dirty = True
        if isinstance(val_gen_kl, (int, float)) and not isinstance(val_gen_kl, bool):
            self.gen_kl.add(step, float(val_gen_kl))
            self._dirty = True

    def add_epoch(self, step: float, loss: float, epoch: int | None = None) -> None:
        """An epoch ended at `step` with mean training loss `loss`."""
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.epoch.add(step, float(loss))
            if isinstance(epoch, int) and len(self.epoch_numbers) <= MAX_EPOCH_TAGS:
                self.epoch_numbers[step] = epoch
            self._dirty = True

    def _tag_epochs(self, xs: list[float], ys: list[float], color: str,
                    drawn_xs: list[float]) -> None:
        """"eN" beside each epoch point: plotext draws text over markers, so the tag goes two
        columns right of its point (left of it near the right edge), in data units."""
        low, high = min(drawn_xs), max(drawn_xs)
        columns = max(10, self.size.width - 8)  # less the y axis' labels and ticks
        per_column = (high - low) / columns if high > low else 1.0
        plt = self.plt
        for x, y in zip(xs, ys, strict=True):
            epoch = self.epoch_numbers.get(x)
            if epoch is None:
                continue
            tag = f"e{epoch}"
            right = x + 2 * per_column
            if right + len(tag) * per_column > high:
                right = x - (len(tag) + 1.5) * per_column
            plt.text(tag, right, y, color=color, alignment="left")

    @property
    def epoch_point_count(self) -> int:
        return self.epoch.count

    @property
    def point_count(self) -> int:
        return self.raw["loss"].count

    def on_resize(self) -> None:
        self._dirty = True  # the legend's form depends on the width

    def watch_smooth(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def watch_log_y(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def render(self) -> RenderResult:
        if self.log_y and self._built:
            # plotext's build() takes the log of its stored data in place: building the same
            # data again (a resize, a screen switch) took the log of a log and crashed the app
            self._replot()
        self._built = True
        self._set_x_ticks()  # here, not in _replot: how many fit depends on the width now
        return super().render()

    def _set_x_ticks(self) -> None:
        if self._x_range is None:  # nothing drawn yet: no ticks to place
            return
        ticks = integer_ticks(*self._x_range, self.size.width - Y_AXIS_CELLS)
        self.plt.xticks(ticks, [step_label(t) for t in ticks])

    def _show_legend(self, entries: list[tuple[str, str, str]]) -> None:
        """The legend in the bottom border, each mark in its series' colour as plotext draws it
        (ANSI colours through the same path as the plot's): plotext's own legend sits on the
        plot's top left and hid the step-0 values under it."""
        # where the border has no room for "mark label" pairs (80 columns: an on-policy run's
        # five series), each mark goes against its label and val gen KL is "gen KL"
        room = self.size.width - 6  # the corners and the "─ " either side
        wide = not room or sum(len(label) + 3 for _, _, label in entries) - 1 <= room
        legend = Text()
        for mark, color, label in entries:
            if legend:
                legend.append(" ")
            legend.append_text(Text.from_ansi(plotext.colorize(mark, color)))
            legend.append(f" {label}" if wide else
                          "gen KL" if label == GEN_KL_LABEL else label)
        if legend.plain != self.legend:
            self.legend = legend.plain
            self.border_subtitle = legend if legend else None

    def _show_title(self, name: str) -> None:
        modes = [m for m, on in (("EMA", self.smooth), ("log y", self.log_y)) if on]
        # parentheses, not brackets: a border title is markup, "[log y]" was read as a style tag
        # and never shown
        title = name + (f" ({', '.join(modes)})" if modes else "")
        self.border_title = Text(" · ".join(part for part in (title, self.badge) if part))

    def watch_badge(self) -> None:
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted:
            self._replot()
            self.refresh()

    def _replot(self) -> None:
        self._dirty = False
        self._built = False
        plt = self.plt
        plt.clear_data()
        source = self.ema if self.smooth else self.raw
        drawn = False
        drawn_xs: list[float] = []  # the x range plotext will scale to (for placing tags)
        legend: list[tuple[str, str, str]] = []  # (mark, colour, label) of each series drawn
        for name in SERIES:
            xs, ys = source[name].points()
            if self.log_y:
                xs, ys = _positive(xs, ys)
            drawn_xs += xs[:1] + xs[-1:]
            if xs:
                plt.plot(xs, ys, color=COLORS[name], marker="braille")
                legend.append((LINE_MARK, COLORS[name], name))
                drawn = True
        # the evaluations' points: val_loss, and an on-policy run's val_gen_kl
        for series, key, mark, label in ((self.val, "val_loss", "●", "val_loss"),
                                         (self.gen_kl, "val_gen_kl", "▲", GEN_KL_LABEL)):
            px, py = series.points()
            if self.log_y:
                px, py = _positive(px, py)
            drawn_xs += px[:1] + px[-1:]
            if px:
                plt.scatter(px, py, color=COLORS[key], marker=mark)
                legend.append((mark, COLORS[key], label))
                drawn = True
        ex, ey = self.epoch.points()
        if self.log_y:
            ex, ey = _positive(ex, ey)
        drawn_xs += ex[:1] + ex[-1:]
        if ex:
            color = EPOCH_COLOR[bool(self.app.current_theme.dark)] if self.is_attached \
                else EPOCH_COLOR[True]
            plt.scatter(ex, ey, color=color, marker="◆")
            legend.append(("◆", color, EPOCH_LABEL))
            if self.epoch.count <= MAX_EPOCH_TAGS:
                self._tag_epochs(ex, ey, color, drawn_xs)
            drawn = True
        self._x_range = (min(drawn_xs), max(drawn_xs)) if drawn_xs else None
        plt.yscale("log" if self.log_y else "linear")
        plt.xlabel("step")
        self._show_title("loss")
        self._show_legend(legend)
        if not drawn:
            plt.title("waiting for the first step…")
        else:
            plt.title("")


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]
