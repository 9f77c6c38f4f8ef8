"""The launch form, what `kdtui` opens: host, fallback host, and every field of kdengine.config.

Each field's widget, label, help text and validator is generated from `kdengine.config.FIELDS`,
and an invalid value shows the very message the CLI prints (`--steps: must be ...`). Cross-field
rules come from `RunConfig.validate()` and the sources check from `kdengine.sources`, each shown
on the field it names. The last values are remembered per host in the user's config dir.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static, Switch

from kdengine.config import (
    FIELDS,
    FIELDS_BY_NAME,
    ConfigError,
    Field,
    RunConfig,
    demo_config,
    flag_of,
    groups,
)

LOCAL = "local"
LAZY_FROM_GROUP = 2  # models and data are on the first screen; the rest mounts lazily
NO_FALLBACK = ""


def ssh_config_hosts(path: Path | None = None) -> list[str]:
    """Host aliases from ~/.ssh/config (wildcard patterns and negations skipped)."""
    path = path or Path.home() / ".ssh" / "config"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    hosts: list[str] = []
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0].lower() == "host":
            for name in words[1:]:
                if not any(ch in name for ch in "*?!") and name not in hosts:
                    hosts.append(name)
    return hosts


def available_hosts() -> tuple[list[str], str]:
    """'local', the Host aliases of ~/.ssh/config (or $KDTUI_SSH_CONFIG), then the hosts of the
    kdtui hosts file (kdtui.remote.hosts), without repeats; and an error message when the hosts
    file is broken (the form still opens)."""
    import os

    env = os.environ.get("KDTUI_SSH_CONFIG")
    names = ssh_config_hosts(Path(env).expanduser() if env else None)
    problem = ""
    try:
        from kdtui.remote.hosts import load_hosts

        names += list(load_hosts())
    except ImportError:
        pass
    except ValueError as exc:  # HostsFileError: say what is wrong, keep the form usable
        problem = str(exc)
    out = [LOCAL]
    for name in names:
        if name not in out:
            out.append(name)
    return out, problem


def field_widget_id(name: str) -> str:
    return f"field-{name}"


class FieldRow(Vertical):
    """One schema field: label, input, help text, and the inline error (the CLI's message)."""

    def __init__(self, spec: Field) -> None:
        super().__init__(classes="field-row", id=f"row-{spec.name}")
        self.spec = spec
        self.error = ""

    def compose(self) -> ComposeResult:
        spec = self.spec
        with Horizontal(classes="field-line"):
            yield Label(spec.name, classes="field-label")
            yield make_input(spec)
        bounds = spec.bounds_text()
        yield Static(spec.help + (f" ({bounds})" if bounds != "a value" else ""),
                     classes="field-help")
        yield Static("", classes="field-error")

    def on_mount(self) -> None:
        screen = self.screen
        if isinstance(screen, LaunchScreen):
            screen.row_mounted(self.spec.name)

    def show_error(self, message: str) -> None:
        if message == self.error:
            return  # each update restyles the form: skip the no-ops (start-up validates all)
        self.error = message
        self.query_one(".field-error", Static).update(message)
        self.set_class(bool(message), "-invalid")


def make_input(spec: Field) -> Widget:
    wid = field_widget_id(spec.name)
    if spec.kind is bool:
        return Switch(value=bool(spec.default), id=wid, classes="field-input")
    if spec.choices:
        return Select([(c, c) for c in spec.choices], value=spec.default, allow_blank=False,
                      id=wid, classes="field-input", compact=True)
    return Input(value=_text(spec.default), placeholder=spec.bounds_text(), id=wid,
                 classes="field-input", compact=True)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def error_text(exc: ConfigError) -> str:
    """The message exactly as `kdengine train` prints it after 'error: '."""
    return f"{flag_of(exc.field)}: {exc.message}" if exc.field else exc.message


class LaunchScreen(Screen):
    """Fill in a run and start it (or dry-run it)."""

    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="launch.start", tooltip="Check and start the run"),
        Binding("f2", "demo", "Demo preset", id="launch.demo",
                tooltip="Fill the form with the first-use demo (no GPU, no network)"),
        Binding("f3", "runs", "Runs", id="launch.runs", tooltip="Past and running runs"),
    ]

    def __init__(self, prefill: dict[str, Any] | None = None, *, autostart: bool = False) -> None:
        """prefill: values to show; autostart: start as soon as the form is filled
        (`kdtui launch ...`), leaving it open with the errors inline if it is not valid."""
        super().__init__()
        self.prefill = prefill or {}
        self._autostart = autostart
        self._loading = False
        self._pending: dict[str, Any] = {}  # values for rows not mounted yet (Lazy)

    def compose(self) -> ComposeResult:
        hosts, self.hosts_problem = available_hosts()
        self.hosts = hosts
        yield Header()
        with VerticalScroll(id="form"):
            yield Static("Fill in a run, or press F2 for the demo preset, then ctrl+r to start.",
                         id="form-intro")
            yield Label("where", classes="group-title")
            with Vertical(classes="field-row", id="row-host"):
                with Horizontal(classes="field-line"):
                    yield Label("host", classes="field-label")
                    yield Select([(h, h) for h in hosts], value=LOCAL, allow_blank=False,
                                 id="host", classes="field-input", compact=True)
                yield Static("'local' runs the embedded engine on this machine; other hosts "
                             "come from ~/.ssh/config and the kdtui hosts file",
                             classes="field-help")
                yield Static("", classes="field-error")
            with Vertical(classes="field-row", id="row-fallback_host"):
                with Horizontal(classes="field-line"):
                    yield Label("fallback_host", classes="field-label")
                    yield Select([("none", NO_FALLBACK)] + [(h, h) for h in hosts if h != LOCAL],
                                 value=NO_FALLBACK, allow_blank=False, id="fallback_host",
                                 classes="field-input", compact=True)
                yield Static("Host to use when the primary fails its preflight",
                             classes="field-help")
                yield Static("", classes="field-error")
            with Vertical(classes="field-row", id="row-dry_run"):
                with Horizontal(classes="field-line"):
                    yield Label("dry_run", classes="field-label")
                    yield Switch(value=False, id="dry_run", classes="field-input")
                yield Static("Show the whole plan and every command; start and write nothing",
                             classes="field-help")
            for i, (group, specs) in enumerate(groups().items()):
                # groups below the fold mount just after the first frame (Lazy): the form
                # shows sooner; their values wait in self._pending until their rows mount
                with Lazy(Vertical(classes="field-group")) if i >= LAZY_FROM_GROUP else \
                        Vertical(classes="field-group"):
                    yield Label(group, classes="group-title")
                    for spec in specs:
                        yield FieldRow(spec)
        with Horizontal(id="form-buttons"):
            yield Button("Start (ctrl+r)", variant="success", id="start")
            yield Button("Demo preset (F2)", variant="primary", id="demo")
            yield Button("Runs (F3)", id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "launch a run"
        if self.hosts_problem:
            self.notify(self.hosts_problem, title="hosts file", severity="error", timeout=10)
        settings = self.app.settings  # type: ignore[attr-defined]
        host = self.prefill.get("host") or settings.last_host
        if host not in self.hosts:
            if self.prefill.get("host"):
                self.notify(f"host {host!r} is not in ~/.ssh/config or the kdtui hosts file",
                            severity="error")
            host = LOCAL
        self._set_host(host)
        self._load_values(settings.values_for(host))
        values = {k: v for k, v in self.prefill.items() if k != "host"}
        if values.pop("demo", False):
            self.action_demo()
        self._load_values(values)
        # focus after the first frame: a focus change restyles the whole form
        self.call_after_refresh(self.query_one("#field-teacher", Input).focus)
        self._maybe_autostart()

    # -- values in and out ------------------------------------------------------------------
    def _set_host(self, host: str) -> None:
        self._loading = True
        self.query_one("#host", Select).value = host
        self._loading = False

    @property
    def form_ready(self) -> bool:
        """Every field's row is mounted (the lazy groups arrive just after the first frame)."""
        return len(self.query(FieldRow)) == len(FIELDS)

    def row_mounted(self, name: str) -> None:
        if name in self._pending:
            self._apply_value(name, self._pending.pop(name))
        self._validate_quietly(name)
        self._maybe_autostart()

    def _maybe_autostart(self) -> None:
        if self._autostart and self.form_ready and self.is_mounted:
            self._autostart = False
            self.call_after_refresh(self.action_start)

    def _load_values(self, values: dict[str, Any]) -> None:
        """Put remembered or preset values into the widgets (text as typed), then validate."""
        for key, value in values.items():
            if key == "dry_run":
                self.query_one("#dry_run", Switch).value = bool(value)
            elif key == "fallback_host":
                select = self.query_one("#fallback_host", Select)
                select.value = value if value in self.hosts and value != LOCAL else NO_FALLBACK
            elif key in FIELDS_BY_NAME:
                if self.query(f"#row-{key}"):
                    self._apply_value(key, value)
                    self._validate_quietly(key)
                else:
                    self._pending[key] = value

    def _apply_value(self, key: str, value: Any) -> None:
        spec = FIELDS_BY_NAME[key]
        widget = self.query_one(f"#{field_widget_id(key)}")
        if isinstance(widget, Switch):
            try:
                widget.value = bool(spec.parse(value))
            except ConfigError:
                pass
        elif isinstance(widget, Select):
            if value in (spec.choices or ()):
                widget.value = value
        elif isinstance(widget, Input):
            widget.value = _text(value)

    def _validate_quietly(self, name: str) -> None:
        try:
            self.validate_field(name)
        except ConfigError:
            pass

    def raw_values(self) -> dict[str, Any]:
        """Every field's widget value as the user left it (text for text inputs)."""
        out: dict[str, Any] = {}
        for spec in FIELDS:
            if spec.name in self._pending:
                out[spec.name] = self._pending[spec.name]
                continue
            widget = self.query_one(f"#{field_widget_id(spec.name)}")
            out[spec.name] = widget.value  # type: ignore[attr-defined]
        return out

    def validate_field(self, name: str) -> Any:
        """Parse one field with the schema; show its error inline. Returns the value or raises."""
        spec = next(f for f in FIELDS if f.name == name)
        widget = self.query_one(f"#{field_widget_id(name)}")
        row = self.query_one(f"#row-{name}", FieldRow)
        try:
            value = spec.parse(widget.value)  # type: ignore[attr-defined]
        except ConfigError as exc:
            row.show_error(error_text(exc))
            raise
        row.show_error("")
        return value

    def field_error(self, name: str) -> str:
        return self.query_one(f"#row-{name}", FieldRow).error

    # -- events -----------------------------------------------------------------------------
    @on(Input.Changed, ".field-input")
    def _input_changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("field-")
        try:
            self.validate_field(name)
        except ConfigError:
            pass

    @on(Select.Changed, "#host")
    def _host_changed(self, event: Select.Changed) -> None:
        if self._loading:
            return
        remembered = self.app.settings.values_for(str(event.value))  # type: ignore[attr-defined]
        if remembered:
            self._load_values(remembered)
            self.notify(f"last values used on {event.value}", timeout=2)

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#demo")
    def _demo_pressed(self) -> None:
        self.action_demo()

    @on(Button.Pressed, "#runs")
    def _runs_pressed(self) -> None:
        self.action_runs()

    # -- actions ----------------------------------------------------------------------------
    def action_demo(self) -> None:
        values = demo_config().to_dict()
        self._load_values(values)
        self.notify("Demo preset: a tiny teacher trained once on this machine, distilled on "
                    "the Python stdlib; ctrl+r to start", timeout=4)

    def action_runs(self) -> None:
        from kdtui.screens.runs import RunsScreen

        self.app.push_screen(RunsScreen())

    def collect_config(self) -> RunConfig | None:
        """The form as a checked RunConfig, or None after showing every error inline."""
        values: dict[str, Any] = {}
        first_bad: str | None = None
        for spec in FIELDS:
            try:
                values[spec.name] = self.validate_field(spec.name)
            except ConfigError:
                first_bad = first_bad or spec.name
        if first_bad is not None:
            self._focus_field(first_bad)
            self.notify(f"Fix {self.field_error(first_bad)}", title="Invalid run",
                        severity="error")
            return None
        try:
            return RunConfig.from_mapping(values).validate()
        except ConfigError as exc:
            self._show_config_error(exc)
            return None

    def _show_config_error(self, exc: ConfigError) -> None:
        message = error_text(exc)
        if exc.field and self.query(f"#row-{exc.field}"):
            self.query_one(f"#row-{exc.field}", FieldRow).show_error(message)
            self._focus_field(exc.field)
        self.notify(message, title="Invalid run", severity="error")

    def _focus_field(self, name: str) -> None:
        widget = self.query_one(f"#{field_widget_id(name)}")
        widget.focus()
        self.query_one("#form", VerticalScroll).scroll_to_widget(widget, animate=False)

    def action_start(self) -> None:
        if not self.form_ready:
            self.notify("The form is still loading", timeout=2)
            return
        config = self.collect_config()
        if config is None:
            return
        host = str(self.query_one("#host", Select).value)
        fallback = str(self.query_one("#fallback_host", Select).value or "")
        dry_run = self.query_one("#dry_run", Switch).value
        raw = self.raw_values()
        self.app.settings.remember(host, {**raw, "fallback_host": fallback,  # type: ignore
                                          "dry_run": dry_run})
        self._start(config, host, fallback, dry_run)

    @work(exclusive=True, group="start")
    async def _start(self, config: RunConfig, host: str, fallback: str, dry_run: bool) -> None:
        from kdtui.screens.run import RunScreen

        runs_dir = self.app.runs_dir  # type: ignore[attr-defined]
        if host == LOCAL:
            from kdtui.launch.local import LocalLauncher

            launcher = LocalLauncher(config, runs_dir)
            try:
                # the `kdengine train --check` semantics, here, so errors land on their field
                await asyncio.to_thread(launcher.check)
            except ConfigError as exc:
                self._show_config_error(exc)
                return
            if dry_run:
                from kdtui.screens.dialogs import PlanScreen

                self.app.push_screen(PlanScreen(launcher.plan()))
                return
            self.app.push_screen(RunScreen(launcher=launcher,
                                           title=f"{launcher.config.run_name} on local"))
            return
        try:
            # building the engine wheel for the host can take seconds: off the UI thread
            launcher = await asyncio.to_thread(remote_launcher, config, host, fallback)
        except Exception as exc:  # a bad hosts entry, no wheel: say so, keep the form
            self.notify(str(exc), title=f"Cannot launch on {host}", severity="error",
                        timeout=10)
            return
        if dry_run:
            from kdtui.screens.dialogs import PlanScreen

            self.app.push_screen(PlanScreen([str(line) for line in launcher.dry_run()]))
            return
        self.app.push_screen(RunScreen(launcher=launcher,
                                       title=f"{launcher.run_id} on {host}"))


def remote_launcher(config: RunConfig, host: str, fallback: str) -> Any:
    """The SSH launcher for `host` (and the fallback); imported here, on first use, so the
    form opens without loading asyncssh."""
    from kdtui.launch.remote import RemoteLauncher

    return RemoteLauncher(config, host, fallback or None)
