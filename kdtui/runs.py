"""The index of runs in a runs dir: which exist, which still run, how each ended.

Reads only the head and tail of each events.jsonl (a million-step run's stream is large), and
asks the OS whether the pid in engine.pid is alive, so listing stays fast with many runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.cells import cell_len

from kdengine.events import EVENTS_FILE, LOG_FILE
from kdengine.processes import pid_alive
from kdengine.verdict import CACHE_JOB

PID_FILE = "engine.pid"
_TAIL_BYTES = 1 << 16


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_dir: Path
    status: str  # starting | running | completed | failed | cancelled | stopped
    verdict: str | None  # pass | fail | inconclusive, once the engine wrote it
    started: float | None  # unix time of the first event
    updated: float  # mtime of the newest of the run's files
    step: int | None
    total_steps: int | None
    pid: int | None
    teacher: str | None = None  # "cached K=64 topk" when it trains from a teacher cache
    cache_job: bool = False  # a teacher-cache job (kdengine cache-teacher): it trains nothing

    @property
    def is_running(self) -> bool:
        return self.status in ("starting", "running")


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _head_event(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            line = fh.readline(1 << 20)
        event = json.loads(line)
        return event if isinstance(event, dict) else None
    except (OSError, ValueError):
        return None


def _tail_events(path: Path) -> list[dict[str, Any]]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > _TAIL_BYTES:
        lines = lines[1:]  # the first piece is cut in half
    out = []
    for raw in lines:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and "type" in event:
            out.append(event)
    return out


def last_finished(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run_finished of the run's latest part: none when a resume started after it."""
    for event in reversed(events):
        if event.get("type") == "run_finished":
            return event
        if event.get("type") == "run_started":
            return None
    return None


def run_info(run_dir: Path) -> RunInfo | None:
    """What one run directory holds, or None when it is not a run."""
    run_dir = Path(run_dir)
    events_path = run_dir / EVENTS_FILE
    pid = read_pid(run_dir)
    if not events_path.exists() and pid is None and not (run_dir / "config.json").exists():
        return None
    head = _head_event(events_path)
    tail = _tail_events(events_path)
    finished = last_finished(tail)
    verdict = next((e for e in reversed(tail) if e.get("type") == "verdict"), None)
    step_event = next((e for e in reversed(tail) if e.get("type") == "step"), None)
    alive = pid is not None and pid_alive(pid)
    if finished is not None:
        status = str(finished.get("status", "completed"))
    elif alive:
        status = "running" if head else "starting"
    else:
        status = "stopped"  # no run_finished and no process: killed hard or never started
    mtimes = [p.stat().st_mtime for p in (events_path, run_dir / LOG_FILE, run_dir / PID_FILE,
                                           run_dir / "config.json") if p.exists()]
    # the directory's name: the id find_run (kdtui watch, resume) takes, and run_started's
    # run_id (kdengine.events.run_id_of); runs from before that carried --run-name there
    run_id = run_dir.name
    step = int(step_event["step"]) if step_event and "step" in step_event else None
    ended_at = (finished or {}).get("steps")  # where it stopped: past the last logged step
    if isinstance(ended_at, int) and not isinstance(ended_at, bool) and \
            (head or {}).get("job") is None and (step is None or ended_at > step):
        step = ended_at
    total = (step_event or {}).get("total_steps")
    if total is None:
        asked = ((head or {}).get("config") or {}).get("steps")
        total = asked if isinstance(asked, int) and step is not None else None
    verdict_status = str(verdict["status"]) if verdict and "status" in verdict else None
    if verdict_status is None and status not in ("starting", "running"):
        verdict_status = derived_verdict(events_path, head, tail, finished)
    return RunInfo(
        run_id=str(run_id), run_dir=run_dir, status=status,
        verdict=verdict_status,
        started=head.get("t") if head else None,
        updated=max(mtimes, default=0.0),
        step=step,
        total_steps=total,
        pid=pid if alive else None,
        teacher=cached_teacher_label(head),
        cache_job=(head or {}).get("job") == CACHE_JOB,
    )


def cached_teacher_label(run_started: dict[str, Any] | None) -> str | None:
    """'cached K=64 topk, 1.2 GB' for a run that trains from a teacher cache (run_started's
    teacher_cache, kdengine.teacher), "writes a teacher cache K=64 topk" for a cache job
    (kdengine cache-teacher), else None: the teacher was live."""
    cache = (run_started or {}).get("teacher_cache")
    job = (run_started or {}).get("cache")
    if (run_started or {}).get("job") == "cache-teacher" and isinstance(job, dict):
        return f"writes a teacher cache K={job.get('k')} {job.get('targets', 'topk')}"
    if not isinstance(cache, dict):
        return None
    size = cache.get("bytes")
    return (f"cached K={cache.get('k')} {cache.get('targets', 'topk')}"
            + (f", {human_bytes(size)}" if isinstance(size, (int, float)) else ""))


