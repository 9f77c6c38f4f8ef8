"""The smoke verdict F-DISTILL-SMOKE-001, computed from a run's events.

Pass: the held-out validation loss at the end is below the one at step 0. Fail: it is not.
Inconclusive, with the reason: an eval is missing, the run crashed or was cancelled, or a loss was
NaN/inf. kdengine writes it as its last-but-one event; `kdengine verdict RUN_DIR` and the
dashboard recompute it from the same events, so all three always agree. Imports no torch.

An on-policy run (one whose evaluations carry `val_gen_kl`) is judged on what the student writes:
the held-out reverse KL of its own completions to fixed prompts, graded by the teacher, must go
down (`loss_kind: "val_gen_kl"`); val_loss, the data's completions, is only reported beside it.

`distill_report` reads the same evals for what the smoke verdict cannot say: val CE and val KD
apart, the teacher's own CE, the share of the student-teacher CE gap closed, and warnings when
the objective misleads (CE up while val_loss went down; a teacher no better than the student).

An engine without held-out evaluation (aprender's `apr distill`, through its profile) writes its
own verdict from training-batch losses, marked `loss_kind: "train_batch"`; in a stream with no
eval events that verdict stands, labelled as what its losses are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kdengine import events as ev

VERDICT_ID = "F-DISTILL-SMOKE-001"
CACHE_JOB = "cache-teacher"  # run_started's `job` of `kdengine cache-teacher` (no verdict applies)
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
# what the verdict's two losses are: held-out val_loss, the held-out reverse KL of an on-policy
# run's own completions, or (apr) training-batch losses
VAL_LOSS, GEN_KL, TRAIN_BATCH = "val", "val_gen_kl", "train_batch"
_LABELS = {VAL_LOSS: "val loss", GEN_KL: "val gen KL", TRAIN_BATCH: "train-batch loss"}
# the event field each kind's two losses are read from: the verdict event writes them as
# initial_<field> and final_<field> (docs/events.md), so a name says what the number is
LOSS_FIELDS = {VAL_LOSS: "val_loss", GEN_KL: "val_gen_kl", TRAIN_BATCH: "loss"}
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 2}
# an evaluation's fields as the screens name them (the verdict, the run screen, compare)
EVAL_LABELS = {"val_loss": _LABELS[VAL_LOSS], "val_gen_kl": _LABELS[GEN_KL], "val_ce": "val CE",
               "val_kd": "val KD"}


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    initial_loss: float | None = None  # at `initial_step`
    final_loss: float | None = None  # at final_step
    final_step: int | None = None
    id: str = VERDICT_ID
    # TRAIN_BATCH: the two losses are training-batch losses; None: no losses apply (a cache job)
    loss_kind: str | None = VAL_LOSS
    # the verdict event this one was read from (an engine's own, apr's), less its envelope:
    # to_event gives it back whole, so `kdengine verdict --json` prints what the stream holds
    recorded: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def initial_step(self) -> int:
        """Where initial_loss is from: step 0's evaluation, or (training batches, apr) the first
        step's batch, step 1: there is no step-0 evaluation."""
        return 1 if self.loss_kind == TRAIN_BATCH else 0

    @property
    def loss_label(self) -> str:
        return _LABELS.get(self.loss_kind, str(self.loss_kind))  # type: ignore[arg-type]

    @property
    def initial_val_loss(self) -> float | None:
        return self.initial_loss if self.loss_kind == VAL_LOSS else None

    @property
    def final_val_loss(self) -> float | None:
        return self.final_loss if self.loss_kind == VAL_LOSS else None

    @property
    def delta(self) -> float | None:
        if self.initial_loss is None or self.final_loss is None:
            return None
        return self.final_loss - self.initial_loss

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_event(self) -> dict[str, Any]:
        """The `verdict` event's payload (docs/events.md): the two losses as initial_<field>
        and final_<field>, <field> the event field they are read from (LOSS_FIELDS): val_loss,
        val_gen_kl (on-policy), or loss (training batches); none for a cache job."""
        out = asdict(self)
        recorded = out.pop("recorded") or {}
        initial, final = out.pop("initial_loss"), out.pop("final_loss")
        loss_field = LOSS_FIELDS.get(self.loss_kind)  # type: ignore[arg-type]
        if loss_field is None:
            return {**out, **recorded}
        return {**out, f"initial_{loss_field}": initial, f"final_{loss_field}": final,
                "delta": self.delta, **recorded}

    @classmethod
    def from_train_batch_event(cls, event: dict[str, Any]) -> Verdict:
        """The verdict an engine without held-out evaluation (apr) wrote, kept whole: its
        initial_val_loss/final_val_loss (null), source and the summary's extras included."""
        recorded = {k: v for k, v in event.items() if k not in ev.ENVELOPE}
        return cls(event.get("status", INCONCLUSIVE), event.get("reason", ""),
                   initial_loss=event.get("initial_loss"), final_loss=event.get("final_loss"),
                   final_step=event.get("final_step"),
                   loss_kind=TRAIN_BATCH, recorded=recorded)

    def summary(self) -> str:
        head = f"{self.id} {self.status.upper()}"
        if self.initial_loss is not None and self.final_loss is not None:
            initial, final, delta = loss_texts(self.initial_loss, self.final_loss)
            head += (f": {self.loss_label} {initial} (step {self.initial_step}) -> "
                     f"{final} (step {self.final_step}), delta {delta}")
        return f"{head}. {self.reason}"


