"""The dry run: the whole plan of a launch, touching nothing.

For a remote host it lists every stage with every remote command exactly as it will be sent
(the same RemoteCommand.text the stages send) and every SFTP upload; for `local`, the engine
command line. Nothing is connected to, built on disk, or written.
"""

from __future__ import annotations

from pathlib import Path

from kdengine.config import FIELDS, RunConfig
from kdtui.remote.hosts import LOCAL


def config_lines(config: RunConfig) -> list[str]:
    """The effective config, one field a line, defaults marked."""
    lines = ["effective config:"]
    for f in FIELDS:
        value = getattr(config, f.name)
        mark = "" if value != f.default else "  (default)"
        lines.append(f"  {f.name} = {value!r}{mark}")
    return lines


def plan_lines(config: RunConfig, host: str, fallback: str | None = None,
               runs_dir: Path | None = None) -> list[str]:
    """What `kdtui launch` would do, as plain lines."""
    if host == LOCAL:
        from kdengine.config import default_runs_dir
        from kdtui.launch.local import LocalLauncher

        launcher = LocalLauncher(config, runs_dir or default_runs_dir())
        return ["DRY RUN: nothing is started", *launcher.plan(), *config_lines(launcher.config)]
    from kdtui.launch.remote import RemoteLauncher

    remote = RemoteLauncher(config, host, fallback)
    return ["DRY RUN: nothing is connected to, uploaded or started", *remote.dry_run(),
            *config_lines(remote.plans[0].config)]
