"""Turn `apr distill`'s log lines into kdengine-protocol events, so the same dashboard shows them.

apr writes no events.jsonl; its launch.log is all there is. `AprLogParser.feed(line)` returns the
events a line means: `step` (from `  Step N/M: loss: X`), `epoch` (from `Epoch N/M: loss: X`),
`checkpoint`, `log` (level error: Rust panics with their message and backtrace, CUDA errors,
`error:` lines), `stage`, and at the end one `verdict` and one `run_finished`. Matching ignores
case, indentation, ANSI colours and a leading tag or timestamp: the seed's watcher went blind on
`  Step` (it grepped `^step`) and on `ERROR` (it grepped `error`).

The verdict is computed from apr's initial_loss and final_loss, which are TRAINING-BATCH losses:
apr distill has no held-out evaluation. The verdict event says so in its reason and carries
`loss_kind: "train_batch"`; its `initial_val_loss`/`final_val_loss` stay None. Imports no torch.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kdengine.events import PROTOCOL_VERSION
from kdengine.verdict import FAIL, INCONCLUSIVE, PASS, VERDICT_ID

LOSS_KIND = "train_batch"
TRAIN_BATCH_NOTE = ("these are TRAINING-BATCH losses: apr distill has no held-out evaluation, so "
                    "this is not the validation loss F-DISTILL-SMOKE-001 asks for")

_NUM = r"[-+]?(?:nan|inf(?:inity)?|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_STEP = re.compile(r"\bstep\s+(\d+)\s*/\s*(\d+)\b.*?\bloss\s*[:=]\s*(" + _NUM + r")", re.I)
_EPOCH = re.compile(r"\bepoch\s+(\d+)\s*/\s*(\d+)\b.*?\bloss\s*[:=]\s*(" + _NUM + r")", re.I)
_COMPLETE = re.compile(
    r"distillation\s+complete\s*:?\s*initial_loss\s*=\s*(" + _NUM + r")\s*(?:→|->|=>)\s*"
    r"final_loss\s*=\s*(" + _NUM + r")(?:\s*\(\s*(\d+)\s*steps?\s*,\s*(" + _NUM + r")\s*s\s*\))?",
    re.I)
_SMOKE = re.compile(
    r"\[\s*smoke\s*\]\s*(\d+)\s*steps?\s+in\s+(" + _NUM + r")\s*s\s*:\s*initial_loss\s*=\s*("
    + _NUM + r")\s*,\s*final_loss\s*=\s*(" + _NUM + r")(?:\s*,\s*throughput\s*=\s*(" + _NUM
    + r")\s*steps?/s)?", re.I)
_CHECKPOINT = re.compile(r"\bcheckpoint\s+saved\s+at\s+step\s+(\d+)\s*:\s*(\S.*?)\s*$", re.I)
_PANIC = re.compile(r"(?:thread\s+'([^']*)'\s+)?panicked\s+at\s*(.*)$", re.I)
# "cuda ... error": up to three words between ("CUDA kernel launch error", "cuda driver error")
_CUDA = re.compile(r"CUDA_ERROR_\w+|\bcuda\w*(?:\s+[\w-]+){0,3}?\s*error\b|"
                   r"\bcudaError\w*|\bcuda\b.*\bout of memory\b|\bCUBLAS_STATUS_(?!SUCCESS)\w+",
                   re.I)
# "error: ...", "[ERROR] ...", "[12:00:01] Error ...", "... ERROR ...": not "error_rate=0.1"
_ERROR = re.compile(r"^\s*(?:\[[^\]]*\]\s*)*\[?\s*(?:error|fatal)\b(?!_)|"
                    r"\b(?:error|fatal)\s*[:\]]|(?-i:\b(?:ERROR|FATAL)\b)", re.I)
# a line's leading tags and timestamps ("[12:00:01] ", "2026-11-30T12:00:01Z INFO ", "[ERROR] ")
_PREFIX = re.compile(r"^\s*(?:(?:\[[^\]]*\]|\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?|"
                     r"\d\d:\d\d:\d\d(?:[.,]\d+)?|(?:TRACE|DEBUG|INFO|WARN|WARNING|ERROR)\b:?)"
                     r"\s*)+")
_TRACE_LINE = re.compile(r"^\s*(?:note:|stack backtrace:|\d+:\s|at\s+\S)", re.I)


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line)


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class _Panic:
    thread: str
    where: str
    message: str = ""
    lines: list[str] = field(default_factory=list)


def train_batch_verdict(initial: float | None, final: float | None,
                        final_step: int | None, *, source: str) -> dict[str, Any]:
    """F-DISTILL-SMOKE-001 from apr's training-batch losses, as a `verdict` event payload."""
    base: dict[str, Any] = {
        "id": VERDICT_ID, "loss_kind": LOSS_KIND, "initial_loss": initial, "final_loss": final,
        "initial_val_loss": None, "final_val_loss": None, "final_step": final_step,
        "delta": (final - initial) if _finite(initial) and _finite(final) else None,
        "source": source,
    }
    if not (_finite(initial) and _finite(final)):
        return {**base, "status": INCONCLUSIVE,
                "reason": f"apr reported initial_loss={initial}, final_loss={final}: not both "
                          f"finite; {TRAIN_BATCH_NOTE}"}
    if final < initial:
        return {**base, "status": PASS,
                "reason": f"the training-batch loss went down ({initial:.4f} -> {final:.4f}); "
                          f"{TRAIN_BATCH_NOTE}"}
    return {**base, "status": FAIL,
            "reason": f"the training-batch loss did not go down ({initial:.4f} -> {final:.4f}); "
                      f"{TRAIN_BATCH_NOTE}"}


