"""What an on-policy run's `sample` events and extra step/eval fields say, as plain data and
plain text: read by the run screen's samples pane and by headless watch (no Textual here).

An on-policy run (`lmbda` > 0, or `seq_kd`) writes a `sample` event every `sample_every` steps
(rows of that step's batch, split "train") and at each held-out evaluation (its first prompts,
split "val"); its step events carry the time split generate / teacher / student (docs/events.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SAMPLE_EVENT = "sample"
NEWLINE_MARK = "⏎"  # a completion's newlines, on a line that must stay one line
HEADLESS_SAMPLE_CELLS = 160  # a headless sample line is cut here (CI logs, a wide terminal)
# A completion is whatever bytes the model wrote: an untrained student writes ESC, BS, CR...,
# which moved the terminal's cursor (the pane's border drawn a cell off, headless watch's line
# overwritten). Each control character but newline and tab shows as its Unicode control picture.
_CONTROL_PICTURES = {c: chr(0x2400 + c) for c in range(0x20) if chr(c) not in "\n\t"}
_CONTROL_PICTURES |= {0x7F: "\u2421"} | {c: "\ufffd" for c in range(0x80, 0xA0)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Sample:
    """One completion of a `sample` event."""

    step: int
    split: str  # "train" (a row of the step's batch) or "val" (a fixed held-out prompt)
    index: int  # the row of the batch, or the held-out prompt's number
    source: str  # "student", or "teacher" (seq_kd samples from the teacher)
    prompt: str  # the prompt's last <= 300 characters
    completion: str
    tokens: int | None
    finished: bool | None  # False: cut at max_new_tokens
    teacher_logp: float | None  # the teacher's mean log-prob per completion token (T=1)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Sample | None:
        """The sample an event carries; None for another type or one without a step."""
        step = event.get("step")
        if event.get("type") != SAMPLE_EVENT or isinstance(step, bool) \
                or not isinstance(step, int):
            return None
        index = event.get("index")
        tokens = event.get("tokens")
        finished = event.get("finished")
        return cls(
            step=step, split=str(event.get("split") or "train"),
            index=index if isinstance(index, int) and not isinstance(index, bool) else 0,
            source=str(event.get("source") or "student"),
            prompt=printable(str(event.get("prompt") or "")),
            completion=printable(str(event.get("completion") or "")),
            tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
            finished=finished if isinstance(finished, bool) else None,
            teacher_logp=_number(event.get("teacher_logp")))

    @property
    def ending(self) -> str:
        """'finished' (EOS or a stop string), 'truncated' (max_new_tokens), or '' (not said)."""
        return {True: "finished", False: "truncated"}.get(self.finished, "")  # type: ignore[arg-type]

    def facts(self) -> list[str]:
        """What the pane's header and the headless line say about it, in that order."""
        facts = [f"step {self.step}", f"{self.split} #{self.index}"]
        if self.source != "student":
            facts.append(f"by the {self.source}")
        if self.tokens is not None:
            facts.append(f"{self.tokens} tok")
        if self.ending:
            facts.append(self.ending)
        if self.teacher_logp is not None:
            facts.append(f"teacher logp {self.teacher_logp:.3f}")
        return facts


def printable(text: str) -> str:
    """`text` with its control characters (but newline and tab) as visible pictures (ESC: ␛);
    a CRLF is a newline."""
    return text.replace("\r\n", "\n").translate(_CONTROL_PICTURES)


def one_line(text: str) -> str:
    """Text on one line: newlines shown as ⏎, tabs as a space."""
    return text.replace("\r\n", "\n").replace("\n", NEWLINE_MARK).replace("\t", " ")


def sample_line(sample: Sample, cells: int = HEADLESS_SAMPLE_CELLS) -> str:
    """Headless watch's line for a sample: its facts, the prompt's tail, the completion's start;
    one line, at most `cells` characters."""
    head = f"sample {' · '.join(sample.facts())}: "
    prompt = one_line(sample.prompt.strip())[-40:]
    text = f"{head}…{prompt} ▸ {one_line(sample.completion)}" if prompt else \
        f"{head}▸ {one_line(sample.completion)}"
    return text if len(text) <= cells else text[: cells - 1] + "…"


def _seconds(value: float) -> str:
    """Two significant digits: 0.31s, 1.2s, 12s (the split must fit a 36-cell panel)."""
    return f"{value:.2f}s" if value < 1 else f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def _sampled(event: dict[str, Any]) -> bool:
    """Whether the step's batch was generated: by the student (`on_policy`), or by the teacher
    (seq_kd: `on_policy` false, but it spent time generating)."""
    gen = _number(event.get("gen_s"))
    return event.get("on_policy") is True or (gen is not None and gen > 0)


def step_split(event: dict[str, Any]) -> str:
    """An on-policy step's time split, 'gen 1.2s teacher 0.31s student 0.52s' ('' for an
    off-policy step, which has none of these fields). A step trained on the dataset's
    completions (lmbda < 1) generated nothing: 'dataset: teacher 0.31s student 0.52s' when it
    timed its parts, else ''."""
    gen, teacher, student = (_number(event.get(k)) for k in ("gen_s", "teacher_s", "student_s"))
    if gen is None and teacher is None and student is None:
        return ""
    parts = []
    if not _sampled(event):
        parts.append("dataset:")
    elif gen is not None:
        parts.append(f"gen {_seconds(gen)}")
    if teacher is not None:
        parts.append(f"teacher {_seconds(teacher)}")
    if student is not None:
        parts.append(f"student {_seconds(student)}")
    return " ".join(parts)


