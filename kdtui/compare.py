"""Several runs side by side: what each run's events say, reduced to what a comparison needs.

`RunSummary` takes a run's events as they come (a live run keeps adding): its effective config,
the val CE / val KD / train loss series, the verdict, tokens/s and peak GPU memory. `differing`
picks the config fields whose values differ between the runs (the only ones worth a column), and
`plain_table` is `kdtui compare --plain`. Runs are judged by held-out CE (val_ce), never by
val_loss: that is the training objective, and with a different alpha or T it is another number.
The compare screen (kdtui/screens/compare.py) draws the same summaries. No Textual here.

A `CompareTarget` is where a run's events are: a local run directory, or a remote dispatch
(its dispatch.json), whose events are read from its host over SFTP as the run screen reads
them (kdtui.remote.source.SSHRunSource: verified host key, reconnects with backoff). asyncssh
loads only when a remote run is compared.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdengine.verdict import DistillReport, distill_report, verdict_from_events
from kdtui.watch import LocalRunSource, RunFollower, RunSource

# fields that always differ between runs and say nothing about how they were trained
NOT_COMPARED = frozenset({"run_name", "run_dir"})
METRICS = ("val_ce", "val_kd", "loss")  # the chart's series, in the order `c` cycles them
METRIC_LABELS = {"val_ce": "val CE", "val_kd": "val KD", "loss": "train loss", "ce": "train CE"}
# train loss is the objective alpha*CE + (1-alpha)*T^2*D (D: the loss's divergence; beta:
# jsd's mix): runs that differ in one of these optimise another number, so their train loss is
# not compared; the train CE, the same quantity in every run, is drawn in its place
# val KD is the divergence D alone, measured at each run's own T (and by its own loss, beta):
# across runs that differ in one of these it is another quantity, and no series stands in for it
DEPENDS_ON = {"loss": ("alpha", "temperature", "loss", "beta"),
              "val_kd": ("temperature", "loss", "beta")}
STAND_IN = {"loss": "ce"}
# what the chart says on its plot when it draws no series for the metric (STAND_IN has none)
NOT_DRAWN = {"val_kd": "not drawn: each run's KD is its own divergence at its own T (compare "
                       "val CE)"}
# a run's colour on the compare chart and in its table row: by its place in the selection, so it
# keeps its colour while the screen is open. 256-colour codes (cyan, magenta, green, orange,
# blue, red, gray, purple), each 3:1 or more on a dark and a light background: the ANSI names
# were drawn through the theme's terminal palette, where magenta and red are one colour (dark
# themes), plotext's "orange" is yellow, and it has no "yellow" (that run had no colour)
RUN_COLORS: tuple[int, ...] = (30, 163, 28, 166, 32, 160, 244, 98)


class CompareError(Exception):
    """A run that cannot be compared: one line that names it and says why."""


@dataclass(frozen=True)
class CompareTarget:
    """One run to compare: a local run directory, or a remote dispatch (`manifest`) whose
    `run_dir` is on `host`."""

    run_id: str
    run_dir: str  # on the host that runs it
    host: str = "local"  # or the SSH alias
    manifest: Path | None = None
    # what the dispatch recorded of its config: the table's columns before (or without) the
    # host's events
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def remote(self) -> bool:
        return self.manifest is not None

    @property
    def key(self) -> str:
        """The runs list's key of the run: its directory, or its dispatch.json."""
        return str(self.manifest if self.manifest is not None else self.run_dir)

    @property
    def label(self) -> str:
        """Its name in the table: a remote run's says its host (`kd-3@gpu-box`)."""
        return f"{self.run_id}@{self.host}" if self.remote else self.run_id

    @classmethod
    def local(cls, run_dir: Path) -> CompareTarget:
        return cls(run_id=run_dir.name, run_dir=str(run_dir))

    @classmethod
    def dispatched(cls, manifest: Path, data: dict[str, Any] | None = None) -> CompareTarget:
        """The remote run a dispatch.json records (`data`: its content, when already read);
        CompareError when there is none to read (it never started, or it is an apr run, whose
        output is not kdengine's events)."""
        from kdtui.remote.manifest import read_manifest

        try:
            data = read_manifest(manifest) if data is None else data
        except (OSError, ValueError) as exc:
            raise CompareError(f"{manifest}: not a readable dispatch record ({exc})") from None
        run_id = str(data.get("run_id") or manifest.parent.name)
        if data.get("profile") == "apr":
            raise CompareError(f"{run_id} is an apr run: compare reads kdengine's events "
                               f"(follow it with `kdtui watch {run_id}`)")
        if not data.get("launched") or not data.get("remote_run_dir") or not data.get("host"):
            why = data.get("error") or "no launch recorded"
            raise CompareError(f"{run_id}: this dispatch never started a run ({why})")
        return cls(run_id=run_id, run_dir=str(data["remote_run_dir"]), host=str(data["host"]),
                   manifest=manifest, config=dict(data.get("config") or {}))

    def open_source(self, on_status: Callable[[str], None] | None = None,
                    give_up_after: float = 600.0) -> RunSource:
        """Where to read its files from: this machine, or its host over SFTP (a host that is
        down is retried with backoff for `give_up_after` seconds; an unknown or changed host
        key is refused at once: kdtui.remote.connect)."""
        if not self.remote:
            return LocalRunSource(Path(self.run_dir))
        from kdtui.remote.hosts import HostsFileError, get_host
        from kdtui.remote.source import SSHRunSource

        try:
            host = get_host(self.host)
        except HostsFileError as exc:
            raise CompareError(f"{self.label}: {exc}") from None
        return SSHRunSource(host, self.run_dir, on_status=on_status,
                            give_up_after=give_up_after)


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path | None = None
    host: str | None = None  # a remote run's SSH alias (the table names it)
    config: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {name: [] for name in (*METRICS, "ce")})
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
            for name in ("loss", "ce"):
                if _number(step) and _number(event.get(name)):
                    self.series[name].append((float(step), float(event[name])))
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

    @property
    def label(self) -> str:
        """Its name in the table: a remote run's says its host (`kd-3@gpu-box`)."""
        return f"{self.run_id}@{self.host}" if self.host else self.run_id


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def summary_of(target: CompareTarget) -> RunSummary:
    """An empty summary for `target`, to be fed its events."""
    return RunSummary(target.run_id, None if target.remote else Path(target.run_dir),
                      config=dict(target.config), host=target.host if target.remote else None)


