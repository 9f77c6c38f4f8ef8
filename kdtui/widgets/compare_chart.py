"""The compare screen's chart: one metric (val CE, val KD or train loss) of several runs overlaid,
each run in its own colour (kdtui.compare.RUN_COLORS, by its place in the selection), with the
run screen's EMA and log-y modes. Its legend is the table's `■` beside each run (and the bottom
border's, where the names fit): plotext's own sat on the plot's top left, over every run's
step-0 point. Train loss is the objective: across runs of another alpha,
temperature or loss it is drawn as the train CE instead; val KD, measured at each run's own T,
is not drawn across runs of another temperature or loss, the plot saying why
(kdtui.compare.shown_metric)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var
from textual_plotext import PlotextPlot, plotext

from kdtui.compare import METRICS, NOT_DRAWN, RUN_COLORS, RunSummary, shown_metric
from kdtui.widgets.loss_chart import (
    EMA,
    Y_AXIS_CELLS,
    _positive,
    follow_ansi_themes,
    integer_ticks,
    step_label,
)

REDRAW_S = 0.25
MAX_POINTS = 400  # per run: a long run's train loss is thinned to this many points


class CompareChart(PlotextPlot):
    DEFAULT_CSS = """
    CompareChart {
        border: round $foreground 35%; border-title-color: $foreground; height: 1fr; min-height: 8;
        border-subtitle-align: left; border-subtitle-color: $foreground;
    }
    """

    metric: var[str] = var("val_ce")
    smooth: var[bool] = var(False)
    log_y: var[bool] = var(False)

    def __init__(self, summaries: list[RunSummary], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.summaries = summaries
        self._dirty = True
        self._built = False
        self._x_range: tuple[float, float] | None = None  # the steps drawn, for the ticks

    def on_mount(self) -> None:
        follow_ansi_themes(self)
        super().on_mount()
        self.set_interval(REDRAW_S, self._redraw_if_dirty)
        self._replot()

    def on_resize(self) -> None:
        self._dirty = True  # whether the legend fits the bottom border depends on the width

    def changed(self) -> None:
        """New events arrived: redraw at the next tick."""
        self._dirty = True

    def next_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]

    def watch_metric(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    watch_smooth = watch_log_y = watch_metric

    def render(self):
        if self.log_y and self._built:
            self._replot()  # plotext takes the log of its data in place (see LossChart.render)
        self._built = True
        if self._x_range is not None:  # whole steps, as the run screen's chart (not 7.5, 22.5)
            ticks = integer_ticks(*self._x_range, self.size.width - Y_AXIS_CELLS)
            self.plt.xticks(ticks, [step_label(t) for t in ticks])
        return super().render()

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted:
            self._replot()
            self.refresh()

    @property
    def shown(self) -> tuple[str, str]:
        """The series drawn for the chosen metric, and the chart's title (shown_metric)."""
        return shown_metric(self.metric, self.summaries)

    def points(self, summary: RunSummary) -> tuple[list[float], list[float]]:
        series = summary.series.get(self.shown[0], [])
        if len(series) > MAX_POINTS:
            stride = -(-len(series) // MAX_POINTS)
            series = series[::stride] + series[-1:]
        xs = [x for x, _ in series]
        ys = [y for _, y in series]
        if self.smooth:
            ema = EMA()
            ys = [ema.add(y) for y in ys]
        if self.log_y:
            xs, ys = _positive(xs, ys)
        return xs, ys

    def _replot(self) -> None:
        self._dirty = False
        self._built = False
        plt = self.plt
        plt.clear_data()
        drawn = False
        series, title = self.shown
        marker = "braille" if series in ("loss", "ce") else "dot"  # per step, not per eval
        legend = Text()
        steps: list[float] = []
        for i, summary in enumerate(self.summaries):
            xs, ys = self.points(summary)
            color = RUN_COLORS[i % len(RUN_COLORS)]
            steps += xs[:1] + xs[-1:]
            if xs:
                # no label: plotext's legend would cover the curves' starts (see the module)
                plt.plot(xs, ys, color=color, marker=marker)
                drawn = True
            if legend:
                legend.append(" ")
            legend.append_text(Text.from_ansi(plotext.colorize("■", color)))
            legend.append(f" {summary.label}")
        self._x_range = (min(steps), max(steps)) if steps else None
        # the names in the bottom border where they fit; else the table below is the key
        fits = self.size.width == 0 or legend.cell_len <= self.size.width - 4
        self.border_subtitle = legend if drawn and fits else None
        plt.yscale("log" if self.log_y else "linear")
        plt.xlabel("step")
        plt.title("" if drawn else NOT_DRAWN.get(self.metric, "") if not series
                  else "no points yet")
        modes = [m for m, on in (("EMA", self.smooth), ("log y", self.log_y)) if on]
        self.border_title = title + (f" ({', '.join(modes)})" if modes else "")