def human_bytes(n: float | None) -> str:
    """A size as every screen says it: '1.2 GB', '1.09 MB', '512 B' ('?' unknown)."""
    if not isinstance(n, (int, float)):
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def derived_verdict(events_path: Path, head: dict[str, Any] | None,
                    tail: list[dict[str, Any]], finished: dict[str, Any] | None) -> str:
    """The verdict of an ended run that wrote none (it failed, was cancelled or killed), as the
    run screen and `kdengine verdict` compute it (kdengine.verdict): inconclusive, with their
    reason. Only a completed run without a verdict event needs its whole stream (its evals)."""
    from kdengine.verdict import verdict_from_events

    if finished is not None and finished.get("status") == "completed":
        from kdengine.events import iter_run_events

        return verdict_from_events(iter_run_events(str(events_path.parent))).status
    return verdict_from_events([*([head] if head else []), *tail]).status


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under runs_dir, newest first."""
    try:
        children = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
    except OSError:
        return []
    runs = [info for p in children if (info := run_info(p)) is not None]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def find_run(runs_dir: Path, ref: str) -> Path | None:
    """A run by directory path, run id (directory name), or dispatch.json path."""
    path = Path(ref).expanduser()
    if path.name == "dispatch.json" and path.is_file():
        try:
            data = json.loads(path.read_text())
            local = data.get("run_dir") or data.get("local_run_dir")
            if local and Path(local).is_dir():
                return Path(local)
        except (OSError, ValueError):
            pass
        return path.parent
    if path.is_dir():
        return path
    candidate = Path(runs_dir) / ref
    return candidate if candidate.is_dir() else None


# -- every run: local ones and remote dispatches ---------------------------------------------------
LOCAL = "local"


@dataclass(frozen=True)
class RunEntry:
    """One row of every runs list (the dashboard's, `kdtui runs`, `kdtui runs --plain`): a local
    run (`info`) or a remote dispatch (`manifest`, its dispatch.json's content)."""

    run_id: str
    where: str  # "local" or the SSH host alias
    status: str  # a local RunInfo.status, or dispatched | dispatch failed | how it finished
    verdict: str | None  # pass | fail | inconclusive
    step: int | None  # a remote run's: as a watch or a cancel recorded it in the manifest
    total_steps: int | None
    started: float | None  # unix time
    info: RunInfo | None = None
    manifest: dict[str, Any] | None = None
    teacher: str | None = None  # local runs: RunInfo.teacher

    @property
    def manifest_path(self) -> Path | None:
        return Path(self.manifest["_path"]) if self.manifest else None

    @property
    def cache_job(self) -> bool:
        """A teacher-cache job (kdengine cache-teacher), local or dispatched: it scores rows and
        trains nothing, so it has no step and no smoke verdict."""
        if self.info is not None:
            return self.info.cache_job
        return CACHE_JOB in ((self.manifest or {}).get("engine_command") or [])

    @property
    def verdict_word(self) -> str | None:
        """The verdict column's word: a run's verdict (pass, fail, inconclusive); a cache job's
        'complete' or 'not complete', as its screen's panel says (its 'pass' read as the smoke
        verdict of a distillation beside runs that had one)."""
        if self.verdict and self.cache_job:
            return "complete" if self.verdict == "pass" else "not complete"
        return self.verdict

    def progress(self, count: Callable[[int], str] = str, sep: str = " / ") -> str | None:
        """The step column: '40 / 200' (`count` writes each number); a cache job's rows scored,
        'rows 937 / 937' (its step events count rows, and its screen says rows); None unknown."""
        if self.step is None:
            return None
        text = count(self.step) + (f"{sep}{count(self.total_steps)}" if self.total_steps else "")
        return f"rows {text}" if self.cache_job else text

    @property
    def ref(self) -> str:
        """What `kdtui watch/resume` take for it: the local run dir, or the dispatch.json."""
        return str(self.info.run_dir) if self.info is not None else str(self.manifest_path)

    @property
    def may_resume(self) -> bool:
        """Ended without completing (or a dispatch no watcher saw end: its host says): the
        resume itself checks the rest (a checkpoint, the engine not running)."""
        if self.info is not None:
            return self.status in ("failed", "cancelled", "stopped")
        return self.status in ("failed", "cancelled", "stopped", "dispatched", "unconfirmed")

    @property
    def reattach(self) -> str:
        """What to type to come back to it."""
        if self.info is not None:
            return f"kdtui watch {self.info.run_dir}"
        if self.status == "dispatch failed":
            return f"see {self.manifest_path}"
        return f"kdtui watch {self.run_id}"


def local_entry(info: RunInfo) -> RunEntry:
    return RunEntry(info.run_id, LOCAL, info.status, info.verdict, info.step, info.total_steps,
                    info.started or info.updated, info=info, teacher=info.teacher)


def remote_entry(manifest: dict[str, Any]) -> RunEntry:
    """A dispatch as its manifest tells it: how a watcher saw it end (`state`: completed,
    failed, cancelled, stopped), else dispatched, or unconfirmed when the session that started
    it was cut before the start's answer came (the engine may run: watch or cancel it)."""
    if not manifest.get("launched"):
        status = "dispatch failed"
    else:
        status = str(manifest.get("state")
                     or (manifest.get("run_finished") or {}).get("status")
                     or ("unconfirmed" if manifest.get("launch_confirmed") is False
                         else "dispatched"))
    verdict = (manifest.get("verdict") or {}).get("status")
    if not verdict and status in ("failed", "cancelled") and manifest.get("run_finished"):
        from kdengine.verdict import verdict_from_events

        verdict = verdict_from_events([manifest["run_finished"]]).status
    step = manifest.get("engine_last_step")
    if step is None:  # a cancel recorded only the run_finished, its `steps` the engine's step
        steps = (manifest.get("run_finished") or {}).get("steps")
        step = steps if isinstance(steps, int) and steps > 0 else None
    # apr counts whole epochs: it trains `effective_steps` (epochs x steps_per_epoch), not the
    # steps asked for ('8/6' said it ran past its end)
    total = manifest.get("effective_steps")
    if not isinstance(total, int) or isinstance(total, bool):
        total = (manifest.get("config") or {}).get("steps")
    if CACHE_JOB in (manifest.get("engine_command") or []):
        total = None  # a job's rows are its data's, not the config's steps ('937 / 500')
    return RunEntry(str(manifest.get("run_id", "?")), str(manifest.get("host", "?")), status,
                    str(verdict) if verdict else None, step if isinstance(step, int) else None,
                    total if isinstance(total, int) else None,
                    _utc_seconds(manifest.get("dispatched_at") or ""), manifest=manifest)


def _utc_seconds(stamp: str) -> float | None:
    """'2026-11-24T09:30:00Z' (a manifest's dispatched_at) as unix time."""
    import calendar
    import time

    try:
        return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def all_runs(runs_dir: Path) -> list[RunEntry]:
    """Local runs under runs_dir and remote dispatches in the evidence dir, newest first."""
    from kdtui.remote.manifest import list_manifests

    entries = [*(local_entry(info) for info in list_runs(runs_dir)),
               *(remote_entry(data) for data in list_manifests())]
    return sorted(entries, key=lambda e: e.started or 0.0, reverse=True)


# -- fitting a run's name and host into a column (the runs list, `kdtui runs`) ----------------
LABEL_MIN = 6  # the least of a teacher label worth showing ("cached")
ID_MIN = 17  # the least of an id kept beside a label: "…" and its end ("-20251009-101500")


def fit_end(text: str, width: int) -> str:
    """`text` in `width` columns, its end an ellipsis (a host name's start tells it)."""
    if cell_len(text) <= width:
        return text
    return text[:max(width - 1, 0)] + "…"


def fit_run(marks: str, name: str, width: int) -> str:
    """A row's run cell in `width` columns: whole where it fits; else its teacher label
    (' (cached K=64 topk, 1.2 GB)') is cut first, at a word ('kd-20251009-101500 (cached
    K=64…)'), then the id loses its middle, keeping its end (a timestamped id's time tells it
    from its neighbours) and the label's first word: 'distill…-20251009-121500 (cached…)'."""
    if cell_len(marks + name) <= width:
        return marks + name
    run_id, sep, label = name.partition(" (")
    label = label[:-1] if sep and label.endswith(")") else ""
    if not label:
        run_id = name
    avail = width - cell_len(marks)
    if label:
        room = avail - cell_len(run_id) - 4  # " (" + the label's start + "…)"
        if room >= LABEL_MIN:
            return f"{marks}{run_id} ({_cut_at_word(label, room)}…)"
        if cell_len(run_id) > avail and avail - LABEL_MIN - 4 >= ID_MIN:  # cut anyway
            return (f"{marks}{_middle(run_id, avail - LABEL_MIN - 4)} "
                    f"({_cut_at_word(label, LABEL_MIN)}…)")
    return marks + _middle(run_id, avail)


def _middle(text: str, width: int) -> str:
    """`text` in `width` columns, its middle an ellipsis: a third of it kept at the start, the
    rest (16 at least: '-20251009-101500') at the end; in 2 columns or fewer, its end."""
    if len(text) <= width:
        return text
    if width <= 2:
        return f"…{text[-1:]}"[:width]
    keep = width - 1
    tail = min(keep - 1, max(16, keep * 2 // 3))
    return f"{text[:keep - tail]}…{text[-tail:]}"


def _cut_at_word(text: str, width: int) -> str:
    """The most whole parts of `text` ('cached K=64 topk, 1.2 GB': its size goes whole) in
    `width` columns, else its most whole words, else its first `width`."""
    for sep in (", ", " "):
        parts = text[:width + len(sep)].split(sep)
        if len(parts) > 1:
            return sep.join(parts[:-1])
    return text[:width]