def load_summary(run_dir: Path) -> RunSummary:
    from kdengine.events import iter_run_events

    summary = RunSummary(run_dir.name, run_dir)
    for event in iter_run_events(str(run_dir)):
        summary.add(event)
    return summary


FIRST_CONTACT_RETRY_S = 0.5


async def read_summary(target: CompareTarget, give_up_after: float) -> RunSummary:
    """Every event `target` has written so far, through its source (`kdtui compare --plain`);
    a remote host that cannot be reached at first, or is lost for `give_up_after` s while it is
    read, raises kdtui.remote.connect.RemoteError."""
    summary = summary_of(target)
    source = target.open_source(give_up_after=give_up_after)
    follower = RunFollower(source)
    read = 0
    try:
        # the first contact fails fast, as `kdtui cancel`'s does: a host that is down is said
        # at once (two tries); once it has answered, a dropped link is retried with backoff
        why = await source.try_connect()
        if why is not None:
            await asyncio.sleep(FIRST_CONTACT_RETRY_S)
            why = await source.try_connect()
        if why is not None:
            from kdtui.remote.connect import RemoteError

            raise RemoteError(why)
        while update := await follower.poll():  # a backlog comes in slices
            read += len(update.events)
            for event in update.events:
                summary.add(event)
    finally:
        await source.close()
    if not read:
        raise CompareError(f"{target.label}: {no_events(target)}")
    return summary


def no_events(target: CompareTarget) -> str:
    return f"no events in {target.run_dir} on {target.host} (the run directory is gone?)"


def load_summaries(targets: list[CompareTarget], give_up_after: float = 20.0) -> list[RunSummary]:
    """Each target's summary, the remote ones read at the same time; CompareError naming the
    first run that could not be read and why."""
    async def one(target: CompareTarget) -> RunSummary:
        if not target.remote:
            return load_summary(Path(target.run_dir))
        from kdtui.remote.connect import RemoteError

        try:
            return await read_summary(target, give_up_after)
        except RemoteError as exc:
            raise CompareError(f"{target.label}: {exc}") from None

    async def every() -> list[RunSummary]:
        return list(await asyncio.gather(*(one(t) for t in targets)))

    return asyncio.run(every())


def differing(summaries: list[RunSummary]) -> list[str]:
    """The config fields whose values are not the same in every run (in schema order); a run
    whose config is not known yet (its first event not read) differs in nothing."""
    known = [s for s in summaries if s.config]
    keys: list[str] = []
    for s in known:
        keys += [k for k in s.config if k not in keys and k not in NOT_COMPARED]
    missing = object()
    return [k for k in keys
            if len({repr(s.config.get(k, missing)) for s in known}) > 1]


def not_comparable(metric: str, summaries: list[RunSummary]) -> list[str]:
    """The config fields that differ between the runs and make `metric` another quantity in
    each (alpha for train loss, the objective); beta only where a run uses jsd."""
    jsd = any(s.config.get("loss") == "jsd" for s in summaries)
    return [k for k in differing(summaries)
            if k in DEPENDS_ON.get(metric, ()) and (k != "beta" or jsd)]


def shown_metric(metric: str, summaries: list[RunSummary]) -> tuple[str, str]:
    """The series the chart draws for `metric`, and its title: train loss across runs of
    another alpha, T or loss is drawn as train CE, the title saying why; val KD across runs of
    another T or loss is not drawn ("" for the series), the title saying why."""
    why = not_comparable(metric, summaries)
    if not why:
        return metric, METRIC_LABELS[metric]
    verb = "differs" if len(why) == 1 else "differ"
    # short: the whole reason fits an 80-column border with two fields named
    fields = ", ".join(why)
    if metric not in STAND_IN:
        return "", f"{METRIC_LABELS[metric]} ({fields} {verb}: KD not comparable)"
    stand_in = STAND_IN[metric]
    return stand_in, f"{METRIC_LABELS[stand_in]} ({fields} {verb}: train loss not comparable)"


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
        # no run_finished yet: a run still going has no verdict (INCONCLUSIVE read as an end)
        ended = any(e.get("type") == "run_finished" for e in s.kept)
        status = verdict.status.upper() if ended else "–"
        if report.warnings:
            status += " ⚠"
        rows.append([
            s.label, *(cell(s.config.get(k)) for k in fields),
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
            lines.append(f"{s.label}: warning: {warning}")
    return "\n".join(lines)
