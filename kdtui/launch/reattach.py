"""Come back to a run by what the user has at hand: a run id, a run directory, or a dispatch.json.

One resolver for the dashboard (`kdtui watch RUN`, the runs list): a remote dispatch's manifest
gives an SSH handle (the apr profile's own when the manifest says so), anything else a local one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdtui.launch.base import RunHandle


def manifest_handle(path: Path, on_status: Callable[[str], None] | None = None) -> RunHandle:
    """The handle of a remote run from its dispatch.json (raises with the reason if it never
    started or its host is gone from the hosts)."""
    from kdtui.remote.manifest import read_manifest

    if read_manifest(path).get("profile") == "apr":
        from kdtui.profiles.apr.dispatch import AprRunHandle

        return AprRunHandle.from_manifest(path, on_status=on_status)
    from kdtui.launch.remote import RemoteRunHandle

    return RemoteRunHandle.from_manifest(path, on_status=on_status)


def reattach(ref: str, runs_dir: Path,
             on_status: Callable[[str], None] | None = None) -> RunHandle | None:
    """A handle for `ref`, or None when nothing by that name exists here or in the evidence."""
    from kdtui.launch.local import LocalRunHandle
    from kdtui.remote.manifest import find_manifest
    from kdtui.runs import find_run

    run_dir = find_run(runs_dir, ref)
    if run_dir is not None and (run_dir / "events.jsonl").exists():
        return LocalRunHandle.attach(run_dir)
    manifest = find_manifest(ref)
    if manifest is not None:
        return manifest_handle(manifest, on_status)
    return LocalRunHandle.attach(run_dir) if run_dir is not None else None


def describe(handle: Any) -> str:
    return f"{handle.run_id} on {handle.host}"