def generation_rate(event: dict[str, Any]) -> float | None:
    """The step's generated tokens per second (None off-policy, or on a dataset batch)."""
    if not _sampled(event):
        return None
    return _number(event.get("gen_tokens_per_s"))


def headless_split(event: dict[str, Any]) -> str:
    """What headless watch adds to an on-policy step's line, in the engine's key=value words:
    'gen_s=1.23 teacher_s=0.31 student_s=0.52 gen_tok/s=2496 gen_len=32' ('batch=dataset
    teacher_s=... student_s=...' for a dataset batch; '' for an off-policy step)."""
    if not step_split(event):
        return ""
    sampled = _sampled(event)
    parts = [] if sampled else ["batch=dataset"]
    for key in ("gen_s", "teacher_s", "student_s") if sampled else ("teacher_s", "student_s"):
        value = _number(event.get(key))
        if value is not None:
            parts.append(f"{key}={value:.2f}")
    rate, length = generation_rate(event), _number(event.get("gen_len"))
    if rate is not None:
        parts.append(f"gen_tok/s={rate:.0f}")
    if length is not None and sampled:
        parts.append(f"gen_len={length:.0f}")
    return " ".join(parts)


@dataclass(frozen=True)
class HeldOutGeneration:
    """An on-policy eval's scores of the student's completions to the held-out prompts."""

    step: int
    kl: float | None  # val_gen_kl: mean reverse KL per token, KL(student || teacher), T=1
    teacher_logp: float | None  # val_gen_teacher_logp
    length: float | None  # val_gen_len, mean completion tokens

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> HeldOutGeneration | None:
        """None for an eval without the on-policy fields (an off-policy run's)."""
        kl, logp = _number(event.get("val_gen_kl")), _number(event.get("val_gen_teacher_logp"))
        step = event.get("step")
        if kl is None and logp is None or not isinstance(step, int) or isinstance(step, bool):
            return None
        return cls(step, kl, logp, _number(event.get("val_gen_len")))


def held_out_summary(first: HeldOutGeneration | None, last: HeldOutGeneration,
                     cells: int) -> str:
    """The held-out scores at the first eval (step 0, the baseline) and now, 'val gen KL 0.900
    → 0.180 · teacher logp -2.600 → -1.000' (val_gen_kl: the chart's and the verdict's name),
    in the longest wording that fits `cells`: the KL should fall and the teacher's log-prob
    rise as the student learns."""
    def num(x: float | None, digits: int) -> str:
        return f"{x:.{digits}f}" if x is not None else "–"

    base = first if first is not None and first.step != last.step else None
    length = f" · len {last.length:.0f}" if last.length is not None else ""
    forms = []
    for digits in (3, 2):
        kl, logp = num(last.kl, digits), num(last.teacher_logp, digits)
        if base is not None:
            kl = f"{num(base.kl, digits)} → {kl}"
            logp = f"{num(base.teacher_logp, digits)} → {logp}"
        forms += [f"val gen KL {kl} · teacher logp {logp}{length}",
                  f"val gen KL {kl} · teacher logp {logp}", f"val gen KL {kl} · logp {logp}",
                  f"gen KL {kl} · logp {logp}"]
        forms.append(f"gen KL {kl} · logp {logp}".replace(" → ", "→"))
        forms.append(f"KL {kl} · logp {logp}".replace(" → ", "→"))  # the narrowest pane
    return next((form for form in forms if len(form) <= cells), forms[-1])


def wants_samples(config: dict[str, Any] | None) -> bool:
    """Whether a run's config makes it on-policy (or sequence-level KD): it will sample."""
    if not isinstance(config, dict):
        return False
    lmbda = _number(config.get("lmbda"))
    return bool((lmbda is not None and lmbda > 0) or config.get("seq_kd") is True)


class StepLineSplits:
    """Headless watch: the engine's 'step N/M loss=...' line of an on-policy step gets the step
    event's split (headless_split) at its end. The engine writes a step's event before its
    line, so the event is seen first (in the same poll or an earlier one)."""

    KEEP = 256  # splits waiting for their line; a line that never comes is forgotten

    def __init__(self) -> None:
        self._waiting: dict[int, str] = {}

    def note(self, event: dict[str, Any]) -> None:
        step = event.get("step")
        if event.get("type") != "step" or not isinstance(step, int):
            return
        split = headless_split(event)
        if split:
            self._waiting[step] = split
            if len(self._waiting) > self.KEEP:
                del self._waiting[next(iter(self._waiting))]

    def line(self, line: str) -> str:
        if not self._waiting or not line.startswith("step "):
            return line
        head = line[5:].split("/", 1)[0]
        split = self._waiting.pop(int(head), "") if head.isdigit() else ""
        if not split or " gen=" in line or "gen_s=" in line:  # the engine said it itself
            return line
        return f"{line} {split}"
