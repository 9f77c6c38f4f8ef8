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


def record_verdict(path: Path, verdict: dict[str, Any], finished: dict[str, Any] | None) -> None:
    """Add the verdict (and how the run finished) to an existing manifest."""
    data = read_manifest(path)
    data["verdict"] = verdict
    data["run_finished"] = finished
    data["verdict_recorded_at"] = utc_now()
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
