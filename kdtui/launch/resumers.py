"""Which resumer R takes for a run reference: a local run's (kdtui.launch.resume.LocalResumer),
a local teacher-cache job's (kdtui.launch.cache_resume.LocalCacheResumer) or a remote run's or
job's, from its dispatch.json (kdtui.launch.resume.RemoteResumer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kdengine.events import EVENTS_FILE
from kdtui.launch.cache_job import CACHE_JOB
from kdtui.launch.cache_resume import LocalCacheResumer
from kdtui.launch.resume import LocalResumer, RemoteResumer, ResumeRefused


def local_resumer(run_dir: Path) -> LocalResumer:
    """The resumer of a local run dir: a cache job's (its first event says so) or a run's."""
    from kdtui.runs import _head_event

    if (_head_event(run_dir / EVENTS_FILE) or {}).get("job") == CACHE_JOB:
        return LocalCacheResumer(run_dir)
    return LocalResumer(run_dir)


def resumer_for(ref: str | Path, runs_dir: Path,
                on_status: Callable[[str], None] | None = None) -> LocalResumer | RemoteResumer:
    """The resumer of run `ref` (an id, a run directory or a dispatch.json), resolved as
    `kdtui watch` resolves it; ResumeRefused with the reason when there is nothing to resume."""
    from kdtui.remote.manifest import find_manifest
    from kdtui.runs import find_run

    ref = str(ref)
    run_dir = find_run(runs_dir, ref)
    if run_dir is not None and (run_dir / EVENTS_FILE).exists():
        resumer = local_resumer(run_dir)
        why = resumer.refusal()
        if why:
            raise ResumeRefused(why)
        return resumer
    manifest = find_manifest(ref)
    if manifest is not None:
        from kdtui.profiles.apr.dispatch import apr_resume_refusal
        from kdtui.remote.hosts import HostsFileError

        why = apr_resume_refusal(manifest)
        if why:
            raise ResumeRefused(why)
        try:
            return RemoteResumer(manifest, on_status)
        except (KeyError, ValueError, HostsFileError) as exc:
            raise ResumeRefused(f"{manifest}: {exc}") from None
    raise ResumeRefused(f"no run {ref!r}: not a dispatch.json, a run directory, or a run id in "
                        f"{runs_dir} or the evidence dir (see `kdtui runs`)")
