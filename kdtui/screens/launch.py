"""The launch form, what `kdtui` opens: the engine (profile), host, and that engine's fields.

kdengine's fields (widget, label, help text, validator) are generated from
`kdengine.config.FIELDS`; apr distill's from its schema (`kdtui.profiles.apr.schema.form_fields`).
An invalid value shows the engine's own message, worded for the form: the field by its label
and what to do here (`steps: must be ...`, `teacher: is required: ... or press F2`), where the
CLI names flags.
Cross-field rules come from `RunConfig.validate()`, the sources check from `kdengine.sources`, and
apr's plan (`AprLauncher`), each shown on the field it names. Each profile keeps its own values
while the user switches between them. The last values are remembered per host in the user's
config dir, with the profile last started there; a run's own identity (run_name, run_dir) is
not: the next start gets a fresh run.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Input, Label, Select, Static, Switch
from textual.widgets.input import Selection

from kdengine.config import (
    FIELDS,
    FIELDS_BY_NAME,
    PATH_FIELDS,
    RENAMED,
    ConfigError,
    Field,
    RunConfig,
    demo_config,
    flag_of,
    groups,
)
from kdtui.profiles.apr.schema import (
    NOT_APPLIED,
    AprFormField,
    AprSettings,
    form_fields,
)
from kdtui.widgets.header import TitleHeader

LOCAL = "local"
LAZY_FROM_GROUP = 2  # models and data are on the first screen; the rest mounts lazily
NO_FALLBACK = ""
NO_HOST = ""  # the apr profile's host before one is picked

KDENGINE, APR = "kdengine", "apr"  # kdtui.profiles.PROFILES
PROFILE_LABELS = {KDENGINE: "kdengine", APR: "apr distill"}
ID_PREFIX = {KDENGINE: "", APR: "apr-"}  # kdengine keeps the ids it always had (field-steps)
APR_FIELDS: tuple[AprFormField, ...] = form_fields()
APR_FIELDS_BY_NAME = {f.name: f for f in APR_FIELDS}

PROFILE_HELP = ("kdengine: the embedded PyTorch engine, here or over SSH; apr distill: "
                "aprender's Rust engine on an SSH GPU host")
HOST_HELP = {
    KDENGINE: "'local' runs the embedded engine on this machine; other hosts come from "
              "~/.ssh/config and the kdtui hosts file",
    APR: "apr distill runs on an SSH host only; 'local' cannot run it: the apr profile "
         "builds apr with cargo and runs `--backend cuda` on a GPU box over SSH (apr's CPU "
         "backend, fixture, is a stub with no learning signal). Hosts come from ~/.ssh/config "
         "and the kdtui hosts file (a GPU in this machine: add a Host for localhost there)",
}
APR_HOST_MISSING = ("host: the apr profile runs apr distill on an SSH host: pick one "
                    "(from ~/.ssh/config or the kdtui hosts file)")
# a run's identity: never remembered for the next start, cleared once a run has started
RUN_IDENTITY = ("run_name", "run_dir")
# what to type into a required field that is empty (the engine's CLI says --teacher/--demo)
REQUIRED_HINT = {"teacher": "type a model folder or hub id", "student": "type a model folder "
                 "or hub id", "data": "type a data file or folder"}
# what an empty text field means, as its placeholder (short: it fits the field at 80 columns);
# a field with a default shows its bounds instead, and `a value` (no bounds) is no hint at all
EMPTY_MEANS = {
    KDENGINE: {"teacher": "a model folder or hub id (org/name)",
               "student": "a model folder or hub id (org/name)",
               "data": "a data file or folder, or a dataset id",
               "teacher_cache": "none: the teacher runs live",
               "data_fields": "none: columns detected by name",
               "stop": "none: the tokenizer's EOS only",
               "run_name": "empty: kd-<UTC time>",
               "run_dir": "empty: <runs dir>/<run_name>"},
    APR: {"teacher": "a .apr file on the host, or a ref",
          "student": "a .apr file on the host, or a ref",
          "run_name": "empty: kd-<UTC time>",
          "run_dir": "empty: WORK_DIR/runs/<run_name>",
          "apr_bin": "empty: the one built, else PATH's"},
}
PLACEHOLDER_MAX = 40  # the field's width at 80 columns less a margin
START_LABEL = "Start (ctrl+r)"  # the Start button's label when no start is under way
APR_NOT_IN_FORM = ("Not in this form: " + ", ".join(NOT_APPLIED) + ". apr distill has no flag "
                   "for them; the dry run and dispatch.json list them as NOT applied.")


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


def field_widget_id(name: str, profile: str = KDENGINE) -> str:
    return f"{ID_PREFIX[profile]}field-{name}"


def row_id(name: str, profile: str = KDENGINE) -> str:
    return f"{ID_PREFIX[profile]}row-{name}"


def split_widget_id(widget_id: str) -> tuple[str, str] | None:
    """'apr-field-steps' -> ('apr', 'steps'); None for an id that is no field's."""
    for profile in (APR, KDENGINE):  # apr's prefix first: it is the longer one
        prefix = field_widget_id("", profile)
        if widget_id.startswith(prefix):
            return profile, widget_id[len(prefix):]
    return None


FormSpec = Field | AprFormField  # the same shape: name, kind, default, help, choices, parse


