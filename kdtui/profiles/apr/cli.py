"""`kdtui launch --profile apr` and `kdtui watch` of an apr run, from parsed CLI arguments.

Run fields come as for every launch (defaults < --config < KDTUI_<FIELD> env < flags); apr's own
settings (repo, git ref, cargo features, steps per epoch...) from --apr-settings FILE (a TOML or
JSON table of AprSettings), then --apr-repo / --apr-ref. `data` is not required: apr distill
cannot take it (it is listed as NOT applied like every other field apr lacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from kdengine.config import (
    FIELDS_BY_NAME,
    ConfigError,
    RunConfig,
    flag_of,
    load_config_file,
)
from kdtui.profiles import PROFILES
from kdtui.profiles.apr.schema import APR_DEFAULTS, AprSettings
from kdtui.profiles.apr.watch import EXIT_ERROR


def add_apr_arguments(parser: argparse.ArgumentParser) -> None:
    """The launch parser's profile choice and apr's settings (a hook for kdtui.cli)."""
    parser.add_argument("--profile", choices=PROFILES, default="kdengine",
                        help="Engine to run: kdengine (default) or aprender's `apr distill` "
                             "on an SSH host (see docs/apr-profile.md)")
    parser.add_argument("--apr-settings", metavar="FILE",
                        help="apr profile: TOML/JSON table of repo_url, git_ref, build, "
                             "cargo_package, cargo_features, apr_bin, steps_per_epoch, "
                             "json_summary")
    parser.add_argument("--apr-repo", metavar="URL", help="apr profile: aprender git URL")
    parser.add_argument("--apr-ref", metavar="REF", help="apr profile: git ref to build")


def apr_config_from_args(args: argparse.Namespace,
                         environ: dict[str, str] | None = None) -> RunConfig:
    """As every launch's (kdtui.headless.config_from_args), but `data` is not required, and
    a field of APR_DEFAULTS that nothing set (flag, --config, KDTUI_ variable, --demo) takes
    apr's default, not kdengine's."""
    from kdtui.headless import config_from_args

    config = config_from_args(args, environ, require_models=False)
    env = os.environ if environ is None else environ
    from_file = load_config_file(Path(args.config)) if getattr(args, "config", None) else {}
    unset = {name: value for name, value in APR_DEFAULTS.items()
             if getattr(args, name, None) is None and name not in from_file
             and f"KDTUI_{name.upper()}" not in env and not getattr(args, "demo", False)}
    return config.with_values(**unset) if unset else config


def apr_settings_from_args(args: argparse.Namespace) -> AprSettings:
    values: dict[str, Any] = {}
    if getattr(args, "apr_settings", None) is not None:
        try:
            values.update(load_config_file(Path(args.apr_settings)))
        except ConfigError as exc:  # the file of --apr-settings, not a --config file
            raise ConfigError("--apr-settings", exc.message) from None
    # given, even empty, is given: `--apr-ref ""` is refused by AprSettings, never read as unset
    if getattr(args, "apr_repo", None) is not None:
        values["repo_url"] = args.apr_repo
    if getattr(args, "apr_ref", None) is not None:
        values["git_ref"] = args.apr_ref
    return AprSettings.from_mapping(values)


def apr_launcher_from_args(args: argparse.Namespace) -> Any:
    """The AprLauncher the arguments describe (raises ConfigError / HostsFileError)."""
    from kdtui.profiles.apr.dispatch import AprLauncher
    from kdtui.remote.hosts import LOCAL

    config = apr_config_from_args(args)
    settings = apr_settings_from_args(args)
    host = args.host or os.environ.get("KDTUI_HOST") or LOCAL
    if host == LOCAL:
        raise ConfigError("host", "the apr profile runs apr distill on an SSH host: give "
                          "--host ALIAS (from ~/.ssh/config or the kdtui hosts file)")
    from kdtui.remote.connect import refuse_unknown_host

    refuse_unknown_host(host)  # UnknownHost (a HostsFileError): a dry run refuses it too
    return AprLauncher(config, host, settings)


def launch_from_args(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`kdtui launch --profile apr`: in the dashboard, or as plain lines with --headless."""
    out = out or sys.stdout
    from kdtui.headless import env_flag
    from kdtui.remote.hosts import HostsFileError

    try:
        launcher = apr_launcher_from_args(args)
        # as every launch reads them (docs/remote.md): either variable makes it a dry run
        dry_run = args.dry_run or env_flag("DRY_RUN") or env_flag("KDTUI_DRY_RUN")
    except ConfigError as exc:
        # (an apr setting by its name; --config's own refusal by the flag typed, as the engine)
        name = flag_of(exc.field) if exc.field in (*FIELDS_BY_NAME, "config") else exc.field
        print(f"kdtui launch: error: {name}: {exc.message}" if name else
              f"kdtui launch: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except HostsFileError as exc:
        print(f"kdtui launch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if dry_run:
        for line in ["DRY RUN: nothing is connected to, uploaded or started",
                     *launcher.dry_run()]:
            print(line, file=out)
        return 0
    if not args.headless:
        from kdtui.app import run_app

        return run_app(args, launcher=launcher)
    from kdtui.profiles.apr.headless import launch_apr

    try:
        return asyncio.run(launch_apr(launcher.config, launcher.host, launcher.settings,
                                      out=out, detach=args.detach))
    except KeyboardInterrupt:
        print(f"detached: the run goes on; come back with: kdtui watch {launcher.run_id}",
              file=out)
        return EXIT_ERROR


def apr_manifest(ref: str) -> Path | None:
    """The dispatch.json of `ref` when it is an apr run's, else None (kdengine handles it)."""
    from kdtui.remote.manifest import find_manifest, read_manifest

    path = find_manifest(ref)
    if path is None:
        return None
    try:
        return path if read_manifest(path).get("profile") == "apr" else None
    except (OSError, ValueError):
        return None


def watch_from_ref(ref: str, out: TextIO | None = None) -> int:
    from kdtui.profiles.apr.headless import watch_apr_manifest

    path = apr_manifest(ref)
    if path is None:
        print(f"kdtui watch: error: {ref!r} is not an apr run's dispatch.json", file=sys.stderr)
        return EXIT_ERROR
    try:
        return asyncio.run(watch_apr_manifest(path, out=out or sys.stdout))
    except KeyboardInterrupt:
        print(f"detached: the run goes on; come back with: kdtui watch {ref}",
              file=out or sys.stdout)
        return EXIT_ERROR