class AprLogParser:
    """Stateful, line-at-a-time: feed it launch.log's complete lines in order."""

    def __init__(self, *, epochs: int | None = None) -> None:
        self.epochs = epochs  # from the invocation, when known: total steps of per-epoch counts
        self.seq = 0
        self.last_step = 0  # global step of the last step line
        self.initial_loss: float | None = None  # first step loss (used when no summary comes)
        self.last_loss: float | None = None
        self.finished: dict[str, Any] | None = None
        self.verdict: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self._base = 0  # steps of the epochs before the current one (per-epoch numbering)
        self._local = 0  # last N of `Step N/M`
        self._per_epoch = False
        self._epoch = 0
        self._steps_in_epoch = 0
        self._train_started = False
        self._panic: _Panic | None = None

    # -- events -----------------------------------------------------------------------------
    def _event(self, type_: str, **payload: Any) -> dict[str, Any]:
        event = {"v": PROTOCOL_VERSION, "seq": self.seq, "t": round(time.time(), 3),
                 "type": type_, "engine": "apr", **payload}
        self.seq += 1
        return event

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, raw: str) -> list[dict[str, Any]]:
        """The events one complete log line means (most lines mean none)."""
        line = strip_ansi(raw).rstrip("\r\n")
        out: list[dict[str, Any]] = []
        if self._panic is not None:
            if self._continues_panic(line):
                return out
            out += self._close_panic()
        if not line.strip():
            return out
        match = _PANIC.search(line)
        if match:
            where = match.group(2).strip().rstrip(":")
            self._panic = _Panic(match.group(1) or "?", where, lines=[line])
            if where.startswith("'"):  # Rust < 1.73: panicked at 'message', file:line:col
                message, _, place = where[1:].rpartition("',")
                self._panic.message, self._panic.where = message, place.strip()
            return out
        if self.finished is not None and self.verdict is not None:
            # after the end only errors matter (a crash while writing the student, say)
            return out + self._errors(line)
        for handler in (self._summary, self._step, self._epoch_line, self._checkpoint):
            events = handler(line)
            if events is not None:
                return out + events
        return out + self._errors(line)

    def flush(self) -> list[dict[str, Any]]:
        """Nothing more arrived for now: a panic block held back for its message is complete."""
        return self._close_panic() if self._panic is not None else []

    def finish(self, exit_code: int | None = None, why: str = "", *,
               cancelled: bool = False) -> list[dict[str, Any]]:
        """The apr process is gone. Ends the run if its log did not: verdict + run_finished
        (`cancelled`: a `kdtui cancel` or the dashboard's cancel stopped it)."""
        out = self.flush()
        if self.finished is not None:
            return out
        if cancelled:
            out += self._inconclusive(f"the run was cancelled at step {self.last_step}")
            out.append(self._end("cancelled", exit_code))
            return out
        if exit_code == 0 and self.initial_loss is not None and self.last_loss is not None:
            # exited cleanly but printed no summary: the step losses are all there is
            self.verdict = train_batch_verdict(self.initial_loss, self.last_loss, self.last_step,
                                               source="step lines (no summary line)")
            out.append(self._event("verdict", **self.verdict))
            out.append(self._end("completed", 0))
            return out
        reason = why or ("the apr process ended without its completion line"
                         + (f" (exit code {exit_code})" if exit_code is not None else ""))
        out += self._inconclusive(f"{reason}, at step {self.last_step}")
        out.append(self._end("failed", exit_code, error=reason))
        return out

    # -- line kinds -------------------------------------------------------------------------
    def _continues_panic(self, line: str) -> bool:
        panic = self._panic
        assert panic is not None
        if _STEP.search(line) or _EPOCH.search(line):
            return False  # training goes on: the panic was on another thread
        if _TRACE_LINE.match(line) or (line.startswith((" ", "\t")) and panic.message):
            panic.lines.append(line)
            return True
        if not panic.message and line.strip():
            # Rust >= 1.73 puts the message on the next line (a logger may prefix it too)
            panic.message = _PREFIX.sub("", line).strip() or line.strip()
            panic.lines.append(line)
            return True
        return False

    def _close_panic(self) -> list[dict[str, Any]]:
        panic, self._panic = self._panic, None
        assert panic is not None
        message = f"panic in thread '{panic.thread}': {panic.message or '(no message)'}" + (
            f" at {panic.where}" if panic.where else "")
        event = self._event("log", level="error", kind="panic", message=message,
                            traceback="\n".join(panic.lines), step=self.last_step)
        self.errors.append(event)
        out = [event]
        if panic.thread == "main" and self.finished is None:
            # a panic on the main thread ends a Rust program: the run is over
            out += self._inconclusive(f"apr panicked at step {self.last_step}: "
                                      f"{panic.message or panic.where}")
            out.append(self._end("failed", 101, error=message))
        return out

    def _errors(self, line: str) -> list[dict[str, Any]]:
        if _CUDA.search(line):
            kind = "cuda"
        elif _ERROR.search(line):
            kind = "error"
        else:
            return []
        event = self._event("log", level="error", kind=kind, message=line.strip(),
                            step=self.last_step)
        self.errors.append(event)
        return [event]

    def _step(self, line: str) -> list[dict[str, Any]] | None:
        match = _STEP.search(line)
        if not match:
            return None
        local, per, loss = int(match.group(1)), int(match.group(2)), _num(match.group(3))
        if local <= self._local and self._local > 0:
            # the count restarted: apr numbers steps within each epoch
            self._base += self._local
            self._per_epoch = True
            if not self._epoch:
                self._epoch = 1
        self._local = local
        step = self._base + local
        self.last_step = step
        self._steps_in_epoch += 1
        if self.initial_loss is None and _finite(loss):
            self.initial_loss = loss
        self.last_loss = loss
        total = per * self.epochs if (self._per_epoch and self.epochs) else \
            (None if self._per_epoch else per)
        out = self._start_train()
        out.append(self._event("step", step=step, total_steps=total, loss=loss,
                               epoch_step=local, epoch=self._epoch + 1 if self._per_epoch
                               else None, loss_kind=LOSS_KIND))
        return out

    def _epoch_line(self, line: str) -> list[dict[str, Any]] | None:
        match = _EPOCH.search(line)
        if not match:
            return None
        epoch, epochs, loss = int(match.group(1)), int(match.group(2)), _num(match.group(3))
        self.epochs = self.epochs or epochs
        out = self._start_train()
        if self._steps_in_epoch == 0:
            # a log with epoch lines only: the chart still gets a point per epoch
            self.last_step += 1
            self.last_loss = loss
            if self.initial_loss is None and _finite(loss):
                self.initial_loss = loss
            out.append(self._event("step", step=self.last_step, total_steps=None, loss=loss,
                                   epoch=epoch, loss_kind=LOSS_KIND, from_epoch_line=True))
        out.append(self._event("epoch", epoch=epoch, epochs=epochs, loss=loss,
                               step=self.last_step, loss_kind=LOSS_KIND))
        self._epoch = epoch
        self._steps_in_epoch = 0
        return out

    def _checkpoint(self, line: str) -> list[dict[str, Any]] | None:
        match = _CHECKPOINT.search(line)
        if not match:
            return None
        return [self._event("checkpoint", step=int(match.group(1)), path=match.group(2))]

    def _summary(self, line: str) -> list[dict[str, Any]] | None:
        match = _COMPLETE.search(line)
        if match:
            steps = int(match.group(3)) if match.group(3) else self.last_step
            return self._conclude(_num(match.group(1)), _num(match.group(2)), steps,
                                  "'✓ Distillation complete' line",
                                  duration=_num(match.group(4)))
        match = _SMOKE.search(line)
        if match:
            return self._conclude(_num(match.group(3)), _num(match.group(4)),
                                  int(match.group(1)), "[SMOKE] line",
                                  duration=_num(match.group(2)),
                                  throughput=_num(match.group(5)))
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            try:
                data = json.loads(stripped)
            except ValueError:
                return None
            if isinstance(data, dict) and ("final_loss" in data or "status" in data):
                return self._from_json(data)
        return None

    def _from_json(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        status = str(data.get("status", "completed")).lower()
        steps = data.get("steps_completed")
        steps = int(steps) if isinstance(steps, (int, float)) else self.last_step
        initial, final = data.get("initial_loss"), data.get("final_loss")
        initial = float(initial) if isinstance(initial, (int, float)) else None
        final = float(final) if isinstance(final, (int, float)) else None
        if status != "completed":
            out = self._inconclusive(f"apr's --json summary says status={status!r}",
                                     initial=initial, final=final, steps=steps)
            out.append(self._end("failed", None, error=f"apr status {status}", steps=steps))
            return out
        return self._conclude(initial, final, steps, "--json summary",
                              best_loss=data.get("best_loss"),
                              duration=data.get("duration_seconds"))

    # -- endings ----------------------------------------------------------------------------
    def _start_train(self) -> list[dict[str, Any]]:
        if self._train_started:
            return []
        self._train_started = True
        return [self._event("stage", stage="train", state="running", elapsed=0.0,
                            detail="apr distill is training")]

    def _conclude(self, initial: float | None, final: float | None, steps: int, source: str,
                  **extra: Any) -> list[dict[str, Any]]:
        if self.verdict is not None:
            return []  # [SMOKE] then ✓, or ✓ then --json: the first summary decided
        out = self._start_train()
        self.last_step = max(self.last_step, steps)
        out.append(self._event("stage", stage="train", state="done", elapsed=0.0,
                               detail=f"{steps} steps"))
        self.verdict = train_batch_verdict(initial, final, steps, source=source)
        self.verdict.update({k: v for k, v in extra.items() if v is not None})
        out.append(self._event("verdict", **self.verdict))
        out.append(self._end("completed", 0, steps=steps))
        return out

    def _inconclusive(self, reason: str, *, initial: float | None = None,
                      final: float | None = None, steps: int | None = None) -> list[dict]:
        if self.verdict is not None:
            return []
        initial = initial if initial is not None else self.initial_loss
        final = final if final is not None else self.last_loss
        self.verdict = {
            "id": VERDICT_ID, "status": INCONCLUSIVE, "loss_kind": LOSS_KIND,
            "reason": f"{reason}; the run did not finish, so no verdict ({TRAIN_BATCH_NOTE})",
            "initial_loss": initial, "final_loss": final, "initial_val_loss": None,
            "final_val_loss": None, "delta": None,
            "final_step": steps if steps is not None else self.last_step, "source": "log",
        }
        return [self._event("verdict", **self.verdict)]

    def _end(self, status: str, exit_code: int | None, *, error: str = "",
             steps: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": status, "exit_code": exit_code,
                                   "steps": steps if steps is not None else self.last_step}
        if error:
            payload["error"] = error
            payload["stage"] = "train"
        self.finished = self._event("run_finished", **payload)
        return self.finished


def parse_log(text: str, *, epochs: int | None = None, exit_code: int | None = None,
              ended: bool = False) -> list[dict[str, Any]]:
    """All events of a whole log (tests, `kdtui watch` of a finished run). `ended`: the process
    is gone, so a log without its completion line ends the run as failed."""
    parser = AprLogParser(epochs=epochs)
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        events += parser.feed(line)
    events += parser.finish(exit_code) if ended else parser.flush()
    return events
