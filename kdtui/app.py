"""The kdtui App: screens, themes, bindings, command palette, and `run_app` for the CLI.

Starts fast: nothing here (or in any screen) imports torch; the engine runs in its own process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from kdtui.palette import KDCommands, PaletteCommand
from kdtui.settings import Settings

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_THEME = "kdtui-dark"


def themes_dirs() -> list[Path]:
    """Where theme files are: kdtui/themes in an installed wheel, themes/ in a checkout."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "themes", here.parent / "themes") if d.is_dir()]


def load_theme_file(path: Path) -> Theme:
    """One TOML file -> a textual Theme (its keys are Theme's fields)."""
    data = tomllib.loads(path.read_text())
    data.setdefault("name", path.stem)
    allowed = set(Theme.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown theme key {unknown[0]!r} (known: {sorted(allowed)})")
    return Theme(**data)


def load_themes() -> dict[str, Theme]:
    themes: dict[str, Theme] = {}
    for directory in reversed(themes_dirs()):  # the package's copy wins over a checkout's
        for path in sorted(directory.glob("*.toml")):
            theme = load_theme_file(path)
            themes[theme.name] = theme
    return themes


def theme_names() -> tuple[list[str], list[str]]:
    """(kdtui's themes, Textual's built-in ones), each sorted: every name --theme takes."""
    from textual.theme import BUILTIN_THEMES

    ours = sorted(load_themes())
    return ours, sorted(set(BUILTIN_THEMES) - set(ours))


def themes_listed() -> str:
    ours, textual = theme_names()
    return f"{', '.join(ours)} (kdtui's); {', '.join(textual)} (Textual's)"


def theme_refusal(name: str) -> str | None:
    """Why `--theme NAME` names no theme (None when it does): said before the dashboard
    starts (it opened in the default theme with a toast the user had to catch)."""
    ours, textual = theme_names()
    if name in ours or name in textual:
        return None
    return (f"--theme {name}: no such theme; themes: {themes_listed()}; pick one of them "
            f"(--theme {DEFAULT_THEME}, the default, or leave --theme out)")


class KDApp(App):
    """The dashboard. `command`: None opens the form, 'launch' opens it and starts the run,
    'watch' opens one run."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "kdtui"
    COMMANDS = App.COMMANDS | {KDCommands}
    # a screen 100 columns wide or more is `-wide`: the footer's keys get two spaces apart
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    # the footer shows Quit and Help; F8 lives in the help and the palette (80 columns are few)
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True, id="app.quit",
                tooltip="Quit (asks about a run still going)"),
        Binding("f1", "help", "Help", id="app.help", tooltip="Every key of this screen"),
        Binding("f8", "screenshot", "Screenshot", show=False, id="app.screenshot",
                tooltip="Save an SVG screenshot of this screen"),  # where: screenshot_place
    ]

    def __init__(self, *, runs_dir: Path | None = None, theme: str | None = None,
                 command: str | None = None, watch_ref: str | None = None,
                 prefill: dict[str, Any] | None = None, settings: Settings | None = None,
                 launcher: Any = None, compare_targets: list[Any] | None = None) -> None:
        super().__init__()
        from kdengine.config import default_runs_dir

        self.settings = settings or Settings.load()
        self.runs_dir = Path(runs_dir).expanduser() if runs_dir else default_runs_dir()
        self.command = command
        self.watch_ref = watch_ref
        self.prefill = prefill or {}
        self.launcher = launcher  # a launcher built outside the form (an engine profile's)
        self.owned_runs: list[Any] = []  # handles of runs this dashboard started
        self.compare_targets = compare_targets or []  # `kdtui compare RUN...`
        self.announced: set[str] = set()  # runs whose end was notified (once each)
        self._seen: Any = None  # kdtui.seen.SeenRuns, read when first needed
        self._said_unsaved = ""  # the settings' save problem already told (warn_unsaved)
        self._theme_request = theme
        for t in load_themes().values():
            self.register_theme(t)
        wanted = theme or self.settings.theme or DEFAULT_THEME
        self._bad_theme = None if wanted in self.available_themes else wanted
        self.theme = wanted if self._bad_theme is None else DEFAULT_THEME

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        if self._bad_theme and not self._theme_request:
            # a saved setting: the dashboard opens (in the default), and says where it is
            where = self.settings.path or "settings.json"
            # the themes are not listed: 25 names filled an 80x24 screen; the palette has them
            self.notify(f'{where}: "theme" is {self._bad_theme!r}, no theme kdtui knows; '
                        f"{DEFAULT_THEME} is used. Pick one with ctrl+p, 'theme' (remembered "
                        "there)", severity="error", timeout=12, markup=False)
        elif self._bad_theme:
            names = ", ".join(sorted(self.available_themes))
            self.notify(f"no theme {self._bad_theme!r}; themes: {names}", severity="error",
                        timeout=8)
        elif self._theme_request:
            self._remember_theme(self.current_theme)
        if self.launcher is not None:
            host = getattr(self.launcher.host, "alias", self.launcher.host)
            self.show_run(launcher=self.launcher, title=f"{self.launcher.run_id} on {host}")
        elif self.command == "watch" and self.watch_ref:
            self._open_watch(self.watch_ref)
        elif self.command == "compare" and self.compare_targets:
            self.show_compare(self.compare_targets)
        else:
            from kdtui.screens.launch import LaunchScreen

            # `kdtui launch ...` starts the run at once (errors stay inline in the form)
            self.push_screen(LaunchScreen(self.prefill, autostart=self.command == "launch"))

    def _open_watch(self, ref: str) -> None:
        from kdtui.screens.launch import LaunchScreen

        if not self.open_run(ref):  # `kdtui watch` checked the name: a dispatch that failed
            self.push_screen(LaunchScreen())

    def open_run(self, ref: str) -> bool:
        """Open the run screen on run `ref` (an id, a run dir or a dispatch.json); False after
        saying why when there is nothing to open."""
        from kdtui.launch.reattach import describe, reattach

        try:
            handle = reattach(ref, Path(self.runs_dir))
        except Exception as exc:  # a manifest whose run never started, a host no longer known
            handle = None
            why = str(exc)
        else:
            why = (f"no run {ref!r} (give a run id in {self.runs_dir} or the evidence dir, a "
                   "run directory, or a dispatch.json)")
        if handle is None:
            self.notify(why, severity="error", timeout=10, markup=False)
            return False
        self.show_run(handle=handle, title=describe(handle))
        return True

    # -- navigation: screens ask the app to move; they never import each other -------------
    def show_run(self, *, title: str, launcher: Any = None, handle: Any = None,
                 status: str = "", remember: tuple[str, dict[str, Any]] | None = None) -> None:
        """The run screen over the current one: a run to start (`launcher`) or one to follow
        (`handle`). `remember`: (host, the form's values), remembered as the host's once the
        launch passes its check stage; a launch the check refuses leaves them as they were."""
        from kdtui.screens.run import RunScreen

        accepted = None if remember is None else partial(self._remember_values, *remember)
        self.push_screen(RunScreen(launcher=launcher, handle=handle, title=title, status=status,
                                   accepted=accepted))

    def _remember_values(self, host: str, values: dict[str, Any]) -> None:
        if not self.settings.remember(host, values):
            self.warn_unsaved()

    def show_compare(self, targets: list[Any]) -> None:
        """Runs side by side (kdtui/screens/compare.py); `targets`: kdtui.compare.CompareTarget,
        local or remote runs."""
        from kdtui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(targets))

    def back_from_compare(self) -> None:
        """To the screen under the compare screen, or the runs list (`kdtui compare` opened it
        first)."""
        if len(self.screen_stack) > 2:
            self.pop_screen()
        else:
            from kdtui.screens.runs import RunsScreen

            self.switch_screen(RunsScreen())

    # -- a run ended: tell the user, remember what they looked at ---------------------------
    @property
    def seen(self) -> Any:
        if self._seen is None:
            from kdtui.seen import SeenRuns

            self._seen = SeenRuns()
        return self._seen

    def run_ended(self, run_id: str, status: str, verdict: str | None = None,
                  run_dir: Path | str | None = None, looking: bool = False) -> None:
        """A run finished (its verdict is in) or failed: a terminal notification once per run,
        unless switched off; `looking`: the user has it on screen, so it is seen."""
        if looking and run_dir is not None:
            self.seen.mark(run_dir)
        key = str(run_dir or run_id)
        if key in self.announced:
            return
        self.announced.add(key)
        if not self.settings.notifications:
            return
        from kdtui.notify import send

        send(self, "kdtui", f"{run_id}: {status}" + (f", verdict {verdict.upper()}"
                                                     if verdict else ""))

    def toggle_notifications(self) -> None:
        self.settings.notifications = not self.settings.notifications
        self.settings.save()
        self.warn_unsaved()
        self.notify("terminal notifications " + ("on" if self.settings.notifications
                                                 else "off"), timeout=4)

    def show_plan(self, lines: list[str]) -> None:
        """A dry run's commands, as they would be sent."""
        from kdtui.screens.dialogs import PlanScreen

        self.push_screen(PlanScreen(lines))

    def cache_teacher(self, form: Any) -> None:
        """The form's F4: its teacher and data scored once into a teacher cache (asks K)."""
        from kdtui.screens.cache_teacher import start_cache_job

        start_cache_job(form)

    def train_from_cache(self, directory: str, job_config: dict | None = None) -> None:
        """A complete teacher-cache job's t: back to the form with `teacher_cache` set and the
        job's data and row fields (`job_config`: its run_started's config), the form under the
        run screen when there is one, else a new form. The form's last run (an on-policy one,
        another data file) is no longer left in the fields a run from this cache must match."""
        from kdtui.launch.cache_job import run_from_cache_values
        from kdtui.screens.launch import LaunchScreen

        values = run_from_cache_values(directory, job_config)
        stack = self.screen_stack
        under = stack[-2] if len(stack) > 2 else None
        if isinstance(under, LaunchScreen):
            self.pop_screen()
            under.fill_values(values)
        else:
            self.switch_screen(LaunchScreen(values))
        data = f", data {values['data']}" if "data" in values else ""
        self.notify(f"teacher_cache = {directory}{data} with its row fields, no teacher (the "
                    "cache stands for it), loss forward_kl, lmbda 0: fill in a student and "
                    "start", timeout=8, markup=False)

    def back_to_form(self) -> None:
        """Leave the current screen for the launch form: the one under it, else a new one."""
        if len(self.screen_stack) > 2:
            self.pop_screen()
        else:
            from kdtui.screens.launch import LaunchScreen

            self.switch_screen(LaunchScreen())

    # -- the command palette -----------------------------------------------------------------
    def navigation(self, screen: Screen) -> Iterable[PaletteCommand]:
        """Where the palette can go from `screen`: a new run, the runs list."""
        from kdtui.screens.launch import LaunchScreen
        from kdtui.screens.runs import RunsScreen

        if not isinstance(screen, LaunchScreen):
            yield PaletteCommand("New run", "Open the launch form", self.action_new_run)
        if not isinstance(screen, RunsScreen):
            yield PaletteCommand("Runs", "Past and running runs: open one to watch it",
                                 self.action_runs)
        on = self.settings.notifications
        yield PaletteCommand(f"Notifications {'off' if on else 'on'}",
                             "A terminal notification (OSC 9/777, else the bell) when a run "
                             f"ends: now {'on' if on else 'off'}", self.toggle_notifications)
        ref = resumable_ref(screen)
        if ref is not None:
            run_id = screen.handle.run_id  # type: ignore[attr-defined]
            how = (f"Finish {run_id}: its cache-teacher command again, finished shards kept"
                   if getattr(screen, "cache_job", False) else
                   f"Continue {run_id} from its last complete checkpoint")
            yield PaletteCommand("Resume run", f"{how} (kdtui resume)",
                                 partial(self.resume_run, ref))

    def run_commands(self) -> Iterable[PaletteCommand]:
        """'Open run ID' for every run the runs list shows (searched, not listed up front)."""
        from kdtui.runs import all_runs

        for run in all_runs(self.runs_dir):
            ref = str(run.info.run_dir) if run.info is not None else str(run.manifest_path)
            yield PaletteCommand(f"Open run {run.run_id}", f"{run.where} · {run.status}",
                                 partial(self.open_run, ref))

    def resume_run(self, ref: str | Path) -> None:
        """Resume run `ref` (a local run dir or a dispatch.json; kdtui.launch.resume), then the
        run screen on it: the resume's stages, then the whole run from its first event."""
        from kdtui.launch.resume import ResumeRefused
        from kdtui.launch.resumers import resumer_for

        try:
            resumer = resumer_for(ref, Path(self.runs_dir))
        except ResumeRefused as exc:
            self.notify(f"cannot resume: {exc}", severity="error", markup=False, timeout=8)
            return
        host = getattr(resumer.host, "alias", resumer.host)
        from kdtui.screens.run import RunScreen

        if isinstance(self.screen, RunScreen):  # R on the run's screen: the resume's replaces it
            self.pop_screen()
        self.show_run(launcher=resumer, title=f"{resumer.run_id} on {host}", status="resuming")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # kdtui's own Quit (asks about runs going) and Screenshot (F8: into the run's directory,
        # not the working dir) come from KDCommands
        for command in super().get_system_commands(screen):
            if command.title not in ("Screenshot", "Quit"):
                yield command

    def _remember_theme(self, theme: Theme) -> None:
        if self.settings.theme != theme.name:
            self.settings.theme = theme.name
            self.settings.save()
            self.warn_unsaved()

    def warn_unsaved(self) -> None:
        """Settings that could not be written (Settings.problem): said once, in a warning."""
        problem = self.settings.problem
        if problem and problem != self._said_unsaved:
            self._said_unsaved = problem
            self.notify(problem, severity="warning", timeout=10, markup=False)

    # -- actions ----------------------------------------------------------------------------
    def action_new_run(self) -> None:
        """The launch form: the one already open, as it was left (a second one over a run hid
        the values typed into the first), else a new one."""
        from kdtui.screens.launch import LaunchScreen

        forms = [screen for screen in self.screen_stack if isinstance(screen, LaunchScreen)]
        if not forms:
            self.push_screen(LaunchScreen())
            return
        while self.screen is not forms[-1]:
            self.pop_screen()

    def action_runs(self) -> None:
        from kdtui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())

    def action_help(self) -> None:
        from kdtui.screens.dialogs import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def screenshot_place(self, screen: Screen | None) -> tuple[Path, str]:
        """Where F8 saves on `screen`, and the words the help and the palette say it in: a
        run's screen says its own (a remote run's evidence dir, beside its dispatch.json), any
        other screen (or a run whose directory is not known yet) the runs directory."""
        target = getattr(screen, "screenshot_dir", None)
        if target:
            return Path(target), screen.screenshot_where
        return Path(self.runs_dir), "into the runs directory"

    def action_screenshot(self) -> None:
        """An SVG of the dashboard where screenshot_place says."""
        target, _ = self.screenshot_place(self.screen)
        target.mkdir(parents=True, exist_ok=True)
        name = time.strftime("kdtui-%Y%m%d-%H%M%S.svg")
        path = self.save_screenshot(filename=name, path=str(target))
        self.notify(f"screenshot saved: {path}", timeout=6)

    def running_owned(self) -> list[Any]:
        """Runs this dashboard started that are still going (an engine that already wrote
        run_finished and is only exiting does not count)."""
        from kdtui.runs import run_info

        going = []
        for handle in self.owned_runs:
            if not getattr(handle, "is_alive", lambda: True)():
                continue
            local_dir = getattr(handle.source, "run_dir", None)
            info = run_info(Path(local_dir)) if local_dir else None
            if info is None or info.status in ("starting", "running"):
                going.append(handle)
        return going

    async def action_quit(self) -> None:
        going = self.running_owned()
        if not going:
            self.exit()
            return
        from kdtui.screens.dialogs import QuitScreen

        async def decided(choice: str | None) -> None:
            if choice == "stop":
                for handle in going:
                    await handle.cancel()
                # the user ended them here: the runs list has nothing new to mark on them
                # (they were marked '•', ended and not looked at, in the next dashboard)
                self.seen.mark(*(d for d in (getattr(h.source, "run_dir", None) for h in going)
                                 if d is not None))
                self.exit(message="Stopped " + ", ".join(h.run_id for h in going))
            elif choice == "leave":
                hints = "\n".join(f"{h.run_id} goes on; follow it: {h.reattach_hint()}"
                                  for h in going)
                self.exit(message=hints)

        if not isinstance(self.screen, QuitScreen):
            self.push_screen(QuitScreen([h.run_id for h in going]), decided)


def prefill_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`kdtui launch --teacher X ...` (without --headless): open the form with those values.
    A --config that cannot be read raises kdengine.config.ConfigError (run_app says it in one
    line before the dashboard: the form would start at once without the file's values)."""
    import os

    from kdengine.config import FIELDS, ConfigError, load_config_file
    from kdtui.headless import config_file_refusal
    from kdtui.remote.hosts import LOCAL

    values: dict[str, Any] = {}
    if getattr(args, "demo", False):
        values["demo"] = True
    if getattr(args, "config", None):
        in_file = load_config_file(Path(args.config))
        refused = config_file_refusal(in_file, args, environ={})  # the form reads no KDTUI_
        if refused:
            raise ConfigError(None, refused)
        values.update(in_file)
    for f in FIELDS:
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    for key in ("host", "fallback_host", "dry_run"):
        value = getattr(args, key, None)
        if value:
            values[key] = value
    # `kdtui launch` starts at once: on the host its --help and the headless launch name
    # (--host, else KDTUI_HOST, else local), never on the form's last host unasked (a remote
    # GPU box, the day after)
    values.setdefault("host", os.environ.get("KDTUI_HOST") or LOCAL)
    return values


def resumable_ref(screen: Screen) -> str | None:
    """The run shown on `screen` when resuming applies (kdtui.launch.resume.resume_ref)."""
    from kdtui.launch.resume import resume_ref

    return resume_ref(getattr(screen, "handle", None), getattr(screen, "watched", None))


def no_terminal(command: str | None) -> str:
    """The one line a dashboard with no terminal to draw on refuses with, prefixed with its
    command (`kdtui watch: error: ...`) and naming the way to the same thing without one."""
    instead = {"launch": "`kdtui launch --headless`",
               "watch": "`kdtui watch RUN --headless`",
               "resume": "`kdtui resume RUN --headless`",
               "compare": "`kdtui compare RUN RUN... --plain`"}.get(
        command or "", "`kdtui launch --headless`, `kdtui watch RUN --headless`, "
                       "`kdtui runs --plain`")
    prog = f"kdtui {command}" if command else "kdtui"
    return (f"{prog}: error: the dashboard needs a terminal (stdout and stderr): run it in a "
            f"terminal, or use {instead}")


def run_app(args: argparse.Namespace, launcher: Any = None) -> int:
    """Open the dashboard for `kdtui` / `kdtui launch` / `kdtui watch RUN`, or on a run that
    `launcher` (an engine profile's) starts."""
    from kdengine.config import ConfigError, flag_of

    command = getattr(args, "command", None)
    prefill = None
    if command == "launch" and not launcher:
        try:
            prefill = prefill_from_args(args)
        except ConfigError as exc:  # --config's own refusal names the flag typed, as the engine
            print(f"kdtui launch: error: {flag_of(exc.field)}: {exc.message}" if exc.field else
                  f"kdtui launch: error: {exc.message}", file=sys.stderr)
            return 2
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Textual draws on stderr; either one a pipe or a file: it would draw escape codes into
        # it, forever, for no one to see
        print(no_terminal(command), file=sys.stderr)
        return 2
    app = KDApp(runs_dir=getattr(args, "runs_dir", None), theme=getattr(args, "theme", None),
                command=command, watch_ref=getattr(args, "run", None),
                prefill=prefill, launcher=launcher,
                compare_targets=getattr(args, "compare_targets", None))
    app.run()
    return app.return_code or 0
