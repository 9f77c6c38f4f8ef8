"""The run screen's pieces for the offline teacher cache (docs/teacher-cache.md).

A cache job (`kdengine cache-teacher`, run_started `job: "cache-teacher"`) trains nothing: its
`step` events carry rows scored and the teacher's own CE on them, and its end is the job's result
(kdengine.verdict id cache-teacher), not a smoke verdict. `TeacherCEChart` draws that CE by rows
scored; `CacheJobPanel` stands where the verdict would, and at the end names the
`--teacher-cache DIR` to train from. A run that trains from a cache says which cache in one line
(`cached_teacher_line`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from kdengine.verdict import CACHE_JOB, PASS, Verdict
from kdtui.runs import human_bytes
from kdtui.widgets.loss_chart import COLORS, LossChart, _positive
from kdtui.widgets.run_panels import VerdictPanel

# the writer's stages (kdengine.teacher.writer), in place of a run's
CACHE_STAGES = ("prepare", "load_teacher", "data", "score")
CE = "ce"  # the series a cache job's step events fill: the teacher's CE on the rows scored


def is_cache_job(run_started: dict[str, Any] | None) -> bool:
    return (run_started or {}).get("job") == CACHE_JOB


def cached_teacher_line(run_started: dict[str, Any] | None) -> str | None:
    """'teacher: cache DIR, K=64 topk, 1.2 GB (388 B/token), of Qwen/Qwen3-4B (ab12cd34ef56)'
    for a run that trains from a teacher cache (run_started's teacher_cache), else None."""
    cache = (run_started or {}).get("teacher_cache")
    if not isinstance(cache, dict):
        return None
    per_token = cache.get("bytes_per_token")
    per_token = f" ({per_token:.0f} B/token)" if isinstance(per_token, (int, float)) else ""
    identity = str(cache.get("teacher_identity") or "")
    identity = f" ({identity[-12:]})" if identity else ""
    return (f"teacher: cache {cache.get('dir')}, K={cache.get('k')} "
            f"{cache.get('targets', 'topk')}, {human_bytes(cache.get('bytes'))}{per_token}, of "
            f"{cache.get('teacher') or '?'}{identity}")


def cached_teacher_badge(run_started: dict[str, Any] | None) -> str | None:
    """The short form, for a border: 'teacher cached · K=64 topk · 1.2 GB'."""
    cache = (run_started or {}).get("teacher_cache")
    if not isinstance(cache, dict):
        return None
    return (f"teacher cached · K={cache.get('k')} {cache.get('targets', 'topk')} · "
            f"{human_bytes(cache.get('bytes'))}")


class TeacherCEChart(LossChart):
    """A cache job's chart: the teacher's CE on the rows scored so far (a step event every ~2 s
    and at each finished shard), by rows scored. Nothing is trained, so there is no loss, KD or
    val point."""

    def on_mount(self) -> None:
        super().on_mount()
        self.border_subtitle = "nothing is trained: the teacher scores the data once"

    def add_step(self, step: float, values: dict[str, Any]) -> None:
        ce = values.get(CE)
        super().add_step(step, {CE: ce} if isinstance(ce, (int, float)) else {})

    def add_eval(self, step: float, val_loss: float, val_gen_kl: float | None = None) -> None:
        return  # a cache job has no evaluation

    def _replot(self) -> None:
        self._dirty = False
        self._built = False
        plt = self.plt
        plt.clear_data()
        xs, ys = (self.ema if self.smooth else self.raw)[CE].points()
        if self.log_y:
            xs, ys = _positive(xs, ys)
        if xs:  # one series, named by the title: no legend over the plot's top left
            plt.plot(xs, ys, color=COLORS[CE], marker="braille")
        self._x_range = (min(xs), max(xs)) if xs else None
        plt.yscale("log" if self.log_y else "linear")
        plt.xlabel("rows scored")
        self._show_title("teacher CE on the rows scored")
        plt.title("" if xs else "waiting for the first rows…")


class CacheJobPanel(VerdictPanel):
    """Where a run's verdict goes: the cache being written (K, targets, dtype), then its end: the
    directory to train from (`--teacher-cache DIR`) with its size, or why it is not complete."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "teacher cache"
        self.cache: dict[str, Any] = {}  # run_started's `cache`: key, k, targets, dtype
        self.directory: str | None = None
        self.teacher = ""
        self.cache_bytes: float | None = None
        # the step events': the shard in progress (0-based), of how many, and the rows in the
        # finished shards (what a stopped job keeps); None until the data stage says
        self.shard: int | None = None
        self.shards: int | None = None
        self.rows_written: int | None = None

    def observe(self, event: dict[str, Any]) -> None:
        """What the panel says comes from run_started, the data stage, the steps and
        run_finished."""
        kind = event.get("type")
        if kind == "stage" and event.get("stage") == "data" and _count(event.get("shards")):
            self.shards = event["shards"]
            self.rows_written = _whole(event.get("rows_written")) or 0
            per = _whole(event.get("shard_rows"))
            self.shard = min(self.rows_written // per, self.shards - 1) if per else 0
        elif kind == "step" and _count(event.get("shards")) and \
                _whole(event.get("shard")) is not None:
            self.shards = event["shards"]
            # the shard being scored: a shard end's event names the one it wrote
            self.shard = min(event["shard"] + ("write_s" in event), self.shards - 1)
            written = _whole(event.get("rows_written"))
            self.rows_written = written if written is not None else self.rows_written
        elif kind == "run_started":
            self.cache = event.get("cache") if isinstance(event.get("cache"), dict) else {}
            self.directory = event.get("run_dir") or self.directory
            self.teacher = str((event.get("config") or {}).get("teacher") or "")
        elif kind == "run_finished":
            self.directory = event.get("cache") or self.directory
            self.cache_bytes = event.get("bytes") if isinstance(event.get("bytes"), (int, float)) \
                else self.cache_bytes

    def _written(self, going: bool = True) -> Text:
        """'shard 2/3 · 16,384 rows on disk': the shard being scored and what stopping the job
        keeps (a stopped job's: the rows on disk only)."""
        if not self.shards or self.shard is None:
            return Text("")
        kept = Text.assemble(f"{self.rows_written or 0:,}", (" rows on disk", "dim"))
        if not going:
            return Text.assemble("\n", kept)
        return Text.assemble("\n", ("shard ", "dim"), f"{self.shard + 1}/{self.shards}",
                             ("  ·  ", "dim"), kept)

    @property
    def complete_dir(self) -> str | None:
        """The cache's directory once the job completed (the `--teacher-cache` to give)."""
        return self.directory if self.verdict is not None and self.verdict.status == PASS \
            else None

    def show(self, verdict: Verdict | None, initial: float | None = None,
             label: str = "", latest: tuple[int, float] | None = None) -> None:
        # (the run panel's signature: a cache job has no val loss, initial or latest)
        self.verdict = verdict
        self.status = verdict.status if verdict else "pending"
        for status in ("pass", "fail", "inconclusive"):
            self.set_class(self.status == status, status)
        what = Text.assemble(("K ", "dim"), str(self.cache.get("k", "?")), " ",
                             str(self.cache.get("targets", "")), "  ",
                             ("store ", "dim"), str(self.cache.get("dtype", "?")))
        if self.teacher:
            what.append_text(Text.assemble("\n", ("teacher ", "dim"), self.teacher))
        if verdict is None:
            self._show_text(Text.assemble(("WRITING", "bold"), "\n", what, self._written()))
            return
        if verdict.status == PASS:
            self._show_text(Text.assemble(
                ("COMPLETE", "bold"), "  ", (f"{human_bytes(self.cache_bytes)} on disk", "dim"),
                "\n",
                what, "\n", ("train from it: t, or", "dim"), "\n",
                f"--teacher-cache {self.directory}"))
            return
        self._show_text(Text.assemble(
            ("NOT COMPLETE", "bold"), "\n", what, self._written(going=False), "\n",
            verdict.reason, "\n",
            ("R finishes it (finished shards are kept)", "dim")))


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _count(value: object) -> bool:
    return bool(_whole(value))


def cache_dir_of(panel: Any) -> Path | None:
    """The complete cache a run screen's panel names, if any."""
    directory = getattr(panel, "complete_dir", None)
    return Path(directory) if directory else None