class FieldRow(Vertical):
    """One schema field: label, input, help text, and the inline error (the CLI's message)."""

    def __init__(self, spec: FormSpec, profile: str = KDENGINE) -> None:
        super().__init__(classes="field-row", id=row_id(spec.name, profile))
        self.spec = spec
        self.profile = profile
        self.error = ""

    def compose(self) -> ComposeResult:
        spec = self.spec
        with Horizontal(classes="field-line"):
            yield Label(spec.name, classes="field-label")
            yield make_input(spec, self.profile)
        bounds = spec.bounds_text()
        yield Static(spec.help + (f" ({bounds})" if bounds != "a value" else ""),
                     classes="field-help")
        yield Static("", classes="field-error")

    def on_mount(self) -> None:
        screen = self.screen
        if isinstance(screen, LaunchScreen):
            screen.row_mounted(self.spec.name, self.profile)

    def show_error(self, message: str) -> None:
        if message == self.error:
            return  # each update restyles the form: skip the no-ops (start-up validates all)
        self.error = message
        line = self.query_one(".field-error", Static)
        line.update(message)
        self.set_class(bool(message), "-invalid")
        screen = self.screen if self.is_attached else None
        if not message and isinstance(screen, LaunchScreen):
            screen.row_mended()
        if message and self.has_focus_within:
            # the field being typed in: its error is under its help, rows below it; on the
            # form's last rows (80x24) it was under the buttons, and nothing said what was wrong
            self.call_after_refresh(line.scroll_visible, animate=False)


def make_input(spec: FormSpec, profile: str = KDENGINE) -> Widget:
    wid = field_widget_id(spec.name, profile)
    if spec.kind is bool:
        return Switch(value=bool(spec.default), id=wid, classes="field-input")
    if spec.choices:
        return Select([(c, c) for c in spec.choices], value=spec.default, allow_blank=False,
                      id=wid, classes="field-input", compact=True)
    return FieldInput(value=_text(spec.default), placeholder=placeholder(spec, profile), id=wid,
                      classes="field-input", compact=True)


def placeholder(spec: FormSpec, profile: str = KDENGINE) -> str:
    """What an empty text field shows: what empty means, else the bounds when they fit."""
    means = EMPTY_MEANS[profile].get(spec.name)
    if means:
        return means
    bounds = spec.bounds_text()
    return bounds if bounds not in ("a value", "text") and len(bounds) <= PLACEHOLDER_MAX else ""


class FieldInput(Input):
    """A text field that selects its text on focus only when the user moved focus there (Tab,
    a click): when the form focuses it (first field, a field to fix) the cursor goes to the end,
    so the first key typed adds to the text instead of replacing it."""

    _quiet_focus = False

    def focus_quietly(self) -> None:
        if self.has_focus:
            # no Focus event comes: a flag set here stayed set, and the user's next Tab into
            # this field left its text unselected (a refused Start on the field being typed in)
            self.cursor_to_end()
            return
        self._quiet_focus = True
        self.focus()

    def _on_focus(self, event: Any) -> None:
        # runs before Input's own handler (the one that selects): undo its selection after it
        if self._quiet_focus:
            self._quiet_focus = False
            self.call_later(self.cursor_to_end)

    def cursor_to_end(self) -> None:
        self.selection = Selection.cursor(len(self.value))


def bottom_in(widget: Widget, container: Widget) -> int:
    """The row below `widget` (its margin included) in `container`'s scrolled content."""
    region = widget.virtual_region_with_margin
    node = widget.parent
    while isinstance(node, Widget) and node is not container:
        gutter = node.styles.gutter
        region = region.translate(node.virtual_region.offset).translate((gutter.left,
                                                                          gutter.top))
        node = node.parent
    return region.bottom


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def focus_quietly(widget: Widget) -> None:
    """Focus a field for the user without selecting its text (FieldInput), others plainly."""
    if isinstance(widget, FieldInput):
        widget.focus_quietly()
    else:
        widget.focus()


def forget_identity(values: dict[str, Any]) -> dict[str, Any]:
    """The values without the run's identity (RUN_IDENTITY): remembering run_dir made the next
    start collide with the run just started."""
    return {k: v for k, v in values.items() if k not in RUN_IDENTITY}


def error_text(exc: ConfigError) -> str:
    """The message exactly as `kdengine train` prints it after 'error: ' (flags)."""
    return f"{flag_of(exc.field)}: {exc.message}" if exc.field else exc.message


_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_FLAG_TO_LABEL = {f.flag: f.name for f in FIELDS}


def _form_words(message: str) -> str:
    """A CLI message's flags as the form's field labels (`--run-name` -> `run_name`)."""
    return _FLAG.sub(lambda m: _FLAG_TO_LABEL.get(m.group(0), m.group(0)), message)


def form_error_text(exc: ConfigError, profile: str = KDENGINE) -> str:
    """The engine's message for a field the user typed into: named by the field's label (as the
    form shows it), with flags in the message turned into labels, and, for an empty required
    field, what to do in the form (the CLI says `give --teacher or use --demo`)."""
    message = _form_words(exc.message)
    if not exc.field:
        return message
    if exc.message.startswith("is required") and exc.field in REQUIRED_HINT:
        demo = ", or press F2 for the demo preset" if profile == KDENGINE else ""
        message = f"is required: {REQUIRED_HINT[exc.field]}{demo}"
    return f"{exc.field}: {message}"


def profile_error_text(profile: str, exc: ConfigError) -> str:
    """The message shown in the form (both profiles name fields by their labels)."""
    return form_error_text(exc, profile)