def loss_texts(initial: float, final: float) -> tuple[str, str, str]:
    """The two losses and their delta as the verdict prints them: 4 decimals, or as many more
    as it takes for two different losses to read different and a delta that is not zero to
    read so (a PASS by 0.00003 printed `delta -0.0000` and equal losses); a delta below 1e-4
    is written in e-notation (`-3.10e-05`). Equal losses: `+0.0000`."""
    delta = final - initial
    if delta == 0:
        return f"{initial:.4f}", f"{final:.4f}", "+0.0000"
    places = 4
    while places < 17 and f"{initial:.{places}f}" == f"{final:.{places}f}":
        places += 1
    delta_text = f"{delta:+.4f}" if abs(delta) >= 1e-4 else f"{delta:+.2e}"
    return f"{initial:.{places}f}", f"{final:.{places}f}", delta_text


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _step(event: dict[str, Any]) -> int | None:
    """An event's step, or None where it is not a number of steps (an edited or damaged line:
    the reader is tolerant, so that event counts as having no step)."""
    step = event.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def verdict_from_events(events: Iterable[dict[str, Any]]) -> Verdict:
    evals: list[dict[str, Any]] = []
    finished: dict[str, Any] | None = None
    bad_loss: dict[str, Any] | None = None
    last_step = 0
    engine_verdict: dict[str, Any] | None = None
    job = None
    on_disk: int | None = None  # a cache job's rows in finished shards (its steps: rows scored)
    for event in events:
        kind = event.get("type")
        if kind == ev.RUN_STARTED:
            job = event.get("job", job)
        if isinstance(event.get("rows_written"), int):
            on_disk = event["rows_written"]
        if kind == ev.STEP:
            last_step = max(last_step, _step(event) or 0)
            if bad_loss is None and not _finite(event.get("loss")):
                bad_loss = event
        elif kind == ev.EVAL:
            evals.append(event)
            # the on-policy verdict judges val_gen_kl: a NaN/inf there is as bad as in val_loss
            if bad_loss is None and (not _finite(event.get("val_loss")) or (
                    GEN_KL in event and not _finite(event.get(GEN_KL)))):
                bad_loss = event
        elif kind == ev.RUN_FINISHED:
            finished = event
            if isinstance(event.get("steps"), int):  # the engine's last step, logged or not
                last_step = max(last_step, event["steps"])
                on_disk = event["steps"] if job == CACHE_JOB else on_disk  # rows written
        elif kind == ev.VERDICT and event.get("loss_kind") == TRAIN_BATCH:
            engine_verdict = event

    if job == CACHE_JOB:
        return _cache_job_verdict(finished, last_step, on_disk)
    if engine_verdict is not None and not evals:
        return Verdict.from_train_batch_event(engine_verdict)

    initial = next((e for e in evals if _step(e) == 0), None)
    later = [e for e in evals if (_step(e) or 0) > 0]
    final = later[-1] if later else None
    key = GEN_KL if any(GEN_KL in e for e in evals) else "val_loss"
    init_loss = initial.get(key) if initial else None
    final_loss = final.get(key) if final else None
    known = dict(
        initial_loss=init_loss if _finite(init_loss) else None,
        final_loss=final_loss if _finite(final_loss) else None,
        final_step=_step(final) if final else None,
        **({"loss_kind": GEN_KL} if key == GEN_KL else {}),
    )

    if bad_loss is not None:
        # a step's training loss, or an evaluation's val_loss (step 0's is before any training)
        field = ("loss" if bad_loss.get("type") == ev.STEP else "val_loss" if not _finite(
            bad_loss.get("val_loss")) else GEN_KL)
        # named as the verdict's labels name them (`val loss`, `val gen KL`: the panel, the
        # summary line), not by their event fields
        what = {"loss": "the loss", "val_loss": _LABELS[VAL_LOSS]}.get(field, _LABELS[GEN_KL])
        return Verdict(INCONCLUSIVE, f"{what} became {bad_loss.get(field)} at step "
                       f"{bad_loss.get('step')}", **known)
    if finished is None:
        return Verdict(INCONCLUSIVE, f"the run has not finished (last step {last_step})", **known)
    status = finished.get("status")
    if status != "completed":
        why = finished.get("error") or f"exit code {finished.get('exit_code')}"
        return Verdict(INCONCLUSIVE, f"the run {status} at step {last_step}: {why}", **known)
    if initial is None:
        return Verdict(INCONCLUSIVE, "no validation loss at step 0", **known)
    if final is None:
        return Verdict(INCONCLUSIVE, "no validation loss after step 0", **known)
    if key == GEN_KL and (init_loss is None or final_loss is None):
        # another eval of the stream has it, so the run is on-policy: this one judges nothing
        where = "at step 0" if init_loss is None else "after step 0"
        return Verdict(INCONCLUSIVE, f"no {_LABELS[GEN_KL]} {where}", **known)
    if key == GEN_KL:  # on-policy: the student's own writing, graded by the teacher
        beside = _val_loss_beside(initial, final)
        if final_loss < init_loss:
            return Verdict(PASS, f"on-policy {_LABELS[GEN_KL]} went down; {beside}", **known)
        return Verdict(FAIL, f"on-policy {_LABELS[GEN_KL]} did not go below step 0; {beside}",
                       **known)
    if final_loss < init_loss:
        return Verdict(PASS, "the held-out validation loss went down", **known)
    return Verdict(FAIL, "the held-out validation loss did not go below its step-0 value",
                   **known)


