"""The run screen's gauge row: GPU memory, utilization, power, MFU and host memory from the
gauge fields of step events (kdengine.gauges), each with a sparkline of its recent values.

One line under the chart; hidden until a step event carries a gauge (a recorded run from before
the gauges, or an engine without them, looks as it always did).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.widgets import Static

GIB = 1 << 30
SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 12  # sparkline points: the last dozen step events
GAUGE_FIELDS = ("gpu_mem_allocated", "gpu_mem_reserved", "gpu_mem_peak", "gpu_util",
                "gpu_power_w", "mfu", "host_rss")


def sparkline(values: list[float], top: float | None = None) -> str:
    """Block characters: from 0 to `top` where the scale is known (utilization), else from the
    values' own low to their high (memory moves little against its total: the change shows)."""
    if not values:
        return ""
    low, high = (0.0, top) if top else (min(values), max(values))
    if high - low <= 1e-9 * max(abs(high), 1.0):
        return SPARK[3] * len(values)  # flat
    top_index = len(SPARK) - 1
    return "".join(SPARK[min(top_index, max(0, round((v - low) / (high - low) * top_index)))]
                   for v in values)


def has_gauges(event: dict[str, Any]) -> bool:
    return any(key in event for key in GAUGE_FIELDS)


class GaugeRow(Static):
    """'GPU 12.3/80G ▂▃▅ · peak 14.0G · util 97% ▆▇█ · power 612W · MFU 41.2% · host 3.1G'.

    Every part is set off by ' · '; a row too narrow drops the sparklines first, then parts
    from the end (host, MFU, power...) rather than running words together."""

    DEFAULT_CSS = """
    GaugeRow { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.latest: dict[str, Any] = {}
        self.history: dict[str, deque[float]] = {
            key: deque(maxlen=HISTORY) for key in ("gpu_mem_allocated", "gpu_util",
                                                   "gpu_power_w", "mfu", "host_rss")}
        self.seen = False  # a step event carried a gauge: the row shows
        self.hidden_by_user = False
        self.display = False

    def add_step(self, event: dict[str, Any]) -> None:
        if not has_gauges(event):
            return
        self.latest = {k: event[k] for k in (*GAUGE_FIELDS, "gpu_mem_total") if k in event}
        for key, values in self.history.items():
            value = event.get(key)
            if isinstance(value, (int, float)):
                values.append(float(value))
        if not self.seen:
            self.seen = True
            self.display = not self.hidden_by_user
        self.update(self.line())

    def toggle(self) -> None:
        self.hidden_by_user = not self.hidden_by_user
        self.display = self.seen and not self.hidden_by_user

    def line(self, with_sparklines: bool = True, most: int | None = None) -> Text:
        """The row; `most`: at most this many parts (the first ones: GPU memory matters most)."""
        g, text = self.latest, Text(no_wrap=True, overflow="ellipsis")
        count = 0

        def part(label: str, value: str, key: str | None = None, top: float | None = None):
            nonlocal count
            if most is not None and count >= most:
                return
            count += 1
            if text:
                text.append(" · ", "dim")
            text.append(f"{label} ", "dim")
            text.append(value)
            if with_sparklines and key and len(self.history[key]) > 1:
                text.append(" " + sparkline(list(self.history[key]), top))

        if "gpu_mem_allocated" in g:
            total = g.get("gpu_mem_total")
            part("GPU", f"{g['gpu_mem_allocated'] / GIB:.1f}"
                 + (f"/{total / GIB:.0f}G" if total else "G"), "gpu_mem_allocated")
        if "gpu_mem_peak" in g:
            part("peak", f"{g['gpu_mem_peak'] / GIB:.1f}G")
        if "gpu_util" in g:
            part("util", f"{g['gpu_util']}%", "gpu_util", 100.0)
        if "gpu_power_w" in g:
            part("power", f"{g['gpu_power_w']:.0f}W", "gpu_power_w")
        if "mfu" in g:
            part("MFU", f"{g['mfu']:.1%}", "mfu")
        if "host_rss" in g:
            part("host", f"{g['host_rss'] / GIB:.1f}G", "host_rss")
        return text

    def on_resize(self) -> None:
        if self.latest:
            self.update(self.line())

    def update(self, content: Any = "") -> None:  # type: ignore[override]
        # sparklines go first when the row is too narrow for them, then the last parts
        room = self.size.width - 2
        if isinstance(content, Text) and self.size.width and content.cell_len > room:
            content = self.line(with_sparklines=False)
            most = len(content.plain.split(" · "))
            while content.cell_len > room and most > 1:
                most -= 1
                content = self.line(with_sparklines=False, most=most)
        super().update(content)
