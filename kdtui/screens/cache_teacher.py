"""Cache the teacher from the launch form: F4 (or the palette's "Cache the teacher") asks for K
and the targets kind, then starts `kdengine cache-teacher` with the form's teacher, data, row
fields, device and dtype, on the form's host, and opens the run screen on it (kdtui.launch.cache
builds the launcher). A complete job's screen sends the user back to the form with
teacher_cache filled (KDApp.train_from_cache). `kdtui launch --cache-teacher` is
kdtui.launch.cache_cli.
"""

from __future__ import annotations

import asyncio
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from kdengine.config import ConfigError, RunConfig
from kdengine.teacher.command import JOB_FIELDS
from kdtui.launch.cache import cache_launcher
from kdtui.launch.cache_job import TARGET_KINDS, CacheOptions
from kdtui.screens.launch import DEMO_PRESET_NOTE, TAB_FIRST_BINDINGS

# the form's fields a cache job reads: what to score and how, and where it goes
FORM_FIELDS = (*JOB_FIELDS, "run_name", "run_dir")
# the dialog's names of the job's own fields (the engine's refusals name them top_k, ...)
DIALOG_LABELS = {"top_k": "K", "cache_top_k": "K", "cache_targets": "targets"}
TARGETS_HELP = {"topk": "topk: the K likeliest ids and a tail bucket",
                "sampled": "sampled: K ids drawn from the teacher (unbiased)"}


class CacheTeacherDialog(ModalScreen[CacheOptions | None]):
    """K and the targets kind for a cache job of the form's teacher and data; Esc cancels."""

    # Tab and shift+tab move the focus before the keys typed after them reach K ("16<Tab>j"
    # put "16j" in K): the launch form's TabFirstScreen bindings
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), *TAB_FIRST_BINDINGS]

    def __init__(self, summary: str, options: CacheOptions | None = None) -> None:
        super().__init__()
        self.summary = summary
        self.options = options or CacheOptions()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="cache-dialog"):
            yield Label("Cache the teacher", classes="dialog-title")
            yield Static(self.summary, classes="dialog-body")
            with Horizontal(classes="field-line"):
                yield Label("K", classes="field-label")
                yield Input(str(self.options.top_k), id="cache-top-k", classes="field-input",
                            compact=True)
            with Horizontal(classes="field-line"):
                yield Label("targets", classes="field-label")
                yield Select([(TARGETS_HELP[k], k) for k in TARGET_KINDS],
                             value=self.options.targets, allow_blank=False, id="cache-targets",
                             classes="field-input", compact=True)
            yield Static("", id="cache-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start the cache job", variant="success", id="cache-start")
                yield Button("Cancel", id="cache-cancel")

    def on_mount(self) -> None:
        self.query_one("#cache-top-k", Input).focus()
        # F2's toast (10 s, bottom right) sat over the dialog's bottom border and, at 80x24,
        # its buttons: what it says is the form's, and the dialog is what is read now
        for notification in list(self.app._notifications):
            if notification.message.startswith(DEMO_PRESET_NOTE):
                self.app._unnotify(notification)  # Textual has no public call to remove one

    def collect(self) -> CacheOptions | None:
        """The options, with the error line under them said or cleared: at Start, and at each
        keystroke in K as the form checks its fields (a mended K kept saying "got ''")."""
        text = self.query_one("#cache-top-k", Input).value.strip()
        error = self.query_one("#cache-error", Static)
        try:
            options = CacheOptions(int(text) if text.isdigit() else text,  # type: ignore[arg-type]
                                   str(self.query_one("#cache-targets", Select).value)).check()
        except ConfigError as exc:
            label = DIALOG_LABELS.get(exc.field or "", exc.field)
            error.update(f"{label}: {exc.message}")
            # a .field-error shows only in an invalid field's row (app.tcss): this one is the
            # dialog's, and the refused Start said nothing
            error.display = True
            return None
        error.update("")
        error.display = False
        return options

    @on(Input.Changed, "#cache-top-k")
    def _k_changed(self) -> None:
        self.collect()

    @on(Input.Submitted, "#cache-top-k")
    @on(Button.Pressed, "#cache-start")
    def _start(self) -> None:
        options = self.collect()
        if options is not None:
            self.dismiss(options)

    @on(Button.Pressed, "#cache-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


def collect_job(form: Any) -> RunConfig | None:
    """The form's cache-job fields as a RunConfig (the rest default), or None after marking each
    invalid one inline as Start does (a student is not needed)."""
    from kdtui.screens.launch import FieldRow, form_error_text, row_id

    values: dict[str, Any] = {}
    bad: list[str] = []
    for name in FORM_FIELDS:
        try:
            values[name] = form.validate_field(name)
        except ConfigError:
            bad.append(name)
    for name in ("teacher", "data"):
        if name not in bad and not values.get(name):
            form.query_one(f"#{row_id(name)}", FieldRow).show_error(
                form_error_text(ConfigError(name, "is required")))
            bad.append(name)
    if bad:
        form._report_invalid(bad)
        return None
    return RunConfig.from_mapping(values)


def start_cache_job(form: Any) -> None:
    """F4 on the form: check its job fields, ask K and the targets, then start the job on the
    form's host."""
    from kdtui.screens.launch import APR, KDENGINE

    if form.profile == APR:
        form.select_profile(KDENGINE)  # a cache job is kdengine's
    if not form.form_ready:
        form.notify("The form is still loading", timeout=2)
        return
    config = collect_job(form)
    if config is None:
        return
    host = str(form.query_one("#host", Select).value)
    fallback = str(form.query_one("#fallback_host", Select).value or "")
    dry_run = form.query_one("#dry_run", Switch).value

    def chosen(picked: CacheOptions | None) -> None:
        if picked is not None:
            form.run_worker(_start(form, config, picked, host, fallback, dry_run),
                            exclusive=True, group="start")

    where = "this machine" if host == "local" else host
    summary = (f"Score {config.data} with {config.teacher} once (seq_len {config.seq_len}, "
               f"on {where}), for runs that train with teacher_cache and no teacher loaded.")
    form.app.push_screen(CacheTeacherDialog(summary), chosen)


async def _start(form: Any, config: RunConfig, options: CacheOptions, host: str, fallback: str,
                 dry_run: bool) -> None:
    runs_dir = form.app.runs_dir
    try:
        # remote: builds the engine wheel and loads asyncssh; local: nothing slow
        launcher = await asyncio.to_thread(cache_launcher, config, options, host, fallback,
                                           runs_dir)
        if host == "local":
            # `kdengine cache-teacher --check` in a child: errors land on their field
            await asyncio.to_thread(launcher.check)
    except ConfigError as exc:
        if exc.field in FORM_FIELDS:
            form._show_config_error(exc)
        else:  # top_k, cache_targets, out: the dialog's or the engine's own
            label = DIALOG_LABELS.get(exc.field or "", exc.field)
            form.notify(f"{label}: {exc.message}" if exc.field else exc.message,
                        title="Cannot cache the teacher", severity="error", markup=False)
        return
    except Exception as exc:  # a bad hosts entry, no wheel: say so, keep the form
        form.notify(str(exc), title=f"Cannot launch on {host}", severity="error", timeout=10,
                    markup=False)
        return
    if dry_run:
        form.app.show_plan(launcher.plan() if host == "local" else launcher.dry_run())
        return
    form.app.show_run(launcher=launcher, title=f"{launcher.run_id} on {host}")
    form._clear_identity()