def _cache_job_verdict(finished: dict[str, Any] | None, scored: int,
                       on_disk: int | None) -> Verdict:
    """`kdengine cache-teacher` trains nothing, so the smoke verdict does not apply: its end is
    the job's own (done, or why not), under its own id. Its progress events count the rows
    scored; a stopped job keeps only those in finished shards (`rows_written`), so both are
    named where they differ."""
    rows = f"{scored:,} rows scored" + (f", {on_disk:,} on disk" if on_disk is not None
                                        and on_disk != scored else "")
    if finished is None:
        return Verdict(INCONCLUSIVE, f"the cache job has not finished ({rows})",
                       id=CACHE_JOB, loss_kind=None)
    if finished.get("status") != "completed":
        why = finished.get("error") or f"exit code {finished.get('exit_code')}"
        return Verdict(INCONCLUSIVE, f"the cache job {finished.get('status')} after {rows}: "
                       f"{why}", id=CACHE_JOB, loss_kind=None)
    return Verdict(PASS, f"the teacher cache is complete ({scored:,} rows); a cache job trains "
                   "nothing, so no smoke verdict applies", id=CACHE_JOB, loss_kind=None)


def _val_loss_beside(initial: dict[str, Any], final: dict[str, Any]) -> str:
    a, b = initial.get("val_loss"), final.get("val_loss")
    if _finite(a) and _finite(b):  # short: the panel is 40 columns wide at 80x24
        return f"{_LABELS[VAL_LOSS]} {a:.3f} -> {b:.3f}"
    return f"{_LABELS[VAL_LOSS]} not known"


