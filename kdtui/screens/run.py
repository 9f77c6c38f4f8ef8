"""The run dashboard: stages, loss chart, progress, verdict and the log, for one run.

The engine runs in another process (or on another host); this screen only follows the run's
files through a `RunFollower` in an async worker. New events and log lines collect in a pending
batch that a 100 ms timer applies to the widgets, with a cap per tick, so a fast engine or a
huge backlog never blocks a frame for long.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input

from kdengine.verdict import distill_report, verdict_from_events
from kdtui.launch.base import Launcher, RunHandle, StageUpdate, config_differences
from kdtui.launch.cache_job import is_cache_launch, job_values
from kdtui.launch.outcome import EngineLiveness, WatchedRun
from kdtui.samples import SAMPLE_EVENT, HeldOutGeneration, Sample, wants_samples
from kdtui.watch import READ_LIMIT, RunFollower
from kdtui.widgets.cache_job import (
    CACHE_STAGES,
    CacheJobPanel,
    TeacherCEChart,
    cache_dir_of,
    cached_teacher_badge,
    cached_teacher_line,
    is_cache_job,
)
from kdtui.widgets.gauges import GaugeRow
from kdtui.widgets.header import TitleHeader
from kdtui.widgets.link_status import LinkStatus
from kdtui.widgets.log_view import LogView
from kdtui.widgets.loss_chart import LossChart
from kdtui.widgets.run_panels import ENGINE_STAGES, RunProgress, StageTracker, VerdictPanel
from kdtui.widgets.samples import SamplesView

APPLY_EVERY_S = 0.1
MAX_LINES_PER_TICK = 10_000
MAX_EVENTS_PER_TICK = 2_000
POLL_S = 0.1
FREEZE_EVERY_TICKS = 50  # 5 s
# The top band (side column and chart) and the log share the screen. The side column is 52
# cells from WIDE_AT columns up, 40 below (the chart keeps 40 at 80 columns); the top band takes
# 60% of the height, more when the side column needs it, never so much that the log has fewer
# than MIN_LOG_ROWS rows. What still does not fit goes compact: the stage tracker becomes one
# line, then the progress panel two, so the whole verdict shows even at 80x24.
SIDE_WIDE, SIDE_NARROW, WIDE_AT = 52, 40, 110
TOP_SHARE, TOP_MIN = 0.6, 16
MIN_LOG_ROWS = 5
# how every notice that offers R begins: the resume, once started, takes them down
RESUME_OFFER = "Press R to "


class RunState:
    """What the screen knows about the run, reduced from its events: the verdict needs only the
    evals, the last step, the first non-finite step and run_finished, not every step event."""

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.last_step: dict[str, Any] | None = None
        self.last_t: float | None = None  # the unix time of the newest event
        self.bad_step_seen = False
        self.finished: dict[str, Any] | None = None
        self.initial_val_loss: float | None = None
        self.initial_label = "val loss"
        self.latest_val_loss: tuple[int, float] | None = None  # (step, value) after step 0
        self.run_started: dict[str, Any] | None = None
        self.event_count = 0

    def add(self, event: dict[str, Any]) -> None:
        self.event_count += 1
        t = event.get("t")
        if isinstance(t, (int, float)) and (self.last_t is None or t > self.last_t):
            self.last_t = float(t)
        kind = event.get("type")
        if kind == "step":
            self.last_step = event
            loss = event.get("loss")
            if not self.bad_step_seen and not (isinstance(loss, (int, float))
                                               and math.isfinite(loss)):
                self.bad_step_seen = True
                self.kept.append(event)
        elif kind == "eval":
            self.kept.append(event)
            # the step-0 number the verdict will judge by: an on-policy run's val_gen_kl
            key = "val_gen_kl" if "val_gen_kl" in event else "val_loss"
            if event.get("step") == 0 and isinstance(event.get(key), (int, float)):
                self.initial_val_loss = float(event[key])
                self.initial_label = "val gen KL" if key == "val_gen_kl" else "val loss"
            elif isinstance(event.get(key), (int, float)) and isinstance(event.get("step"), int):
                self.latest_val_loss = (event["step"], float(event[key]))  # the panel's latest
        elif kind == "run_finished":
            self.finished = event
            self.kept.append(event)
        elif kind == "verdict" and event.get("loss_kind") == "train_batch":
            self.kept.append(event)  # an engine without held-out eval gives its own verdict
        elif kind == "run_started":
            self.run_started = event
            if self.finished is not None:  # a resume continues the run that had ended
                self.kept.remove(self.finished)
                self.finished = None

    def verdict(self):
        # run_started first: a cache job's (job cache-teacher) end is judged as a job's
        events = [self.run_started] if self.run_started else []
        events += self.kept
        if self.last_step is not None:
            events.append(self.last_step)
        return verdict_from_events(events)


class RunScreen(Screen):
    """One run, live or finished. Give a launcher (start it here) or a handle (watch it)."""

    BINDINGS = [
        Binding("m", "toggle_smooth", "EMA", id="run.smooth", tooltip="Smooth the loss (EMA)"),
        # "Log scale", not "Log y": `l Log y x Stop run` read as if y and x were both keys
        Binding("l", "toggle_log_y", "Log scale", id="run.log_y",
                tooltip="Logarithmic loss axis (log y)"),
        # '/' and Esc are off the footer so it fits 80 columns: F1 and ctrl+p list them
        Binding("slash", "search", "Search", show=False, id="run.search",
                tooltip="Search the log"),
        # an on-policy run's samples pane (off the footer: 80 columns; F1 and ctrl+p list it)
        Binding("s", "samples", "Samples", show=False, id="run.samples",
                tooltip="Focus the samples pane (up/down/pgup/pgdn scroll it, v by prompt, "
                        "z zoom)"),
        Binding("u", "toggle_gauges", "Gauges", show=False, id="run.gauges",
                tooltip="Show or hide the gauge row (GPU memory, utilization, power, MFU, host "
                        "memory)"),
        Binding("R", "resume", "Resume", show=False, id="run.resume",
                tooltip="Continue a stopped, failed or cancelled run from its checkpoint"),
        Binding("t", "train_from_cache", "Train from cache", show=False,
                id="run.train_from_cache", tooltip="A complete teacher cache: back to the form "
                "with teacher_cache set to it"),
        # R and t where they do not apply (check_action turns the two above off) did nothing at
        # all, and their notices never showed: Textual tries these next; no description, so
        # neither the help nor the palette lists them
        Binding("R", "resume_refused", show=False),
        Binding("t", "train_from_cache_refused", show=False),
        Binding("x", "stop_run", "Stop run", id="run.stop",
                tooltip="SIGTERM to the engine's process group (asks first)"),
        Binding("escape", "back", "Back", show=False, id="run.back",
                tooltip="Back to the form or the runs list"),
    ]

    def __init__(self, *, launcher: Launcher | None = None, handle: RunHandle | None = None,
                 title: str = "", status: str = "",
                 accepted: Callable[[], None] | None = None) -> None:
        """status: how the run stood when it was opened ("reattached (running)"), shown after
        the title until the run ends, then replaced by how it ended. `accepted`: called once
        when the launch passes its check stage (or starts without one)."""
        super().__init__()
        self._accepted = accepted
        if (launcher is None) == (handle is None):
            raise ValueError("give a launcher or a handle")
        self.launcher = launcher
        self.handle = handle
        self.title_text = title
        self.status_text = status
        self.state = RunState()
        self._pending_events: list[dict[str, Any]] = []
        self._pending_lines: list[str] = []
        self.launch_failed: str | None = None
        self.ended = False
        # a teacher-cache job trains nothing: its own stages, chart and result panel
        self.cache_job = is_cache_launch(launcher, handle)
        self._stages = tuple(getattr(launcher, "stages", ())) + (
            CACHE_STAGES if self.cache_job else ENGINE_STAGES)
        self._ticks = 0
        self.watched = WatchedRun()  # what the manifest records, and whether Resume applies
        self._drawn_to = {"step": -1, "eval": -1}  # a resume redoes steps: drawn once
        self._recorded = False
        # the events read before the follower first found nothing new: until they are applied
        # the run's state is unknown (a finished run opened is not running: no Stop run yet)
        self._backlog: int | None = None
        self._keys_shown = (False, False)  # (Stop run, Resume) offered when last asked

    @property
    def run_dir(self) -> Path | None:
        """The local directory of the run (where screenshots go), when there is one."""
        if self.handle is None:
            return None
        local = getattr(self.handle.source, "run_dir", None) or self.handle.extra().get(
            "local_run_dir")
        return Path(local) if local else None

    @property
    def screenshot_dir(self) -> Path | None:
        """Where F8 saves: a remote run's evidence dir (beside its dispatch.json: its run
        directory is on the host, and was made here under that path), else its run dir."""
        manifest = getattr(self.handle, "manifest", None) if self.handle is not None else None
        return Path(manifest).parent if manifest else self.run_dir

    @property
    def screenshot_where(self) -> str:
        """screenshot_dir in words, for F8's line in the help and the palette."""
        manifest = getattr(self.handle, "manifest", None) if self.handle is not None else None
        return "beside this run's dispatch.json (its evidence dir)" if manifest else \
            "into this run's directory"

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        with Horizontal(id="run-top"):
            with Vertical(id="run-side"):
                yield StageTracker(self._stages, id="stages")
                yield RunProgress(id="progress")
                yield (CacheJobPanel if self.cache_job else VerdictPanel)(id="verdict")
            yield (TeacherCEChart if self.cache_job else LossChart)(id="chart")
        yield LinkStatus(id="link")
        yield GaugeRow(id="gauges")
        with Horizontal(id="run-bottom"):  # an on-policy run's samples pane mounts left of the log
            yield LogView(id="log")
        yield Input(placeholder="search the log (Enter: find, n/N: next/previous, Esc: close)",
                    id="search")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self._sub_title()
        self.query_one("#search", Input).display = False
        # the steps asked for are known before the engine's first event (a form run's config)
        if not self.cache_job:  # a cache job's total is its rows, known at its data stage
            self.query_one(RunProgress).expect_total(_asked_steps(self.launcher, self.handle))
        else:
            self.query_one(RunProgress).count_rows()
        self._fit_layout()
        self.query_one(LogView).border_title = "log"
        self.apply_timer = self.set_interval(APPLY_EVERY_S, self.apply_pending)
        if self.launcher is not None:
            self._launch()
        else:
            self._watch()
        self.query_one(LogView).focus()

    # -- launching and following --------------------------------------------------------------
    @work(exclusive=True, group="launch")
    async def _launch(self) -> None:
        assert self.launcher is not None
        tracker = self.query_one(StageTracker)

        def on_stage(update: StageUpdate) -> None:
            if update.stage == "check" and update.state in ("done", "skipped"):
                self._accept()
            if not self.is_attached:  # left for another screen: the start goes on unseen
                return
            detail = update.detail
            if update.host and update.host != "local":
                detail = f"{update.host}: {detail}" if detail else update.host
            tracker.update_stage(update.stage, update.state, update.elapsed, detail)
            if update.output:
                self._pending_lines.extend(update.output)

        # The start goes on when the user leaves this screen (Esc at once after Start): the
        # engine may be spawned already, and a start cancelled with the screen's worker lost
        # its handle, so Ctrl+Q quit without asking and left the run going. The start is its
        # own task, shielded from the worker's cancel; its handle is the app's once it exists.
        app = self.app
        start = asyncio.ensure_future(self.launcher.start(on_stage))

        def owned(task: asyncio.Future) -> None:
            if not task.cancelled() and task.exception() is None:
                app.owned_runs.append(task.result())  # type: ignore[attr-defined]

        start.add_done_callback(owned)
        try:
            handle = await asyncio.shield(start)
        except Exception as exc:  # every launch failure is shown, never a crash of the UI
            self.launch_failed = str(exc)
            self._pending_lines.append(f"ERROR: launch failed: {exc}")
            # the stage it failed in stops its clock, whether or not the launcher said so (a
            # remote stage reports its failure; an OSError out of a local mkdir does not)
            tracker.finish_running("failed")
            self.query_one(VerdictPanel).show_launch_failed(str(exc))
            self._fit_layout()
            self.notify(str(exc), title="Launch failed", severity="error", timeout=10,
                        markup=False)
            self._refresh_keys()
            return
        self._accept()
        self.handle = handle
        self._refresh_keys()
        self.title_text = f"{handle.run_id} on {handle.host}"
        self.sub_title = self._sub_title()
        self._watch()

    def _accept(self) -> None:
        accepted, self._accepted = self._accepted, None
        if accepted is not None:
            accepted()

    @work(exclusive=True, group="follow")
    async def _watch(self) -> None:
        assert self.handle is not None
        if not self.title_text:
            self.title_text = f"{self.handle.run_id} on {self.handle.host}"
            self.sub_title = self._sub_title()
        # an apr handle knows its epochs before the first one ends
        self.query_one(RunProgress).expect_epochs(getattr(self.handle, "epochs", None))
        if not self.cache_job:
            self.query_one(RunProgress).expect_total(_asked_steps(None, self.handle))
        try:
            if await self._shown_as_recorded():
                return
            follower = RunFollower(self.handle.source)
            self.query_one(LinkStatus).follow(self.handle)
            self._fit_layout()
            await self._follow(follower)
        except Exception as exc:  # a link given up, a key refused: shown, never a crash
            if not self.query(StageTracker):  # the screen closed meanwhile
                return
            self._pending_lines.append(f"ERROR: stopped following the run: {exc}")
            self.notify(f"{exc}", title="Stopped following the run", severity="error",
                        timeout=30, markup=False)

    async def _follow(self, follower: RunFollower) -> None:
        """The run's files as they grow, into the widgets; an ended run's own end, or the
        engine's death without one. Raises what its source raises (a link given up)."""
        assert self.handle is not None
        liveness = EngineLiveness(self.handle)
        quiet_since: float | None = None
        received, read_to = 0, follower.events.offset
        async for update in _follow_with_idle(follower):
            # the events file's end reached (a poll found nothing, or read less than a full
            # slice: a chatty engine may never leave a poll empty): the run's state is known
            # once the events read so far apply
            at_end = update is None or follower.events.offset - read_to < READ_LIMIT // 2
            read_to = follower.events.offset
            if update is not None:
                received += len(update.events)
                self._pending_events.extend(update.events)
                self._pending_lines.extend(update.log_lines)
            if at_end and self._backlog is None:
                self._backlog = received
                self._refresh_keys()
            if update is not None:
                quiet_since = None
                continue
            # nothing new: has the run ended without saying so (a killed engine)?
            quiet_since = quiet_since or time.monotonic()
            if self.state.finished is None and not self.ended and not self._pending_events \
                    and await liveness.gone(time.monotonic() - quiet_since):
                await self._engine_gone(liveness)

    async def _shown_as_recorded(self) -> bool:
        """A remote run its manifest records as ended, opened to watch while its host cannot
        be reached: its recorded outcome at once, not minutes of reconnecting (True: shown)."""
        from kdtui.remote.manifest import read_manifest
        from kdtui.remote.recorded import recorded_outcome

        manifest = getattr(self.handle, "manifest", None)
        try_connect = getattr(self.handle.source, "try_connect", None)
        if self.launcher is not None or manifest is None or try_connect is None:
            return False
        try:
            recorded = recorded_outcome(manifest, read_manifest(manifest))
        except (OSError, ValueError):
            return False
        if recorded is None:
            return False
        why = await try_connect()
        if why is None:
            return False  # the host answers: the run's own files say it all
        line = recorded.unreachable_line(str(self.handle.host), why)
        self._pending_lines += [f"WARNING: {line}", f"recorded verdict: "
                                f"{recorded.verdict.summary()}"]
        self.query_one(VerdictPanel).show(recorded.verdict)
        self.ended = True
        self._recorded = True  # it is the manifest's record: nothing to record over it
        self.status_text = f"{recorded.status} (recorded; host unreachable)"
        self.sub_title = self._sub_title()
        self.notify(line, title="Host unreachable: the recorded outcome", severity="warning",
                    timeout=15, markup=False)
        return True

    async def _engine_gone(self, liveness: EngineLiveness) -> None:
        """The engine died without run_finished: say so with its last lines, offer resume."""
        tail = await liveness.last_lines()
        if not self.query(StageTracker):  # the screen closed while the lines were read
            return
        self._pending_lines.append("ERROR: the engine is gone without finishing the run "
                                   "(killed, or the box rebooted); its last log lines:")
        self._pending_lines.extend(f"  | {line}" for line in tail)
        self.watched.gone, self.watched.log_tail = True, tail
        self.ended = True
        self._refresh_keys()
        self.query_one(StageTracker).finish_running("failed", self.state.last_t)
        self._show_end("stopped")
        if self.watched.checkpoint_step is not None:
            self.notify(f"{RESUME_OFFER}resume it from its checkpoint at step "
                        f"{self.watched.checkpoint_step}", title="The engine is gone",
                        severity="error", timeout=30)
        elif self.cache_job:  # no checkpoint: its finished shards are what R keeps
            self.notify(f"{RESUME_OFFER}finish the job (its finished shards are kept)",
                        title="The engine is gone", severity="error", timeout=30)

    # -- applying updates ---------------------------------------------------------------------
    def apply_pending(self) -> None:
        """Move at most a tick's worth of pending events and lines into the widgets."""
        self._ticks += 1
        if self._ticks % FREEZE_EVERY_TICKS == 1:
            # A full (generation-2) garbage collection scans every live container: with a
            # long run on screen that took 40-90 ms, a visible stutter. Objects alive now are
            # long-lived (widgets, caches): freeze them out of the collector's scans.
            gc.freeze()
        events = self._pending_events[:MAX_EVENTS_PER_TICK]
        del self._pending_events[:MAX_EVENTS_PER_TICK]
        lines = self._pending_lines[:MAX_LINES_PER_TICK]
        del self._pending_lines[:MAX_LINES_PER_TICK]
        if lines:
            self.query_one(LogView).append_lines(lines)
        if not events and not (self.ended and not self.state.finished):
            return
        chart = self.query_one(LossChart)
        progress = self.query_one(RunProgress)
        tracker = self.query_one(StageTracker)
        state = self.state
        samples: list[Sample] = []
        cache_panel = next(iter(self.query(CacheJobPanel)), None)
        for event in events:
            state.add(event)
            self.watched.add(event)
            if cache_panel is not None:
                cache_panel.observe(event)
            kind = event.get("type")
            if kind == SAMPLE_EVENT:
                sample = Sample.from_event(event)
                if sample is not None:
                    samples.append(sample)
            elif kind == "step":
                step = event.get("step")
                if isinstance(step, (int, float)):
                    if self._first_drawing("step", step):
                        chart.add_step(step, event)
                    progress.add_step(event)
                    self.query_one(GaugeRow).add_step(event)
            elif kind == "eval":
                step = event.get("step")
                if isinstance(step, (int, float)) and self._first_drawing("eval", step):
                    chart.add_eval(step, event.get("val_loss"), event.get("val_gen_kl"))
                progress.add_eval(event)
                held_out = HeldOutGeneration.from_event(event)
                if held_out is not None:
                    self._samples_pane().add_held_out(held_out)
            elif kind == "checkpoint":
                progress.add_checkpoint(event)
            elif kind == "epoch":  # an engine with epochs (apr): the loss at each epoch's end
                step = event.get("step")
                if isinstance(step, (int, float)):
                    chart.add_epoch(step, event.get("loss"), event.get("epoch"))
                progress.add_epoch(event)
            elif kind == "stage":
                if self.cache_job and event.get("stage") == "data":  # the rows it will score
                    progress.expect_total(event.get("rows"))
                tracker.update_stage(str(event.get("stage")), str(event.get("state")),
                                     event.get("elapsed") or 0.0, str(event.get("detail", "")),
                                     started_at=event.get("t"))
            elif kind == "run_started":
                self._recorded = False  # a resumed part: its end is recorded again
                total = (event.get("config") or {}).get("steps")
                if isinstance(total, int) and not is_cache_job(event):  # a job's are rows
                    progress.total = total
                    progress.expect_schedule(event.get("config"))
                self._teacher_note(event)
                self._check_effective_config(event)
                if wants_samples(event.get("config")):
                    self._samples_pane()
                if event.get("resumed_from") is not None:
                    # a new part: its stages run again, and the offer to resume is taken
                    tracker.restart(CACHE_STAGES if self.cache_job else ENGINE_STAGES)
                    self._withdraw_resume_offer()
                    if self.status_text:
                        self.status_text = "resumed"  # not how the run's earlier part ended
                        self.sub_title = self._sub_title()
                progress.set_ranks(event.get("world_size"), event.get("backend"))
            elif kind == "log" and event.get("level") == "error":
                if "rank" in event:
                    progress.rank_failed(event["rank"], event.get("message", ""))
                where = f"rank {event['rank']}" if "rank" in event else "the engine"
                # markup=False: engine messages hold brackets ("[/.../pair.cc:553] Connection
                # closed by peer" from gloo), which as markup crashed the dashboard
                self.notify(str(event.get("message", ""))[:300], title=f"Error on {where}",
                            severity="error", timeout=15, markup=False)
        if samples:
            self._samples_pane().add_samples(samples)
        finished = state.finished is not None or self.ended
        self._refresh_keys()
        if finished and not self._recorded:
            self._record_end()
        if state.finished is not None:
            end = "done" if state.finished.get("status") == "completed" else "failed"
            tracker.finish_running(end, state.finished.get("t"))
            self._show_end(str(state.finished.get("status") or "finished"))
            if progress.ranks is not None and not progress.ranks.ended:
                progress.ranks_ended(state.finished)
            if state.finished.get("status") in ("completed", "cancelled"):
                # the last step trained, cut between two logged ones (a failed run's `steps`
                # is the step it failed in, not one it trained)
                progress.end_at(state.finished.get("steps"))
        progress.refresh_view(finished=finished)
        panel = self.query_one(VerdictPanel)
        if finished:
            if panel.verdict is None:
                panel.show(state.verdict())
        else:
            panel.show(None, state.initial_val_loss, state.initial_label,
                       latest=state.latest_val_loss)
        # val CE and KD apart, the teacher's CE, warnings where the objective misleads
        panel.show_report(distill_report(state.kept))
        self._fit_layout()

    def _samples_pane(self) -> SamplesView:
        """The samples pane, mounted the first time an on-policy run needs it (an off-policy
        run's screen has none: it looks and behaves as it always did)."""
        found = self.query(SamplesView)
        if found:
            return found.first()
        pane = SamplesView(id="samples")
        self.query_one("#run-bottom").mount(pane, before=self.query_one(LogView))
        self._fit_layout()
        return pane

    def _first_drawing(self, series: str, step: float) -> bool:
        """Whether `step` is new to the chart: the steps a resume redoes after its checkpoint
        (the same values: the resume is exact) were drawn when first run."""
        if step <= self._drawn_to[series]:
            return False
        self._drawn_to[series] = step
        return True

    def _record_end(self) -> None:
        """What the watch saw, into the run's manifest (the path headless watch records by),
        and Resume offered when it applies."""
        self._recorded = True
        verdict = self.state.verdict().to_event()
        finished = self.state.finished or {}
        ended_at = finished.get("t") if isinstance(finished.get("t"), (int, float)) else None
        if self.handle is not None and (ended_at is None or time.time() - ended_at < 30):
            # an end seen as it happened (not an old run opened): the app tells the user
            status = str(finished.get("status") or "stopped")
            self.app.run_ended(self.handle.run_id, status,  # type: ignore[attr-defined]
                               verdict.get("status") if status == "completed" else None,
                               self.run_dir, looking=self.app.screen is self)
        try:
            self.watched.record(getattr(self.handle, "manifest", None), verdict)
        except (OSError, ValueError) as exc:
            self.notify(f"could not record the end in the manifest: {exc}", severity="warning",
                        markup=False)
        # a screen opened by R replays the part that ended before its own part starts
        if self.watched.resumable and not self.watched.gone and self.status_text != "resuming":
            self.notify(f"{RESUME_OFFER}resume it from its checkpoint at step "
                        f"{self.watched.checkpoint_step}", timeout=10)

    def _withdraw_resume_offer(self) -> None:
        """Take down the "Press R" notices: the resume they offer has started (Textual has
        no public call to remove one notification; clear_notifications would take errors too)."""
        for notification in list(self.app._notifications):
            if notification.message.startswith(RESUME_OFFER):
                self.app._unnotify(notification)

    def _sub_title(self) -> str:
        return " · ".join(part for part in (self.title_text, self.status_text) if part)

    def _show_end(self, status: str) -> None:
        """The run ended: the title says how ("· completed"), whether the run was watched to its
        end or opened after it (a status shown since then, "reattached (running)", included)."""
        if self.status_text != status:
            self.status_text = status
            self.sub_title = self._sub_title()

    # -- layout -------------------------------------------------------------------------------
    def on_resize(self) -> None:
        self._fit_layout()

    def _fit_layout(self) -> None:
        """Size the side column and the top band for this terminal (see SIDE_WIDE and TOP_SHARE):
        every panel whole where it can be, compact where it must."""
        width, height = self.size
        if not width or not height or not self.is_mounted:
            return
        top = self.query_one("#run-top")
        side = self.query_one("#run-side")
        tracker = self.query_one(StageTracker)
        progress = self.query_one(RunProgress)
        side_width = SIDE_WIDE if width >= WIDE_AT else SIDE_NARROW
        rows = height - 2 - (1 if self.query_one(LinkStatus).display else 0)  # header, footer
        rows -= 1 if self.query_one(GaugeRow).display else 0
        share = max(TOP_MIN, int(rows * TOP_SHARE))
        room = max(TOP_MIN, rows - MIN_LOG_ROWS)
        panel = self.query_one(VerdictPanel)
        verdict = panel.height_for(side_width) + panel.folded_lines
        # the val CE/KD lines fold away (warnings stay) where even compact panels leave no room
        brief = panel.report_lines > 0 and 3 + progress.full_height - 2 + verdict > room
        verdict -= panel.report_lines if brief else 0
        # then the delta line (the numbers above it say it): else the side column scrolls, its
        # scrollbar narrows the panel, the warnings wrap, and the last one is cut
        no_delta = panel.verdict is not None and 3 + progress.full_height - 2 + verdict > room
        panel.set_brief(brief, no_delta)
        verdict -= 1 if no_delta else 0
        compact_stages = tracker.full_height + progress.full_height + verdict > room
        compact_progress = compact_stages and 3 + progress.full_height + verdict > room
        needed = (3 if compact_stages else tracker.full_height) + verdict + (
            progress.full_height - 2 if compact_progress else progress.full_height)
        tracker.set_compact(compact_stages)
        progress.set_compact(compact_progress)
        want_width = None if side_width == SIDE_WIDE else side_width
        if side.styles.width != want_width:
            side.styles.width = want_width
        for pane in self.query(SamplesView):  # under the side column, as wide (zoomed: all)
            pane_width = "100%" if self.maximized is pane else side_width
            if pane.layout_width != pane_width:
                pane.layout_width = pane.styles.width = pane_width
        want_height = None if needed <= share else min(needed, room)
        if top.styles.height != want_height:
            top.styles.height = want_height
        # still too tall (a tiny terminal): scroll the side column rather than cut it
        side.styles.overflow_y = "auto" if needed > room else "hidden"

    def watch_maximized(self) -> None:
        self._fit_layout()  # the samples pane zoomed (z) or back

    def _teacher_note(self, run_started: dict[str, Any]) -> None:
        """A run from a teacher cache says so (K, size, the teacher) in the chart's border and
        the log; a cache job not known as one before its first event gets its stages."""
        line = cached_teacher_line(run_started)
        if line is not None:
            # after the chart's title: its bottom border is the legend's
            self.query_one(LossChart).badge = cached_teacher_badge(run_started) or ""
            self._pending_lines.append(line)
        if is_cache_job(run_started) and not self.cache_job:
            self.cache_job = True
            self.query_one(RunProgress).count_rows()
            self.query_one(StageTracker).set_stages(
                tuple(getattr(self.launcher, "stages", ())) + CACHE_STAGES)

    def _check_effective_config(self, run_started: dict[str, Any]) -> None:
        """What the engine says it runs must be what was asked: a difference is an error."""
        asked = getattr(self.handle, "asked_config", None)
        if not asked:
            return
        if is_cache_job(run_started):  # a cache job runs the job's fields, not a run's
            asked = job_values(asked)
        echoed = run_started.get("config")
        diffs = config_differences(asked, echoed) if isinstance(echoed, dict) else \
            ["run_started carries no config: cannot confirm what the engine runs"]
        if diffs:
            self.query_one(LogView).append_lines(
                [f"ERROR: effective config differs from what was asked: {d}" for d in diffs])
            self.notify("; ".join(diffs)[:300], title="The engine runs another config",
                        severity="error", timeout=20, markup=False)

    # -- actions ------------------------------------------------------------------------------
    def action_toggle_smooth(self) -> None:
        chart = self.query_one(LossChart)
        chart.smooth = not chart.smooth

    def action_toggle_gauges(self) -> None:
        self.query_one(GaugeRow).toggle()
        self._fit_layout()

    def action_toggle_log_y(self) -> None:
        chart = self.query_one(LossChart)
        chart.log_y = not chart.log_y

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "samples":
            return bool(self.query(SamplesView))  # no pane (an off-policy run): no key
        if action == "train_from_cache":  # a complete cache job's screen only
            return cache_dir_of(next(iter(self.query(CacheJobPanel)), None)) is not None
        if action == "stop_run":  # a running run only: off the footer once it has ended
            return self.running
        if action == "resume":  # an ended run with something to continue from only
            return self._resume_ref() is not None
        return True

    @property
    def running(self) -> bool:
        """A run is going: launched (a handle), its events read up to now, and neither finished
        nor judged gone, nor (a local run) its engine's process gone. A run whose events are not
        read yet is not running: a finished run opened never offers Stop run, not for a frame."""
        if self.handle is None or self._backlog is None or \
                self.state.event_count < self._backlog:
            return False
        is_alive = getattr(self.handle, "is_alive", None)  # a remote run's engine: asked by
        return self.state.finished is None and not self.ended and (  # EngineLiveness
            is_alive is None or is_alive())

    def _resume_ref(self) -> str | None:
        from kdtui.launch.resume import resume_ref

        return resume_ref(self.handle, self.watched)

    def _refresh_keys(self) -> None:
        """The footer, F1 help and palette offer Stop run while there is a run to stop, and
        Resume once it has ended with something to continue from (check_action)."""
        shown = (self.running, self._resume_ref() is not None)
        if shown != self._keys_shown:
            self._keys_shown = shown
            self.refresh_bindings()

    def action_train_from_cache(self) -> None:
        directory = cache_dir_of(next(iter(self.query(CacheJobPanel)), None))
        if directory is None:
            self.notify("Train from cache applies to a complete teacher-cache job", timeout=4)
            return
        run_started = self.state.run_started or {}
        config = run_started.get("config")
        self.app.train_from_cache(str(directory), config if isinstance(config, dict) else None)

    def action_samples(self) -> None:
        found = self.query(SamplesView)
        if found:
            found.first().focus()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        log = self.query_one(LogView)
        log.search(event.value)
        event.input.display = False
        log.focus()

    def on_key(self, event) -> None:
        box = self.query_one("#search", Input)
        if event.key == "escape" and box.has_focus:
            box.display = False
            self.query_one(LogView).focus()
            event.stop()

    def action_stop_run(self) -> None:
        handle = self.handle
        if handle is None or not self.running:
            self.notify("No running run to stop", timeout=3)
            return
        from kdtui.screens.dialogs import ConfirmScreen

        async def stop() -> None:
            try:
                await handle.cancel()
            except Exception as exc:  # noqa: BLE001 - any failure is said, never a crash
                # before, a cancel that failed on the box (its agent or python broken, a host
                # key refused) ended the whole dashboard with a worker traceback
                self.notify(f"Stop run failed: {exc}; the run may still be going: `kdtui "
                            f"cancel {handle.run_id}` from a shell", severity="error",
                            timeout=15)
                return
            self.notify("SIGTERM sent: the engine ends the run as cancelled", timeout=5)

        def decided(yes: bool | None) -> None:
            if yes:
                self.run_worker(stop(), group="cancel")

        self.app.push_screen(ConfirmScreen(
            f"Stop run {handle.run_id}?", self._stop_words(handle), yes="Stop the run",
            no="Keep it going"), decided)

    def _stop_words(self, handle: Any) -> str:
        """What a cancel does to this run (the engine's cancel, docs/dashboard.md): a training
        run ends after its current step with a checkpoint of it (one process; torchrun's ranks
        keep their periodic ones); apr and a cache job are only said to stop."""
        from kdtui.widgets.cache_job import CacheJobPanel

        if hasattr(handle, "link") or self.query(CacheJobPanel):  # apr; a teacher-cache job
            return "It gets SIGTERM and stops; the run is recorded as cancelled."
        return ("The engine gets SIGTERM: it ends after its current step, saves a checkpoint "
                "of it (under torchrun: its last periodic one stays) for `kdtui resume`, and "
                "records the run as cancelled.")

    def action_resume(self) -> None:
        from kdtui.launch.resume import no_resume_line

        ref = self._resume_ref()
        if ref is None:
            self.notify(no_resume_line(self.handle, self.watched), timeout=4, markup=False)
            return
        self._withdraw_resume_offer()
        self.app.resume_run(ref)  # type: ignore[attr-defined]

    def action_resume_refused(self) -> None:
        from kdtui.launch.resume import no_resume_line

        self.notify(no_resume_line(self.handle, self.watched), timeout=4, markup=False)

    def action_train_from_cache_refused(self) -> None:
        self.notify("Train from cache applies to a complete teacher-cache job", timeout=4)

    def action_back(self) -> None:
        if self.maximized is not None:  # a zoomed pane: Esc puts it back first
            self.minimize()
            return
        self.app.back_to_form()


def _asked_steps(launcher: Launcher | None, handle: RunHandle | None) -> int | None:
    """The steps the run was asked for: a kdengine launcher's config, or the handle's asked
    config (a local run's config.json). A profile's launcher maps steps to its own units (apr:
    epochs), so its config's steps are not what it will count."""
    engine_launcher = type(launcher).__module__.startswith("kdtui.launch.")
    steps = getattr(getattr(launcher, "config", None), "steps", None) if engine_launcher else None
    if steps is None and handle is not None:
        asked = getattr(handle, "asked_config", None)
        steps = asked.get("steps") if isinstance(asked, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


async def _follow_with_idle(follower: RunFollower):
    """Like RunFollower.follow, but yields None when a poll found nothing (a heartbeat)."""
    import asyncio

    while True:
        update = await follower.poll()
        if update:
            yield update
            continue
        yield None
        await asyncio.sleep(POLL_S)
