"""dispatch.json: the local evidence of a remote run, written when it starts, completed later.

It holds the run id, host, user, remote run dir, pid, kdengine version and build, the local git
commit, the full effective config, the exact engine command, every host attempt with every
stage's result and timing, and dispatched_at (UTC). The verdict is added when a watcher sees it.
Never a password, key or token: only what the dispatch itself decided.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kdengine

MANIFEST = "dispatch.json"
FALSIFIER = "F-DISTILL-SMOKE-001"


def evidence_dir() -> Path:
    """$KDTUI_EVIDENCE_DIR, else kdtui's user data dir / evidence."""
    env = os.environ.get("KDTUI_EVIDENCE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("kdtui") / "evidence"


EVIDENCE_ENV = "KDTUI_EVIDENCE_DIR"


def check_evidence_dir(base: Path | None = None) -> None:
    """The evidence dir is one the manifests can be written into (a directory, or one that can
    be made), found before anything is connected to: a dispatch writes its manifest just before
    the engine starts, which is too late to find it is a file. ConfigError naming
    KDTUI_EVIDENCE_DIR otherwise."""
    from kdengine.preflight import check_run_dir  # no torch

    check_run_dir(base or evidence_dir(), EVIDENCE_ENV,
                  f"set {EVIDENCE_ENV} to a directory you can write")


def manifest_path(run_id: str, base: Path | None = None) -> Path:
    return (base or evidence_dir()) / run_id / MANIFEST


def local_git_commit() -> dict[str, Any]:
    """The commit of the kdtui checkout this process runs from, and whether it has edits."""
    root = Path(kdengine.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "kdengine", "kdtui"], capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(path: Path, data: dict[str, Any]) -> Path:
    """Atomic write: a reader never sees half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def record_watch(path: Path, *, verdict: dict[str, Any], finished: dict[str, Any] | None,
                 engine_last_step: int | None, checkpoint_step: int | None,
                 status: str | None, log_tail: list[str] | None = None) -> None:
    """What a watch saw at the run's end (kdtui.launch.outcome.WatchedRun.record, for the
    dashboard and headless watch alike): the verdict, run_finished, the engine's last step, the
    newest checkpoint, and `state` (completed, failed, cancelled, or stopped: the engine died
    without run_finished, `engine_gone` holding the log's last lines). The current segment
    (the dispatch's start, or the latest resume) gets the same end."""
    data = read_manifest(path)
    data["verdict"] = verdict
    data["run_finished"] = finished
    data["engine_last_step"] = engine_last_step
    data["checkpoint_step"] = checkpoint_step
    data["state"] = status
    data["verdict_recorded_at"] = utc_now()
    if status == "stopped":
        data["engine_gone"] = {"at": utc_now(), "log_tail": list(log_tail or [])}
    segments = data.get("segments") or []
    if segments:
        segments[-1].update(ended=status, last_step=engine_last_step, ended_at=utc_now())
    write_manifest(path, data)


def record_verdict(path: Path, verdict: dict[str, Any], finished: dict[str, Any] | None) -> None:
    """record_watch for a watcher that kept only the verdict and run_finished (apr's)."""
    steps = (finished or {}).get("steps")
    record_watch(path, verdict=verdict, finished=finished,
                 engine_last_step=steps if isinstance(steps, int) else None,
                 checkpoint_step=None,
                 status=str(finished.get("status") or "completed") if finished else None)


def merge_attempts(data: dict[str, Any], attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's attempts with `attempts` in: one with a known `id` is that attempt's
    newer record, any other is appended. Attempts are never dropped or replaced by another."""
    merged = list(data.get("attempts") or [])
    index = {a.get("id"): i for i, a in enumerate(merged) if a.get("id")}
    for attempt in attempts:
        if attempt.get("id") in index:
            merged[index[attempt["id"]]] = attempt
        else:
            merged.append(attempt)
    return merged


# what a resume's new segment clears (the run is no longer ended) and a refused one puts back
RESUME_CLEARS = ("run_finished", "state", "engine_gone", "verdict", "launch_confirmed")


def add_segment(path: Path, segment: dict[str, Any]) -> dict[str, Any]:
    """A new part of the run (a resume), written before its start: appended to `segments`, the
    run no longer ended and its start not yet confirmed (`launch_confirmed: false`: a session
    cut before the start's answer leaves it `unconfirmed`, as a dispatch's). Returns the
    record it replaced, for `refuse_segment` to put back."""
    data = read_manifest(path)
    before = {key: data[key] for key in RESUME_CLEARS if key in data}
    data.setdefault("segments", []).append(segment)
    for key in RESUME_CLEARS:
        data[key] = None
    data["launch_confirmed"] = False
    write_manifest(path, data)
    return before


def refuse_segment(path: Path, error: str, before: dict[str, Any]) -> None:
    """The latest segment's start was refused (the engine exited at once, a damaged
    checkpoint; no engine runs): it ends `refused` with the line that said why, and the run's
    record is put back as it was before it (`before`, from add_segment), so the runs list
    shows the run as it ended, not as dispatched."""
    data = read_manifest(path)
    segments = data.get("segments") or []
    if segments:
        segments[-1].update(ended="refused", error=error, ended_at=utc_now())
    for key in RESUME_CLEARS:
        if key in before:
            data[key] = before[key]
        else:
            data.pop(key, None)
    write_manifest(path, data)


def find_manifest(ref: str) -> Path | None:
    """A manifest by path (the file or its directory) or by run id in the evidence dir."""
    path = Path(ref).expanduser()
    if path.name == MANIFEST and path.is_file():
        return path
    if (path / MANIFEST).is_file():
        return path / MANIFEST
    if "/" not in ref:
        candidate = manifest_path(ref)
        if candidate.is_file():
            return candidate
    return None


def list_manifests() -> list[dict[str, Any]]:
    """Every remote run's manifest in the evidence dir, newest first."""
    out = []
    base = evidence_dir()
    if not base.is_dir():
        return out
    for path in base.glob(f"*/{MANIFEST}"):
        try:
            data = read_manifest(path)
        except (OSError, ValueError):
            continue
        data["_path"] = str(path)
        out.append(data)
    return sorted(out, key=lambda d: d.get("dispatched_at", ""), reverse=True)