def verdict_for_run(run_dir: str) -> Verdict:
    return verdict_from_events(ev.iter_run_events(run_dir))


# -- whether distillation helped: beside the smoke verdict, never instead of it ------------------

CE_UP_WHILE_OBJECTIVE_DOWN = "val CE up while val loss went down"
TEACHER_NO_BETTER = "teacher's CE ≥ student's at step 0"


@dataclass(frozen=True)
class DistillReport:
    """What the evals say about the student's language modelling, apart from the objective.

    val_loss is alpha*CE + (1-alpha)*T^2*KD: it falls with the KD term whatever happens to the
    student's CE, and it cannot be compared across alphas. This reads val_ce and val_kd apart,
    with the teacher's own held-out CE (`val_teacher_ce`, measured at step 0), and says when the
    objective misleads: CE went up while val_loss went down, or the teacher is no better than
    the untrained student (a random or wrong teacher)."""

    initial_ce: float | None = None
    latest_ce: float | None = None
    initial_kd: float | None = None
    latest_kd: float | None = None
    teacher_ce: float | None = None
    latest_step: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def gap_closed(self) -> float | None:
        """The share of the step-0 student-teacher CE gap the student closed (1: it reached the
        teacher; negative: it moved away)."""
        if None in (self.initial_ce, self.latest_ce, self.teacher_ce):
            return None
        gap = self.initial_ce - self.teacher_ce  # type: ignore[operator]
        if gap <= 0:
            return None
        return (self.initial_ce - self.latest_ce) / gap  # type: ignore[operator]


def distill_report(events: Iterable[dict[str, Any]]) -> DistillReport:
    initial: dict[str, Any] | None = None
    latest: dict[str, Any] | None = None
    for event in events:
        if event.get("type") != ev.EVAL:
            continue
        if _step(event) == 0 and initial is None:
            initial = event
        elif (_step(event) or 0) > 0:
            latest = event

    def num(event: dict[str, Any] | None, key: str) -> float | None:
        value = event.get(key) if event else None
        return float(value) if _finite(value) else None

    report = DistillReport(
        initial_ce=num(initial, "val_ce"), latest_ce=num(latest, "val_ce"),
        initial_kd=num(initial, "val_kd"), latest_kd=num(latest, "val_kd"),
        teacher_ce=num(initial, "val_teacher_ce"),
        latest_step=_step(latest) if latest else None)
    warnings = []
    loss0, loss1 = num(initial, "val_loss"), num(latest, "val_loss")
    if (report.initial_ce is not None and report.latest_ce is not None and loss0 is not None
            and loss1 is not None and report.latest_ce > report.initial_ce and loss1 < loss0):
        warnings.append(CE_UP_WHILE_OBJECTIVE_DOWN)
    if (report.teacher_ce is not None and report.initial_ce is not None
            and report.teacher_ce >= report.initial_ce):
        warnings.append(TEACHER_NO_BETTER)
    return replace(report, warnings=tuple(warnings))