def absolute_local_paths(values: dict[str, Any]) -> dict[str, Any]:
    """The values to remember for a local start, with each model or data path that exists here
    (kdengine.config.PATH_FIELDS) written absolute, as the engine runs it: remembered as typed
    (`models/teacher`, from `kdtui launch --config run.toml` in the project), the next `kdtui`
    from another directory opened on a path that named nothing there, or another model. Hub ids,
    demo:// and paths missing here stay as typed."""
    import os

    out = dict(values)
    for name in PATH_FIELDS:
        value = out.get(name)
        if not isinstance(value, str) or not value or value.startswith("demo://"):
            continue
        path = Path(value).expanduser()
        if os.path.lexists(path):
            out[name] = os.path.abspath(path)
    return out


def fresh_run_name(runs_dir: Path) -> str:
    """The engine's default name (kd-<UTC time>), made unique in runs_dir: two starts in the
    same second must not share a run directory."""
    base = time.strftime("kd-%Y%m%d-%H%M%S", time.gmtime())
    name, n = base, 1
    while (Path(runs_dir) / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def profile_specs(profile: str) -> tuple[FormSpec, ...]:
    return APR_FIELDS if profile == APR else FIELDS


def profile_spec(profile: str, name: str) -> FormSpec:
    return APR_FIELDS_BY_NAME[name] if profile == APR else FIELDS_BY_NAME[name]


DEMO_PRESET_NOTE = "Demo preset"  # F2's toast starts so (a refusal takes it down)
LAST_VALUES_NOTE = "last values used on"  # a host pick's toast starts so

# Textual's own focus keys, made priority (TabFirstScreen; the cache dialog's too)
TAB_FIRST_BINDINGS = [
    Binding("tab", "app.focus_next", "", show=False, priority=True, id="form.next_field"),
    Binding("shift+tab", "app.focus_previous", "", show=False, priority=True,
            id="form.previous_field"),
]


class TabFirstScreen(Screen):
    """A screen of fields typed into: Tab and shift+tab move the focus before the keys typed
    after them reach a field. A plain Tab went to the focused field first and moved the focus
    only after the keys behind it had gone there too ("8<Tab>64" typed fast, or on a machine
    busy with a run, put "864" in batch_size). Textual's own focus keys, made priority: no
    description, so the help and the palette list them no more than before."""

    BINDINGS = TAB_FIRST_BINDINGS


class LaunchScreen(TabFirstScreen):
    """Fill in a run and start it (or dry-run it)."""

    DEFAULT_CSS = """
    /* where the keys go: Textual's compact fields mark their focus with a 5% tint only (none
       to see on kdtui-high-contrast) and a Select or Switch has no cursor: the label says it */
    LaunchScreen .field-row:focus-within > .field-line > .field-label {
        color: $text-accent; background: $accent-muted;
    }
    /* a rule on the row itself: Textual restyles, on a focus change, the focused widget's
       ancestors with a :focus-within rule and their children, not a label beside it */
    LaunchScreen .field-row:focus-within { background: transparent; }
    /* what an empty field means ('none: the teacher runs live'): $text-disabled, Textual's,
       was 2.7:1 on kdtui-light and 3.3:1 on high contrast */
    LaunchScreen .field-input > .input--placeholder { color: $text-muted; text-style: italic; }
    /* an ANSI theme (the terminal's own colours): $text-accent on $accent-muted were one colour,
       the label vanished; black on white, as Textual's own Input cursor there. Its placeholders
       stay dim. */
    LaunchScreen .field-row:focus-within > .field-line > .field-label:ansi {
        color: ansi_black; background: ansi_white;
    }
    LaunchScreen .field-input:ansi > .input--placeholder { text-style: dim italic; }
    """

    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="launch.start", tooltip="Check and start the run"),
        Binding("f2", "demo", "Demo preset", id="launch.demo",
                tooltip="Fill the form with the first-use demo (no GPU, no network)"),
        Binding("f3", "runs", "Runs", id="launch.runs", tooltip="Past and running runs"),
        # off the footer (80 columns): F1 and the palette list it
        Binding("f4", "cache_teacher", "Cache the teacher", show=False,
                id="launch.cache_teacher", tooltip="Score the data with this teacher once, for "
                "teacher_cache: a run then loads no teacher (asks K)"),
    ]

    def __init__(self, prefill: dict[str, Any] | None = None, *, autostart: bool = False) -> None:
        """prefill: values to show; autostart: start as soon as the form is filled
        (`kdtui launch ...`), leaving it open with the errors inline if it is not valid."""
        super().__init__()
        self.prefill = prefill or {}
        self._autostart = autostart
        self.profile = KDENGINE
        # values for rows not mounted yet: kdengine's lazy groups, apr's form before first shown
        self._pending: dict[str, Any] = {}
        self._apr_pending: dict[str, Any] = {}
        self._apr_mounted = False
        self._host_of = {KDENGINE: LOCAL, APR: NO_HOST}  # each profile keeps its own host
        self._row_errors: dict[str, str] = {}  # rows that are not FieldRows (host)
        self._refused_rows: set[str] = set()  # the rows the "Invalid run" toast is about
        self._starting = ""  # what a start under way is doing (the check), else ""

    def compose(self) -> ComposeResult:
        hosts, self.hosts_problem = available_hosts()
        self.hosts = hosts
        yield TitleHeader()
        # not a Tab stop of its own (nothing showed the focus there); keys the focused field does
        # not take (PgUp, PgDn) still scroll it
        with VerticalScroll(id="form", can_focus=False):
            yield Static("Fill in a run, or press F2 for the demo preset, then ctrl+r to start.",
                         id="form-intro")
            yield Label("engine and host", classes="group-title")
            with Vertical(classes="field-row", id="row-profile"):
                with Horizontal(classes="field-line"):
                    yield Label("profile", classes="field-label")
                    yield Select([(label, name) for name, label in PROFILE_LABELS.items()],
                                 value=KDENGINE, allow_blank=False, id="profile",
                                 classes="field-input", compact=True)
                yield Static(PROFILE_HELP, classes="field-help")
            with Vertical(classes="field-row", id="row-host"):
                with Horizontal(classes="field-line"):
                    yield Label("host", classes="field-label")
                    yield Select(self._host_options(KDENGINE), value=LOCAL, allow_blank=False,
                                 id="host", classes="field-input", compact=True)
                yield Static(HOST_HELP[KDENGINE], classes="field-help", id="host-help")
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
            with Vertical(id="kdengine-form", classes="profile-form"):
                for i, (group, specs) in enumerate(groups().items()):
                    # groups below the fold mount just after the first frame (Lazy): the form
                    # shows sooner; their values wait in self._pending until their rows mount
                    with Lazy(Vertical(classes="field-group")) if i >= LAZY_FROM_GROUP else \
                            Vertical(classes="field-group"):
                        yield Label(group, classes="group-title")
                        for spec in specs:
                            yield FieldRow(spec)
            # apr's rows mount the first time apr is picked (_mount_apr_form): most users never
            # pick it, and the form's first frame stays as fast as it was
            yield Vertical(id="apr-form", classes="profile-form")
        with Horizontal(id="form-buttons"):
            yield Button(START_LABEL, variant="success", id="start", compact=True)
            yield Button("Demo preset (F2)", variant="primary", id="demo", compact=True)
            yield Button("Runs (F3)", id="runs", compact=True)
        yield Footer()

    def _host_options(self, profile: str) -> list[tuple[str, str]]:
        """kdengine: every host, 'local' first; apr: the SSH hosts only (apr needs one)."""
        if profile == KDENGINE:
            return [(h, h) for h in self.hosts]
        remote = [h for h in self.hosts if h != LOCAL]
        none = "none: pick an SSH host" if remote else \
            "none: no SSH host known (add one to ~/.ssh/config or the kdtui hosts file)"
        return [(none, NO_HOST)] + [(h, h) for h in remote]

    def on_mount(self) -> None:
        if self.hosts_problem:
            self.notify(self.hosts_problem, title="hosts file", severity="error", timeout=10)
        settings = self.app.settings  # type: ignore[attr-defined]
        host = self.prefill.get("host") or settings.last_host
        unknown = ""
        if host not in self.hosts:
            if self.prefill.get("host"):
                unknown = (f"host {host!r} is not in ~/.ssh/config or the kdtui hosts file: "
                           "add it there, or pick a host here; nothing was started")
                self.notify(unknown, severity="error", markup=False)
                # `kdtui launch --host nosuch` started on local, for want of the host
                self._autostart = False
            host = LOCAL
        self._set_host(host)
        self.watch(self.query_one("#host", Select), "value", self._host_in_title)
        if unknown:
            self._show_row_error("row-host", unknown)
        self._host_of[KDENGINE] = host
        remembered = forget_identity(settings.values_for(host))
        self._load_values(remembered)
        apr_values = remembered.get(APR)
        if isinstance(apr_values, dict):
            self._load_apr_values(forget_identity(apr_values))
        self._host_of[APR] = host if host != LOCAL else NO_HOST
        values = {k: v for k, v in self.prefill.items() if k != "host"}
        if values.pop("demo", False):
            self.action_demo()
        self._load_values(values)
        # `kdtui launch` flags are kdengine's (the apr CLI never opens the form); otherwise the
        # form opens on the profile last started on this host
        if not self.prefill and not self._autostart and remembered.get("profile") == APR:
            self.select_profile(APR)
        # focus after the first frame: a focus change restyles the whole form
        self.call_after_refresh(self._focus_first_field)
        self._maybe_autostart()

    def _focus_first_field(self) -> None:
        if self.host_error():  # `kdtui launch --host nosuch`: the pick its error asks for
            self.query_one("#host", Select).focus()
            self.call_after_refresh(self.query_one("#form", VerticalScroll).scroll_to_widget,
                                    self.query_one("#row-host"), animate=False)
            return
        found = self.query(f"#{field_widget_id('teacher', self.profile)}")
        if found:
            field = found.first()
            focus_quietly(field)
            group = next((a for a in field.ancestors if a.has_class("field-group")), None)
            if group is not None:
                self.call_after_refresh(self._open_form_at, group)

    def _open_form_at(self, group: Widget) -> None:
        """The form's top (the host picker README says to pick) where the rows above `group`
        and `group` fit together; else `group`'s title at the top: 'models' above teacher,
        student and data (on 24 rows the focus alone scrolled to the teacher and cut the form
        mid-help), the host named in the title."""
        form = self.query_one("#form", VerticalScroll)
        if bottom_in(group, form) <= form.scrollable_content_region.height:
            form.scroll_home(animate=False)
        else:
            form.scroll_to_widget(group, animate=False, top=True)

    def _host_in_title(self, host: Any) -> None:
        """Where the run goes, in the header: on 24 rows the host row is above the fold."""
        self.sub_title = "launch a run · " + (
            f"host {host}" if host not in (NO_HOST, Select.BLANK) else "no host picked")

    # -- the profile ------------------------------------------------------------------------
    def select_profile(self, profile: str) -> None:
        """Show `profile`'s form (as picking it in the engine select does)."""
        select = self.query_one("#profile", Select)
        if select.value != profile:
            with self.prevent(Select.Changed):
                select.value = profile
        self._apply_profile(profile)

    @on(Select.Changed, "#profile")
    def _profile_changed(self, event: Select.Changed) -> None:
        if event.value != event.select.value:
            return  # stale: the select's own mount posts its first value after on_mount
        self._apply_profile(str(event.value))

    def _apply_profile(self, profile: str) -> None:
        host_select = self.query_one("#host", Select)
        if profile == self.profile and (profile == KDENGINE or self._apr_mounted):
            return
        self._host_of[self.profile] = str(host_select.value)
        self.profile = profile
        if profile == APR:
            self._mount_apr_form()
        self.query_one("#kdengine-form").display = profile == KDENGINE
        self.query_one("#apr-form").display = profile == APR
        self.query_one("#row-fallback_host").display = profile == KDENGINE  # apr has none
        self.query_one("#host-help", Static).update(HOST_HELP[profile])
        self._show_row_error("row-host", "")
        host = self._host_of[profile]
        options = self._host_options(profile)
        if host not in {value for _, value in options}:
            host = options[0][1]
        with self.prevent(Select.Changed):  # a profile switch is not a host pick
            host_select.set_options(options)
            host_select.value = host

    def _mount_apr_form(self) -> None:
        if self._apr_mounted:
            return
        self._apr_mounted = True
        parts: list[Widget] = [Static(APR_NOT_IN_FORM, classes="form-note")]
        for group, specs in groups(APR_FIELDS).items():  # type: ignore[arg-type]
            parts.append(Vertical(Label(group, classes="group-title"),
                                  *(FieldRow(spec, APR) for spec in specs),
                                  classes="field-group"))
        self.query_one("#apr-form", Vertical).mount_all(parts)

    # -- values in and out ------------------------------------------------------------------
    def _set_host(self, host: str) -> None:
        select = self.query_one("#host", Select)
        with self.prevent(Select.Changed):  # setting it is not the user picking it
            select.value = host

    def profile_ready(self, profile: str) -> bool:
        """Every field's row of `profile` is mounted."""
        if profile == APR and not self._apr_mounted:
            return False
        mounted = sum(1 for row in self.query(FieldRow) if row.profile == profile)
        return mounted == len(profile_specs(profile))

    @property
    def form_ready(self) -> bool:
        """Every kdengine field's row is mounted (the lazy groups arrive just after the first
        frame)."""
        return self.profile_ready(KDENGINE)

    def row_mounted(self, name: str, profile: str = KDENGINE) -> None:
        pending = self._apr_pending if profile == APR else self._pending
        if name in pending:
            self._apply_value(name, pending.pop(name), profile)
        self._validate_quietly(name, profile)
        self._maybe_autostart()

    def _maybe_autostart(self) -> None:
        if self._autostart and self.form_ready and self.is_mounted:
            self._autostart = False
            self.call_after_refresh(self.action_start)

    def _load_values(self, values: dict[str, Any]) -> None:
        """Put remembered or preset kdengine values into the widgets (text as typed), then
        validate. A field remembered under its old name (kdengine.config.RENAMED) keeps its
        value under the new one."""
        for key, value in values.items():
            key = RENAMED.get(key, key)
            if key == "dry_run":
                self.query_one("#dry_run", Switch).value = bool(value)
            elif key == "fallback_host":
                select = self.query_one("#fallback_host", Select)
                select.value = value if value in self.hosts and value != LOCAL else NO_FALLBACK
            elif key in FIELDS_BY_NAME:
                if self.query(f"#{row_id(key)}"):
                    self._apply_value(key, value)
                    self._validate_quietly(key)
                else:
                    self._pending[key] = value

    def _load_apr_values(self, values: dict[str, Any]) -> None:
        """The same for apr's form (its rows may not be mounted yet)."""
        for key, value in values.items():
            if key not in APR_FIELDS_BY_NAME:
                continue
            if self.query(f"#{row_id(key, APR)}"):
                self._apply_value(key, value, APR)
                self._validate_quietly(key, APR)
            else:
                self._apr_pending[key] = value

    def _apply_value(self, key: str, value: Any, profile: str = KDENGINE) -> None:
        spec = profile_spec(profile, key)
        widget = self.query_one(f"#{field_widget_id(key, profile)}")
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
            # a selection made before (the focus selected the old text) would eat the first key
            widget.cursor_position = len(widget.value)

    def _validate_quietly(self, name: str, profile: str = KDENGINE) -> None:
        try:
            self.validate_field(name, profile)
        except ConfigError:
            pass

    def raw_values(self, profile: str = KDENGINE) -> dict[str, Any]:
        """Every field's widget value as the user left it (text for text inputs)."""
        pending = self._apr_pending if profile == APR else self._pending
        out: dict[str, Any] = {}
        for spec in profile_specs(profile):
            if spec.name in pending:
                out[spec.name] = pending[spec.name]
                continue
            found = self.query(f"#{field_widget_id(spec.name, profile)}")
            if found:  # apr's rows exist only once apr has been picked
                out[spec.name] = found.first().value  # type: ignore[attr-defined]
        return out

    def validate_field(self, name: str, profile: str = KDENGINE) -> Any:
        """Parse one field with the profile's schema; show its error inline. Returns the value
        or raises."""
        spec = profile_spec(profile, name)
        widget = self.query_one(f"#{field_widget_id(name, profile)}")
        row = self.query_one(f"#{row_id(name, profile)}", FieldRow)
        try:
            value = spec.parse(widget.value)  # type: ignore[attr-defined]
        except ConfigError as exc:
            row.show_error(profile_error_text(profile, exc))
            raise
        row.show_error("")
        return value

    def field_error(self, name: str, profile: str = KDENGINE) -> str:
        return self.query_one(f"#{row_id(name, profile)}", FieldRow).error

    def host_error(self) -> str:
        return self._row_errors.get("row-host", "")

    def _show_row_error(self, row: str, message: str) -> None:
        self._row_errors[row] = message
        widget = self.query_one(f"#{row}")
        line = widget.query_one(".field-error", Static)
        line.update(message)
        widget.set_class(bool(message), "-invalid")
        if message:  # the error under the host's long help: at 80x24 it was out of sight
            self.call_after_refresh(widget.scroll_visible, animate=False)
        else:
            self.row_mended()

    def _row_has_error(self, row: str) -> bool:
        if row in self._row_errors:
            return bool(self._row_errors[row])
        found = self.query(f"#{row}")
        return bool(found) and bool(getattr(found.first(), "error", ""))

    def row_mended(self) -> None:
        """A row's error went: once every row the "Invalid run" toast named is mended, the
        toast goes too ('2 fields to fix' stayed over a form with none left to fix)."""
        if self._refused_rows and not any(self._row_has_error(r) for r in self._refused_rows):
            self._refused_rows = set()
            self._drop_form_toasts(refusals_only=True)

    def _drop_form_toasts(self, *, refusals_only: bool = False) -> None:
        """Take down the toasts about this form: its "Invalid run" refusals and (unless
        `refusals_only`) the demo preset's 'ctrl+r to start' and 'last values used'."""
        for notification in list(self.app._notifications):
            about_form = notification.title == "Invalid run" or not refusals_only and (
                notification.message.startswith((DEMO_PRESET_NOTE, LAST_VALUES_NOTE)))
            if about_form:
                self.app._unnotify(notification)  # Textual has no public call to remove one

    def on_screen_suspend(self) -> None:
        """The form is left for another screen (the runs list, a run): its toasts were about
        it, and stayed over the next screen. A dialog over it (help, the palette, F4) is not
        leaving it; a Start is (form_left, from the start itself)."""
        if not isinstance(self.app.screen, ModalScreen):
            self.form_left()

    def form_left(self) -> None:
        self._refused_rows = set()
        self._drop_form_toasts()

    # -- events -----------------------------------------------------------------------------
    @on(Input.Changed, ".field-input")
    def _input_changed(self, event: Input.Changed) -> None:
        found = split_widget_id(event.input.id or "")
        if found is None:
            return
        try:
            self.validate_field(found[1], found[0])
        except ConfigError:
            pass

    @on(Select.Changed, "#host")
    def _host_changed(self, event: Select.Changed) -> None:
        host = str(event.value)
        if event.value != event.select.value or host == self._host_of[self.profile]:
            return  # stale (the select's mount posts its first value late), or no change
        self._host_of[self.profile] = host
        self._show_row_error("row-host", "")
        remembered = self.app.settings.values_for(host)  # type: ignore[attr-defined]
        if self.profile == APR:  # only this profile's values: the other form stays as typed
            apr_values = remembered.get(APR)
            remembered = forget_identity(apr_values) if isinstance(apr_values, dict) else {}
            self._load_apr_values(remembered)
        else:
            remembered = {k: v for k, v in forget_identity(remembered).items()
                          if k not in (APR, "profile")}
            self._load_values(remembered)
        if remembered:
            self.notify(f"{LAST_VALUES_NOTE} {host}", timeout=2)

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
        if self.profile != KDENGINE:  # the demo is kdengine's; apr's values stay as typed
            self.select_profile(KDENGINE)
        values = demo_config().to_dict()
        self._load_values(values)
        self.notify(f"{DEMO_PRESET_NOTE}: a tiny teacher trained once on this machine, "
                    "distilled on the Python stdlib; ctrl+r to start", timeout=4)

    def action_runs(self) -> None:
        self.app.action_runs()

    def action_cache_teacher(self) -> None:
        self.app.cache_teacher(self)

    def fill_values(self, values: dict[str, Any]) -> None:
        """Set fields from outside the form (a complete cache's teacher_cache)."""
        self._load_values(values)

    def collect_config(self) -> RunConfig | None:
        """The form as a checked RunConfig, or None after marking every invalid field (each
        value's own error, then every cross-field rule broken) and naming them all."""
        values: dict[str, Any] = {}
        bad: list[str] = []
        for spec in FIELDS:
            try:
                values[spec.name] = self.validate_field(spec.name)
            except ConfigError:
                bad.append(spec.name)
        for exc in cross_field_errors(values, skip=bad):
            self.query_one(f"#{row_id(exc.field)}", FieldRow).show_error(
                form_error_text(exc))
            bad.append(exc.field)
        if not bad:
            return RunConfig.from_mapping(values).validate()
        self._report_invalid(bad)
        return None

    def _report_invalid(self, bad: list[str], profile: str = KDENGINE) -> None:
        """Focus the first invalid field (in form order) and name them all in one toast."""
        order = [spec.name for spec in profile_specs(profile)]
        bad = sorted(set(bad), key=order.index)
        self._focus_field(bad[0], profile, at_top=True)
        if len(bad) == 1:
            text = self.field_error(bad[0], profile)
        else:
            text = f"{len(bad)} fields to fix: {', '.join(bad)} (each says why, under it)"
        self._refuse(text, markup=False, rows={row_id(name, profile) for name in bad})

    def _refuse(self, message: str, *, markup: bool = True, rows: set[str] | None = None
                ) -> None:
        """The "Invalid run" toast. It replaces the form's earlier ones (a refusal before this
        one, the demo preset's 'ctrl+r to start'), which are stale now: stacked from the bottom
        right they had grown over the field errors at 80x24. `rows`: the rows it is about; it
        goes once they are all mended (row_mended), or when the form is left."""
        self._drop_form_toasts()
        self._refused_rows = set(rows or ())
        self.notify(message, title="Invalid run", severity="error", markup=markup)

    def collect_apr(self) -> tuple[RunConfig, AprSettings] | None:
        """The apr form as the run config and apr settings `kdtui launch --profile apr` would
        build from the same values, or None after showing every error inline."""
        values: dict[str, Any] = {}
        bad: list[str] = []
        for spec in APR_FIELDS:
            try:
                values[spec.name] = self.validate_field(spec.name, APR)
            except ConfigError:
                bad.append(spec.name)
        if bad:
            self._report_invalid(bad, APR)
            return None
        run = {f.name: values[f.name] for f in APR_FIELDS if not f.setting}
        settings = {f.name: values[f.name] for f in APR_FIELDS if f.setting}
        try:
            # as kdtui.profiles.apr.cli.apr_config_from_args: no data field to require
            config = RunConfig.from_mapping(run).validate(require_models=False)
            return config, AprSettings.from_mapping(settings)
        except ConfigError as exc:
            self._show_config_error(exc, APR)
            return None

    def _show_config_error(self, exc: ConfigError, profile: str = KDENGINE) -> None:
        message = profile_error_text(profile, exc)
        rows: set[str] = set()
        if exc.field and self.query(f"#{row_id(exc.field, profile)}"):
            self.query_one(f"#{row_id(exc.field, profile)}", FieldRow).show_error(message)
            self._focus_field(exc.field, profile, at_top=True)
            rows.add(row_id(exc.field, profile))
        self._refuse(message, rows=rows)

    def _focus_field(self, name: str, profile: str = KDENGINE, *, at_top: bool = False) -> None:
        """Focus a field and scroll to it; `at_top`: its row at the top of the form, where a
        refusal's toasts (stacked from the bottom right) leave its error readable."""
        widget = self.query_one(f"#{field_widget_id(name, profile)}")
        focus_quietly(widget)
        form = self.query_one("#form", VerticalScroll)
        form.scroll_to_widget(widget, animate=False)
        if at_top:  # after the error line is drawn (FieldRow.show_error scrolls to it then)
            row = self.query_one(f"#{row_id(name, profile)}")
            self.call_after_refresh(form.scroll_to_widget, row, animate=False, top=True)

    def action_start(self) -> None:
        if self.profile == APR:
            self._start_apr_form()
            return
        if not self.form_ready:
            self.notify("The form is still loading", timeout=2)
            return
        config = self.collect_config()
        if config is None:
            return
        host = str(self.query_one("#host", Select).value)
        fallback = str(self.query_one("#fallback_host", Select).value or "")
        dry_run = self.query_one("#dry_run", Switch).value
        raw = forget_identity(self.raw_values())
        if host == LOCAL:
            raw = absolute_local_paths(raw)
        settings = self.app.settings  # type: ignore[attr-defined]
        kept = {k: v for k, v in settings.values_for(host).items() if k == APR}
        if not self._begin_start(*(("Checking…", "checking the run") if host == LOCAL else
                                   ("Preparing…", f"preparing {host} (the engine wheel, "
                                                  "the connection)"))):
            return
        # remembered once the launch is accepted (_start): a refused one's values are not
        self._start(config, host, fallback, dry_run, {**raw, "fallback_host": fallback,
                                                      "dry_run": dry_run, "profile": KDENGINE,
                                                      **kept})

    def _start_apr_form(self) -> None:
        if not self.profile_ready(APR):
            self.notify("The form is still loading", timeout=2)
            return
        host = str(self.query_one("#host", Select).value)
        if host in (NO_HOST, LOCAL):
            self._show_row_error("row-host", APR_HOST_MISSING)
            self.query_one("#host", Select).focus(scroll_visible=False)  # the row is shown
            self._refuse(APR_HOST_MISSING, rows={"row-host"})
            return
        collected = self.collect_apr()
        if collected is None:
            return
        config, apr_settings = collected
        dry_run = self.query_one("#dry_run", Switch).value
        settings = self.app.settings  # type: ignore[attr-defined]
        # this host's kdengine values stay as they were remembered; apr's are the form's
        kept = {k: v for k, v in settings.values_for(host).items() if k not in (APR, "profile")}
        if not self._begin_start("Preparing…", f"preparing {host}"):
            return
        self._start_apr(config, apr_settings, host, dry_run,
                        {**kept, "dry_run": dry_run, "profile": APR,
                         APR: forget_identity(self.raw_values(APR))})

    def _begin_start(self, label: str, doing: str) -> bool:
        """A start is under way: the Start button says so (`label`, no wider than its own) and
        is off until it ends (the check can take seconds, and showed nothing: a second ctrl+r
        began it again). False, with a toast saying what is `doing`, when one already is."""
        if self._starting:
            self.notify(f"Already starting: {self._starting}", timeout=3)
            return False
        self._starting = doing
        button = self.query_one("#start", Button)
        button.label, button.disabled = label, True
        return True

    def _end_start(self) -> None:
        self._starting = ""
        for button in self.query("#start").results(Button):
            button.label, button.disabled = START_LABEL, False

    @work(exclusive=True, group="start")
    async def _start(self, config: RunConfig, host: str, fallback: str, dry_run: bool,
                     remembered: dict[str, Any]) -> None:
        try:
            await self._start_kdengine(config, host, fallback, dry_run, remembered)
        finally:
            self._end_start()

    async def _start_kdengine(self, config: RunConfig, host: str, fallback: str, dry_run: bool,
                              remembered: dict[str, Any]) -> None:
        runs_dir = self.app.runs_dir  # type: ignore[attr-defined]
        settings = self.app.settings  # type: ignore[attr-defined]
        if host == LOCAL:
            from kdtui.launch.local import LocalLauncher

            if not config.run_name and not config.run_dir:
                config = config.with_values(run_name=fresh_run_name(runs_dir))
            launcher = LocalLauncher(config, runs_dir)
            try:
                # the `kdengine train --check` semantics, here, so errors land on their field
                await asyncio.to_thread(launcher.check)
            except ConfigError as exc:
                self._show_config_error(exc)
                return
            if not settings.remember(host, remembered):
                self.app.warn_unsaved()  # type: ignore[attr-defined]
            self.form_left()  # the demo's 'ctrl+r to start' stayed over the run's log
            if dry_run:
                self.app.show_plan(launcher.plan())
                return
            self.app.show_run(launcher=launcher, title=f"{launcher.config.run_name} on local")
            self._clear_identity()
            return
        try:
            # building the engine wheel for the host can take seconds: off the UI thread
            launcher = await asyncio.to_thread(remote_launcher, config, host, fallback)
        except Exception as exc:  # a bad hosts entry, no wheel: say so, keep the form
            self.notify(str(exc), title=f"Cannot launch on {host}", severity="error",
                        timeout=10)
            return
        self.form_left()
        if dry_run:
            if not settings.remember(host, remembered):
                self.app.warn_unsaved()  # type: ignore[attr-defined]
            self.app.show_plan([str(line) for line in launcher.dry_run()])
            return
        # remembered once the box's check stage passes (the run screen runs it), as a local
        # launch is once its check passes: a refused one's values are not
        self.app.show_run(launcher=launcher, title=f"{launcher.run_id} on {host}",
                          remember=(host, remembered))
        self._clear_identity()

    @work(exclusive=True, group="start")
    async def _start_apr(self, config: RunConfig, settings: AprSettings, host: str,
                         dry_run: bool, remembered: dict[str, Any]) -> None:
        try:
            await self._start_apr_launcher(config, settings, host, dry_run, remembered)
        finally:
            self._end_start()

    async def _start_apr_launcher(self, config: RunConfig, settings: AprSettings, host: str,
                                  dry_run: bool, remembered: dict[str, Any]) -> None:
        try:
            # importing the dispatch loads asyncssh: off the UI thread
            launcher = await asyncio.to_thread(apr_launcher, config, host, settings)
        except ConfigError as exc:  # the plan's own checks: teacher == student, device=cpu...
            self._show_config_error(exc, APR)
            return
        except Exception as exc:  # a bad hosts entry: say so, keep the form
            self.notify(str(exc), title=f"Cannot launch on {host}", severity="error",
                        timeout=10)
            return
        self.form_left()
        if dry_run:
            if not self.app.settings.remember(host, remembered):  # type: ignore[attr-defined]
                self.app.warn_unsaved()  # type: ignore[attr-defined]
            self.app.show_plan(apr_dry_run_lines(launcher))
            return
        # as KDApp does with the launcher `kdtui launch --profile apr` built; remembered once
        # the box's check stage passes, as a kdengine run's
        self.app.show_run(launcher=launcher, title=f"{launcher.run_id} on {host}",
                          remember=(host, remembered))
        self._clear_identity(APR)

    def _clear_identity(self, profile: str = KDENGINE) -> None:
        """A run has started from the form: back here, the next Start is a new run (its name
        and directory were that run's)."""
        for name in RUN_IDENTITY:
            found = self.query(f"#{field_widget_id(name, profile)}")
            if found and isinstance(found.first(), Input):
                found.first().value = ""


