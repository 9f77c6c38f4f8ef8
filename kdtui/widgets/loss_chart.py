"""The live loss chart: train loss with its KD and CE parts, and the val-loss points, by step.

Points go into `DecimatedSeries`, which keeps at most `cap` buckets by merging neighbours pairwise
when full (O(1) per point), so a million-step run costs the plot the same as a short one; the
newest point is always drawn as it is. EMA smoothing is computed per raw point on arrival.
Drawn with textual-plotext, at most every `REDRAW_S` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from textual.reactive import var
from textual_plotext import PlotextPlot

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
COLORS = {"loss": "cyan", "kd": "magenta", "ce": "green", "val_loss": "orange"}


class LossChart(PlotextPlot):
    """Train loss, KD and CE parts, val loss; `smooth` (EMA) and `log_y` toggle how it is drawn."""

    DEFAULT_CSS = """
    LossChart { border: round $foreground 35%; height: 1fr; }
    """

    smooth: var[bool] = var(False)
    log_y: var[bool] = var(False)

    def __init__(self, *, cap: int = 256, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.raw = {name: DecimatedSeries(cap) for name in SERIES}
        self.ema = {name: DecimatedSeries(cap) for name in SERIES}
        self._ema = {name: EMA() for name in SERIES}
        self.val = DecimatedSeries(cap)
        self._dirty = True
        self.border_title = "loss"

    def on_mount(self) -> None:
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

    def add_eval(self, step: float, val_loss: float) -> None:
        if isinstance(val_loss, (int, float)):
            self.val.add(step, float(val_loss))
            self._dirty = True

    @property
    def point_count(self) -> int:
        return self.raw["loss"].count

    def watch_smooth(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def watch_log_y(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted:
            self._replot()
            self.refresh()

    def _replot(self) -> None:
        self._dirty = False
        plt = self.plt
        plt.clear_data()
        source = self.ema if self.smooth else self.raw
        drawn = False
        for name in SERIES:
            xs, ys = source[name].points()
            if self.log_y:
                xs, ys = _positive(xs, ys)
            if xs:
                plt.plot(xs, ys, label=name + (" (EMA)" if self.smooth else ""),
                         color=COLORS[name], marker="braille")
                drawn = True
        vx, vy = self.val.points()
        if self.log_y:
            vx, vy = _positive(vx, vy)
        if vx:
            plt.scatter(vx, vy, label="val_loss", color=COLORS["val_loss"], marker="●")
            drawn = True
        plt.yscale("log" if self.log_y else "linear")
        plt.xlabel("step")
        modes = [m for m, on in (("EMA", self.smooth), ("log y", self.log_y)) if on]
        self.border_title = "loss" + (f" [{', '.join(modes)}]" if modes else "")
        if not drawn:
            plt.title("waiting for the first step…")
        else:
            plt.title("")


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]
