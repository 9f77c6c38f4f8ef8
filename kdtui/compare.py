"""Several runs side by side: what each run's events say, reduced to what a comparison needs.

`RunSummary` takes a run's events as they come (a live run keeps adding): its effective config,
the val CE / val KD / train loss series, the verdict, tokens/s and peak GPU memory. `differing`
picks the config fields whose values differ between the runs (the only ones worth a column), and
`plain_table` is `kdtui compare --plain`. Runs are judged by held-out CE (val_ce), never by
val_loss: that is the training objective, and with a different alpha or T it is another number.
The compare screen (kdtui/screens/compare.py) draws the same summaries. No Textual here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdengine.verdict import DistillReport, distill_report, verdict_from_events

# fields that always differ between runs and say nothing about how they were trained
NOT_COMPARED = frozenset({"run_name", "run_dir"})
METRICS = ("val_ce", "val_kd", "loss")  # the chart's series, in the order `c` cycles them
METRIC_LABELS = {"val_ce": "val CE", "val_kd": "val KD", "loss": "train loss"}
# a run's colour on the compare chart and in its table row: by its place in the selection, so it
# keeps its colour while the screen is open (plotext colour names; readable on dark and light)
RUN_COLORS = ("cyan", "magenta", "green", "orange", "blue", "red", "gray", "yellow")


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {name: [] for name in METRICS})
    tokens_per_s: list[float] = field(default_factory=list)
    peak_gpu_mem: int | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)  # what the verdict reads
    last_step: dict[str, Any] | None = None
    total_steps: int | None = None

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "run_started":
            self.config = dict(event.get("config") or self.config)
            self.total_steps = self.config.get("steps", self.total_steps)
            self.run_id = str(event.get("run_id") or self.run_id)
        elif kind == "step":
            self.last_step = event
            step = event.get("step")
            if _number(step) and _number(event.get("loss")):
                self.series["loss"].append((float(step), float(event["loss"])))
            if _number(event.get("tokens_per_s")):
                self.tokens_per_s.append(float(event["tokens_per_s"]))
            peak = event.get("gpu_mem_peak")
            if _number(peak):
                self.peak_gpu_mem = max(int(peak), self.peak_gpu_mem or 0)
        elif kind == "eval":
            self.kept.append(event)
            step = event.get("step")
            for name in ("val_ce", "val_kd"):
                if _number(step) and _number(event.get(name)):
                    self.series[name].append((float(step), float(event[name])))
        elif kind in ("run_finished", "verdict"):
            self.kept.append(event)

    def verdict(self):
        return verdict_from_events([*self.kept, *([self.last_step] if self.last_step else [])])

    @property
    def report(self) -> DistillReport:
        return distill_report(self.kept)

    @property
    def final_ce(self) -> float | None:
        points = self.series["val_ce"]
        return points[-1][1] if points else None

    @property
    def median_tokens_per_s(self) -> float | None:
        # the median: the first step (compilation, warm-up) is no measure of speed
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else None

    @property
    def step(self) -> int | None:
        return self.last_step.get("step") if self.last_step else None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def load_summary(run_dir: Path) -> RunSummary:
    from kdengine.events import iter_run_events

    summary = RunSummary(run_dir.name, run_dir)
    for event in iter_run_events(str(run_dir)):
        summary.add(event)
    return summary


def differing(summaries: list[RunSummary]) -> list[str]:
    """The config fields whose values are not the same in every run (in schema order)."""
    keys: list[str] = []
    for s in summaries:
        keys += [k for k in s.config if k not in keys and k not in NOT_COMPARED]
    missing = object()
    return [k for k in keys
            if len({repr(s.config.get(k, missing)) for s in summaries}) > 1]


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table_rows(summaries: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """The compare table: run, the differing fields, final val CE, the verdict (⚠: a warning of
    distill_report), tokens/s (median), peak GPU memory, step-0 val CE and the teacher's."""
    fields = differing(summaries)
    head = ["run", *fields, "final val CE", "verdict", "tok/s", "peak GPU", "step-0 CE",
            "teacher CE"]
    rows = []
    for s in summaries:
        report = s.report
        verdict = s.verdict()
        status = verdict.status.upper() if s.kept else "–"
        if report.warnings:
            status += " ⚠"
        rows.append([
            s.run_id, *(cell(s.config.get(k)) for k in fields),
            f"{s.final_ce:.4f}" if s.final_ce is not None else "–",
            status,
            f"{s.median_tokens_per_s:,.0f}" if s.median_tokens_per_s is not None else "–",
            f"{s.peak_gpu_mem / (1 << 30):.1f}G" if s.peak_gpu_mem else "–",
            f"{report.initial_ce:.4f}" if report.initial_ce is not None else "–",
            f"{report.teacher_ce:.4f}" if report.teacher_ce is not None else "–",
        ])
    if not any(s.peak_gpu_mem for s in summaries):  # CPU runs: a column of dashes says nothing
        gpu = head.index("peak GPU")
        head.pop(gpu)
        for r in rows:
            r.pop(gpu)
    return head, rows


def plain_table(summaries: list[RunSummary]) -> str:
    """`kdtui compare --plain`: the table as aligned text, and the warnings under it."""
    head, rows = table_rows(summaries)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    for s in summaries:
        for warning in s.report.warnings:
            lines.append(f"{s.run_id}: warning: {warning}")
    return "\n".join(lines)