def cross_field_errors(values: dict[str, Any], skip: list[str]) -> list[ConfigError]:
    """Every cross-field rule (RunConfig.validate) the values break, not only the first: after
    each error, its field is set aside (a stand-in that passes, or its default) and the rules
    run again. Fields in `skip` already have an error of their own."""
    trial = {k: v for k, v in values.items() if k not in skip}
    errors: list[ConfigError] = []
    seen = set(skip)
    for _ in range(len(FIELDS)):
        try:
            RunConfig.from_mapping(trial).validate()
            break
        except ConfigError as exc:
            if not exc.field or exc.field not in FIELDS_BY_NAME:
                break
            if exc.field not in seen:
                errors.append(exc)
                seen.add(exc.field)
            # required models get a distinct stand-in, so `student == teacher` cannot fire on it
            stand_in = f"<{exc.field}>" if exc.message.startswith("is required") else \
                FIELDS_BY_NAME[exc.field].default
            if trial.get(exc.field) == stand_in:
                break
            trial[exc.field] = stand_in
    return errors


def remote_launcher(config: RunConfig, host: str, fallback: str) -> Any:
    """The SSH launcher for `host` (and the fallback); imported here, on first use, so the
    form opens without loading asyncssh."""
    from kdtui.launch.remote import RemoteLauncher

    return RemoteLauncher(config, host, fallback or None)


def apr_launcher(config: RunConfig, host: str, settings: AprSettings) -> Any:
    """The apr profile's launcher: the AprLauncher that `kdtui launch --profile apr` builds
    (kdtui.profiles.apr.cli.apr_launcher_from_args) for the same values; its stages, plan and
    manifest are all its own. Raises ConfigError naming the field the plan refuses."""
    from kdtui.profiles.apr.dispatch import AprLauncher

    return AprLauncher(config, host, settings)


def apr_dry_run_lines(launcher: Any) -> list[str]:
    """The lines `kdtui launch --profile apr --dry-run` prints."""
    return ["DRY RUN: nothing is connected to, uploaded or started", *launcher.dry_run()]
