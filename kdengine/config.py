"""The one schema of a KD run: every field's type, default, bounds and help text.

The engine's CLI flags, the dashboard's form fields and validators, the remote command line and
the run manifest are all generated from `FIELDS`, so a flag cannot drift from what the engine
takes and a value cannot be silently dropped. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEMO_TEACHER = "demo://teacher"
DEMO_STUDENT = "demo://student"
DEMO_DATA = "demo://python-stdlib"

LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd")
LR_SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TEACHER_DTYPES = ("auto", "float8")
STUDENT_MATMULS = ("auto", "float8")  # kdengine.models.fp8_train
TRAIN_ON = ("completion", "all")  # kdengine.data.encode
ON_LONG = ("truncate", "drop")  # kdengine.data.packing
ON_BAD_FILE = ("fail", "skip")  # kdengine.data.store, kdengine.data
_DATA_FIELDS_RE = re.compile(
    r"^$|^\s*(text|messages|prompt|completion)\s*=\s*[^,=\s][^,=]*"
    r"(,\s*(text|messages|prompt|completion)\s*=\s*[^,=\s][^,=]*)*,?\s*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# every backslash of `stop` starts one of the escapes RunConfig.stop_text reads
_STOP_RE = re.compile(r"(?:[^\\]|\\[nt\\])*\Z", re.DOTALL)


class ConfigError(ValueError):
    """A value that breaks the schema. `field` names the offending field (None for the file)."""

    def __init__(self, field_name: str | None, message: str) -> None:
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}" if field_name else message)


class UnusedValueError(ConfigError):
    """A value the run would ignore (RunConfig.unused_value): refused, never dropped."""


@dataclass(frozen=True)
class Field:
    """One hyperparameter: how it is parsed, bounded, shown and explained."""

    name: str
    kind: type  # str, int, float or bool
    default: Any
    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    pattern: re.Pattern[str] | None = None
    pattern_hint: str = ""
    below_hint: str = ""  # added to the refusal of a value below the minimum: what was meant
    # the refusal of a value `pattern` does not match, in place of 'must be <pattern_hint>'
    explain: Callable[[str], str] | None = None
    strip: bool = True  # text: surrounding whitespace dropped (False: it is the value)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        """The allowed values, in the words an error message uses."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        lo = hi = None
        if self.minimum is not None:
            lo = f"{'>' if self.exclusive_minimum else '>='} {_fmt(self.minimum)}"
        if self.maximum is not None:
            hi = f"<= {_fmt(self.maximum)}"
        kind = "an integer" if self.kind is int else "a number"
        if lo and hi:
            return f"{kind} {lo} and {hi}"
        if lo or hi:
            return f"{kind} {lo or hi}"
        return self.pattern_hint or ("an integer" if self.kind is int else "a value")

    def parse(self, raw: Any) -> Any:
        """Turn text (a flag, a form input) or a JSON/TOML value into a checked value."""
        value = self._coerce(raw)
        self.check(value)
        return value

    def _coerce(self, raw: Any) -> Any:
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(self.name, f"must be true or false (got {raw!r})")
        if self.kind is int:
            if isinstance(raw, bool):
                raise ConfigError(self.name, f"must be an integer (got {raw!r})")
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            try:
                return int(str(raw).strip().replace("_", ""))
            except ValueError:
                raise ConfigError(self.name, f"must be an integer (got {raw!r})") from None
        if self.kind is float:
            if isinstance(raw, bool):
                raise ConfigError(self.name, f"must be a number (got {raw!r})")
            try:
                value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
            except (TypeError, ValueError):
                raise ConfigError(self.name, f"must be a number (got {raw!r})") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(self.name, f"must be a finite number (got {raw!r})")
            return value
        if not isinstance(raw, str):
            raise ConfigError(self.name, f"must be text (got {raw!r})")
        return raw.strip() if self.strip else raw

    def check(self, value: Any) -> None:
        if self.choices and value not in self.choices:
            raise ConfigError(self.name, f"must be {self.bounds_text()} (got {value!r})")
        if self.pattern and not self.pattern.match(value):
            raise ConfigError(self.name, self.explain(value) if self.explain else
                              f"must be {self.pattern_hint} (got {value!r})")
        if self.kind in (int, float):
            too_low = self.minimum is not None and (
                value <= self.minimum if self.exclusive_minimum else value < self.minimum
            )
            too_high = self.maximum is not None and value > self.maximum
            if too_low or too_high:
                hint = f": {self.below_hint}" if too_low and self.below_hint else ""
                raise ConfigError(self.name,
                                  f"must be {self.bounds_text()} (got {_fmt(value)}){hint}")


def _stop_refusal(text: str) -> str:
    """Why `stop` text is refused: its first backslash that starts no escape, and the fix."""
    at = 0
    while at < len(text):
        if text[at] == "\\":
            nxt = text[at + 1:at + 2]
            if nxt not in ("n", "t", "\\"):
                break
            at += 1
        at += 1
    escapes = "escapes read: \\n newline, \\t tab, \\\\ a backslash"
    if at >= len(text) - 1:
        return f"ends in a lone backslash (got {text}; {escapes}): write \\\\ for a backslash"
    char = text[at + 1]
    return (f"\\{char} is not an escape (got {text}; {escapes}): write \\\\{char} for a "
            f"backslash and {char}")


def _fmt(number: float) -> str:
    """A bound or value as a person writes it: an integer whole (2**63 - 1, not 9.22337e+18), a
    whole float without its .0, any other float in %g."""
    if isinstance(number, int):
        return str(number)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:g}"


# Order is the order of the form and of --help.
FIELDS: tuple[Field, ...] = (
    Field("teacher", str, "", "Teacher model: a local HF-layout directory, a hub repo id "
          "(org/name), or demo://teacher", "models"),
    Field("student", str, "", "Student model to distil into: a local HF-layout directory, a hub "
          "repo id, or demo://student", "models"),
    Field("teacher_cache", str, "", "A teacher cache written by `kdengine cache-teacher` "
          "(its top-K log-probs on this data): no teacher is loaded, the KD term uses the cache "
          "(forward_kl only; docs/teacher-cache.md)", "models"),
    Field("data", str, "", "Training data: text (.txt/.jsonl), conversations or "
          "prompt/completion pairs (.jsonl/.json/.parquet/.arrow), a directory of them, a saved "
          "dataset, a hub dataset id, pre-tokenized .bin shards, or demo://python-stdlib", "data"),
    Field("data_split", str, "train", "Split to train on where the data has several (a saved "
          "DatasetDict, hub or folder files named train/test)", "data",
          pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
          pattern_hint="a split name: letters, digits, '.', '_' and '-'"),
    Field("data_fields", str, "", "Column names where the data's differ, e.g. "
          "messages=dialog,prompt=question", "data", pattern=_DATA_FIELDS_RE,
          pattern_hint="NAME=COLUMN,... with NAME text, messages, prompt or completion"),
    Field("train_on", str, "completion", "Tokens that train in conversations and prompt/"
          "completion pairs: completion (the assistant's) or all", "data",
          choices=TRAIN_ON),
    Field("on_long", str, "truncate", "An example longer than seq_len: truncate it to seq_len, "
          "or drop it (both counted)", "data", choices=ON_LONG),
    Field("on_bad_file", str, "fail", "A file that cannot be read (not UTF-8, a bad line or "
          "record): fail the run, or skip the file (counted, the first few named)", "data",
          choices=ON_BAD_FILE),
    Field("steps", int, 500, "Optimizer steps to train", "schedule", minimum=1, maximum=10**9),
    Field("batch_size", int, 4, "Sequences per optimizer step (every row trains)", "schedule",
          minimum=1, maximum=65536),
    Field("seq_len", int, 512, "Tokens per training sequence", "schedule", minimum=2,
          maximum=1 << 20),
    Field("lr", float, 1.5e-5, "Peak learning rate of AdamW", "optimizer", minimum=0.0,
          maximum=1.0, exclusive_minimum=True),
    Field("warmup_steps", int, 0, "Linear warm-up steps before the schedule starts", "optimizer",
          minimum=0, maximum=10**9),
    Field("lr_schedule", str, "cosine", "Learning-rate decay after warm-up", "optimizer",
          choices=LR_SCHEDULES),
    Field("weight_decay", float, 0.0, "AdamW decoupled weight decay", "optimizer", minimum=0.0,
          maximum=1.0),
    Field("grad_clip", float, 1.0, "Clip the global gradient norm to this (0 turns it off)",
          "optimizer", minimum=0.0, maximum=1e6),
    # T=2: held-out CE beat T=4 by 0.09-0.31 nats in every seed of the demo sweep
    # (docs/hyperparameters.md)
    Field("temperature", float, 2.0, "Softmax temperature T of the KD term (scaled by T^2)",
          "loss", minimum=0.0, maximum=100.0, exclusive_minimum=True,
          # TRL's `temperature` is the sampling one: a greedy --temperature 0 meant this
          below_hint="it is the KD loss's softmax temperature; for greedy sampling of "
          "completions use --gen-temperature 0"),
    Field("alpha", float, 0.3, "Weight of the hard-label CE term; the KD term gets 1 - alpha",
          "loss", minimum=0.0, maximum=1.0),
    Field("loss", str, "forward_kl", "KD divergence: forward_kl = KL(teacher||student), "
          "reverse_kl = KL(student||teacher), jsd = generalized JSD(beta)", "loss",
          choices=LOSS_KINDS),
    Field("beta", float, 0.5, "Generalized JSD's beta, as TRL's GKD: the mixture "
          "m = beta*teacher + (1-beta)*student; 0 is forward KL, 1 reverse KL (loss=jsd only)",
          "loss", minimum=0.0, maximum=1.0),
    Field("lmbda", float, 0.0, "On-policy share: the chance that a step's batch is completions "
          "the student samples for the data's prompts, graded token by token by the teacher "
          "(0: off-policy KD on the data's text; 1: always on-policy; TRL GKD's lmbda)",
          "on-policy", minimum=0.0, maximum=1.0),
    Field("seq_kd", bool, False, "Sequence-level KD: the batches that are not on-policy train on "
          "completions the teacher samples instead of the data's (TRL GKD's seq_kd)",
          "on-policy"),
    Field("max_new_tokens", int, 128, "Longest completion sampled for a prompt (the prompt keeps "
          "at most seq_len - max_new_tokens tokens)", "on-policy", minimum=1, maximum=1 << 20),
    Field("gen_temperature", float, 1.0, "Sampling temperature of completions (0: greedy); "
          "separate from the KD temperature", "on-policy", minimum=0.0, maximum=100.0),
    Field("top_p", float, 1.0, "Nucleus sampling: keep the fewest tokens whose probability "
          "reaches top_p (1: off)", "on-policy", minimum=0.0, maximum=1.0,
          exclusive_minimum=True),
    Field("top_k", int, 0, "Sample from the k likeliest tokens only (0: off)", "on-policy",
          minimum=0, maximum=1 << 24),
    Field("stop", str, "", "Text that ends a completion besides the tokenizer's EOS, e.g. "
          "\\n\\n", "on-policy",
          # a lone or unknown escape was kept as typed: '\\' stopped at a backslash, '\\r\\n'
          # at the four characters, never at a line end
          pattern=_STOP_RE, pattern_hint="text whose backslashes start an escape: \\n "
          "(newline), \\t (tab) or \\\\ (a backslash)", explain=_stop_refusal,
          # TOML's stop = "\n\n" is two newlines already: stripped, it was no stop at all
          strip=False),
    Field("sample_every", int, 50, "Emit a sample event (prompt, completion, the teacher's "
          "log-prob of it) every N on-policy steps (0: only at evaluations)", "on-policy",
          minimum=0, maximum=10**9),
    Field("eval_prompts", int, 16, "Held-out prompts the student completes at each evaluation "
          "of an on-policy run (the same prompts and seed every time)", "on-policy", minimum=1,
          maximum=100000),
    Field("eval_every", int, 100, "Held-out validation every N steps (0: only at step 0 and the "
          "end)", "eval", minimum=0, maximum=10**9),
    Field("eval_batches", int, 8, "Validation batches per evaluation", "eval", minimum=1,
          maximum=100000),
    Field("val_fraction", float, 0.05, "Share of documents held out for validation", "eval",
          minimum=0.0, maximum=0.5, exclusive_minimum=True),
    Field("log_every", int, 10, "Emit a step event every N steps", "eval", minimum=1,
          maximum=10**6),
    Field("checkpoint_every", int, 500, "Save a resumable checkpoint every N steps (0: only at "
          "the end)", "checkpoints", minimum=0, maximum=10**9),
    Field("seed", int, 0, "Random seed of init, data order and dropout", "run", minimum=0,
          maximum=2**63 - 1),
    Field("device", str, "auto", "Where to train", "run",
          pattern=_DEVICE_RE, pattern_hint="auto, cpu, cuda, cuda:N or mps"),
    Field("dtype", str, "auto", "Compute dtype (auto: bfloat16 on CUDA, float32 elsewhere)",
          "run", choices=DTYPES),
    Field("teacher_dtype", str, "auto", "The frozen teacher's linear layers: auto (the compute "
          "dtype) or float8 (e4m3 weights, FP8 matmuls on H100/H200-class GPUs: half the "
          "memory, a faster teacher, a small drift; docs/models.md)", "run",
          choices=TEACHER_DTYPES),
    Field("student_matmuls", str, "auto", "The student's MLP matmuls: auto (the compute dtype) "
          "or float8 (e4m3 forward and input gradients, fp32 master weights kept: faster on "
          "H100/H200-class GPUs for students 896 wide and up, a small change to what is "
          "trained; docs/models.md)", "run",
          choices=STUDENT_MATMULS),
    Field("run_name", str, "", "Name of the run (empty: kd-<UTC time>)",
          "run", pattern=re.compile(r"^$|" + _RUN_NAME_RE.pattern),
          pattern_hint="letters, digits, '.', '_' and '-', up to 128, not starting with . _ -"),
    Field("run_dir", str, "", "Run directory for events, logs and checkpoints (empty: "
          "<run_name> in the runs directory, KDENGINE_RUNS_DIR)", "run"),
    Field("allow_same_teacher_student", bool, False, "Allow teacher == student (a smoke test "
          "only: the KD signal is zero)", "run"),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
# the fields only a run that samples completions (lmbda > 0 or seq_kd) uses
# (kdengine.onpolicy.rollout, the trainer's sample events)
SAMPLING_FIELDS = ("max_new_tokens", "gen_temperature", "top_p", "top_k", "stop", "sample_every")
# the --demo preset's max_new_tokens: half its seq_len, so `--demo --lmbda 1` leaves a prompt room
DEMO_MAX_NEW_TOKENS = 64
# the teacher == student rule's fix, as a flag: a config file's user sets its key instead
ALLOW_SAME_FIX = "set --allow-same-teacher-student"
# old name -> field: a run directory, checkpoint or run.toml written before a rename still reads
RENAMED: dict[str, str] = {"jsd_beta": "beta"}


def spelled_in(name: str, in_file: Mapping[str, Any]) -> str:
    """Field `name` as a config file's keys spell it (an older name RENAMED still reads)."""
    return next((key for key in in_file if RENAMED.get(key) == name), name)


@dataclass(frozen=True)
class RunConfig:
    """The effective configuration of one run (every field of `FIELDS`, checked)."""

    teacher: str = ""
    student: str = ""
    teacher_cache: str = ""
    data: str = ""
    data_split: str = "train"
    data_fields: str = ""
    train_on: str = "completion"
    on_long: str = "truncate"
    on_bad_file: str = "fail"
    steps: int = 500
    batch_size: int = 4
    seq_len: int = 512
    lr: float = 1.5e-5
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 2.0
    alpha: float = 0.3
    loss: str = "forward_kl"
    beta: float = 0.5
    lmbda: float = 0.0
    seq_kd: bool = False
    max_new_tokens: int = 128
    gen_temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: str = ""
    sample_every: int = 50
    eval_prompts: int = 16
    eval_every: int = 100
    eval_batches: int = 8
    val_fraction: float = 0.05
    log_every: int = 10
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    teacher_dtype: str = "auto"
    student_matmuls: str = "auto"
    run_name: str = ""
    run_dir: str = ""
    allow_same_teacher_student: bool = False

    def __post_init__(self) -> None:
        for f in FIELDS:
            object.__setattr__(self, f.name, f.parse(getattr(self, f.name)))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a dict (JSON, TOML, form); unknown keys are an error, never ignored."""
        values = {RENAMED.get(k, k): v for k, v in values.items()}  # older run files
        unknown = sorted(set(values) - set(FIELDS_BY_NAME))
        if unknown:
            raise ConfigError(unknown[0],
                              f"is not a field of a run (known: {', '.join(FIELD_NAMES)})")
        return cls(**{k: FIELDS_BY_NAME[k].parse(v) for k, v in values.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        return cls.from_mapping(load_config_file(path))

    def with_values(self, **values: Any) -> RunConfig:
        for key in values:
            if key not in FIELDS_BY_NAME:
                raise ConfigError(key, "is not a field of a run")
        return replace(self, **{k: FIELDS_BY_NAME[k].parse(v) for k, v in values.items()})

    # -- output -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def to_args(self, *, only_changed: bool = False) -> list[str]:
        """The engine's command-line arguments that reproduce this config exactly."""
        args: list[str] = []
        for f in FIELDS:
            value = getattr(self, f.name)
            if only_changed and value == f.default:
                continue
            if f.kind is bool:
                args.append(f.flag if value else "--no-" + f.flag[2:])
            else:
                args += [f.flag, _fmt_arg(value)]
        return args

    # -- cross-field rules ------------------------------------------------------------------
    def validate(self, *, require_models: bool = True) -> RunConfig:
        """Checks that involve more than one field. Returns self so calls chain."""
        if require_models:
            for name in ("teacher", "student", "data"):
                if not getattr(self, name) and not (name == "teacher" and self.teacher_cache):
                    raise ConfigError(name, f"is required (give {FIELDS_BY_NAME[name].flag} "
                                      "or use --demo)")
        if self.teacher and self.teacher == self.student and not self.allow_same_teacher_student:
            raise ConfigError("student", "is the same model as the teacher, so the KD signal is "
                              f"zero; pick another student or {ALLOW_SAME_FIX}")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ConfigError("warmup_steps", f"must be below steps ({self.steps}) "
                              f"(got {self.warmup_steps})")
        names = [part.split("=", 1)[0].strip() for part in self.data_fields.split(",")
                 if part.strip()]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # the later one would silently win
            raise ConfigError("data_fields", f"{twice[0]} is mapped twice ({self.data_fields}): "
                              f"give one column for {twice[0]}")
        if self.teacher_dtype == "float8" and self.teacher_cache:
            raise ConfigError("teacher_dtype", "float8 is for a live teacher; a run from a "
                              "teacher cache computes no teacher forward: leave it auto")
        if self.samples_completions and self.max_new_tokens >= self.seq_len:
            raise ConfigError("max_new_tokens", f"must be below --seq-len ({self.seq_len}) so "
                              f"a prompt keeps a token (got {self.max_new_tokens}): lower it or "
                              "raise --seq-len")
        unused = self.unused_value()
        if unused is not None:
            raise unused
        return self

    def unused_value(self) -> UnusedValueError | None:
        """The first value this run would ignore, as a refusal naming it and the fix (None: every
        value counts). Only a value that differs from its default counts as given: the
        dashboard passes every field as a flag and a run's config.json holds every field, so a
        default is the same as leaving the field out. The --demo preset's own max_new_tokens
        counts as unset too, whatever the teacher: the preset sets it whatever the run samples,
        and `--demo --teacher DIR` (the form: F2, then another teacher) keeps the preset's
        values, which are not the user's to drop."""

        def given(name: str) -> bool:
            value = getattr(self, name)
            return value != FIELDS_BY_NAME[name].default and not (
                name == "max_new_tokens" and value == DEMO_MAX_NEW_TOKENS)

        def leave(name: str) -> str:
            if self.is_demo and name == "max_new_tokens":  # the preset's, not the field's
                return f"leave it at its default (the demo preset's {DEMO_MAX_NEW_TOKENS})"
            default = FIELDS_BY_NAME[name].default
            shown = "empty" if default == "" else _fmt(default) if isinstance(
                default, (int, float)) else default
            return f"leave it at its default ({shown})"

        unused = UnusedValueError
        if self.seq_kd and self.lmbda == 1.0:
            return unused("seq_kd", "with --lmbda 1 every step is on-policy (the student "
                          "writes), so no step is left for the teacher's completions: lower "
                          "--lmbda below 1, or drop --seq-kd")
        if not self.samples_completions:
            for name in SAMPLING_FIELDS:
                if given(name):
                    return unused(name, "only an on-policy run (--lmbda > 0) or --seq-kd "
                                  "samples completions: set --lmbda above 0 or --seq-kd, or "
                                  f"{leave(name)}")
        if self.lmbda == 0 and given("eval_prompts"):
            return unused("eval_prompts", "only an on-policy run (--lmbda > 0) completes "
                          "held-out prompts at its evaluations (--seq-kd alone does not): set "
                          f"--lmbda above 0, or {leave('eval_prompts')}")
        if self.samples_completions and self.gen_temperature == 0:
            for name in ("top_p", "top_k"):
                if given(name):
                    return unused(name, "greedy sampling (--gen-temperature 0) takes the "
                                  "likeliest token, so it changes nothing: set "
                                  f"--gen-temperature above 0, or {leave(name)}")
        if self.loss != "jsd" and given("beta"):
            return unused("beta", f"is the JSD's mixture weight, and --loss {self.loss} has "
                          f"none: set --loss jsd, or {leave('beta')}")
        return None

    @property
    def samples_completions(self) -> bool:
        """Whether the run samples completions (on-policy, or sequence-level KD)."""
        return self.lmbda > 0 or self.seq_kd

    @property
    def stop_text(self) -> str:
        """`stop` with its escapes read: \\n newline, \\t tab, \\\\ a backslash."""
        out, chars = [], iter(self.stop)
        for ch in chars:
            if ch == "\\":
                nxt = next(chars, "")
                out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, "\\" + nxt))
            else:
                out.append(ch)
        return "".join(out)

    @property
    def is_demo(self) -> bool:
        return self.teacher.startswith("demo://")


def _fmt_arg(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
assert FIELD_NAMES == tuple(f.name for f in fields(RunConfig) ), (
    "FIELDS and RunConfig disagree"
)


# what a flag's help says of a model or the data (RunConfig.validate's rule), in place of
# 'default: none'
REQUIRED_UNLESS = {"teacher": "required unless --demo or --teacher-cache",
                   "student": "required unless --demo", "data": "required unless --demo"}


def flag_help(f: Field, default: str) -> str:
    """A flag's --help line: what it is (bounds; `default`). A text field that takes anything
    (a path, a hub id) has no bounds to say: its help says what it takes, and '(a value; ...)'
    told a new user nothing."""
    bounds = f.bounds_text()
    return f"{f.help} ({default})" if bounds == "a value" else f"{f.help} ({bounds}; {default})"


def add_field_flags(parser: argparse.ArgumentParser) -> None:
    """Every field as a flag, grouped as the form groups them. Values stay text: the schema,
    not argparse, parses and checks them, so the CLI and the form give the same messages."""
    for group_name, specs in groups().items():
        group = parser.add_argument_group(group_name)
        for f in specs:
            default = (REQUIRED_UNLESS.get(f.name) or
                       # ('empty' where the help says what empty means: 'none' said twice)
                       ("default: empty" if f.default == "" and "(empty: " in f.help else
                        "default: none" if f.default == "" else
                        f"default: {str(f.default).lower()}" if f.kind is bool else
                        f"default: {f.default!r}"))
            help_text = flag_help(f, default)
            if f.kind is bool:
                group.add_argument(f.flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=None, help=help_text)
            else:
                group.add_argument(f.flag, dest=f.name, metavar=f.name.upper(), default=None,
                                   help=help_text)


# How each model compiles on CUDA (docs/performance.md, issue 16 rounds 4 and 6): "layers" (the
# default: each block compiled, one trace for all of them), "model" (the whole forward as one
# graph, and the student's backward with it: a trace of every block at each start) or "graphs"
# (that graph replayed as CUDA graphs: one launch for its kernels, for a host that cannot keep
# up with a small pair's GPU). On an H200 neither "model" nor "graphs" paid on the issue-16
# pairs; "layers" starts 13-20 s sooner cold. Under torchrun the student compiles per block.
TEACHER_COMPILE_ENV = "KDENGINE_TEACHER_COMPILE"
STUDENT_COMPILE_ENV = "KDENGINE_STUDENT_COMPILE"
COMPILES = ("layers", "model", "graphs")


def teacher_compile_from_env() -> str:
    """KDENGINE_TEACHER_COMPILE's value (layers when unset); ConfigError naming it otherwise.
    Torch-free: the preflight checks it before a run directory exists."""
    return _compile_from_env(TEACHER_COMPILE_ENV, "the teacher's whole forward as one graph",
                             "that graph as a CUDA graph")


def student_compile_from_env() -> str:
    """KDENGINE_STUDENT_COMPILE's value, as teacher_compile_from_env's."""
    return _compile_from_env(STUDENT_COMPILE_ENV,
                             "the student's whole forward and backward as one graph",
                             "those graphs as CUDA graphs")


def _compile_from_env(name: str, model: str, graphs: str) -> str:
    return _choice_from_env(name, COMPILES, "layers", f"set it to model ({model}), graphs "
                            f"({graphs}) or layers (each block)")


def _choice_from_env(name: str, choices: tuple[str, ...], default: str, advice: str) -> str:
    """The variable `name`'s value, `default` when unset; ConfigError naming it and `advice`
    for any value not in `choices`."""
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise ConfigError(name, f"is {value!r}: {advice}, or unset it")
    return value


STUDENT_PLACEMENT_ENV = "KDENGINE_STUDENT_PLACEMENT"
STUDENT_PLACEMENTS = ("auto", "replicated", "sharded")


def student_placement_from_env() -> str:
    """KDENGINE_STUDENT_PLACEMENT's value (auto when unset): how torchrun's ranks hold the
    student (kdengine.distributed.Dist.place_student); ConfigError naming it otherwise.
    Torch-free: the preflight checks it before a run directory exists."""
    return _choice_from_env(STUDENT_PLACEMENT_ENV, STUDENT_PLACEMENTS, "auto",
                            "set it to replicated (the whole student on every GPU), sharded "
                            "(FSDP2) or auto (by its size)")


def flag_of(name: str) -> str:
    """The CLI flag of a field name (or '--name' for names outside the schema); an environment
    variable (KDENGINE_...) keeps its own name."""
    if name in FIELDS_BY_NAME:
        return FIELDS_BY_NAME[name].flag
    return name if name.isupper() else "--" + name.replace("_", "-")


# The fields that name a local file or directory (each may instead be a hub id or demo://)
PATH_FIELDS = ("teacher", "student", "teacher_cache", "data")


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """`config` with each of PATH_FIELDS that names a path existing here written absolute (~
    expanded): the run's config.json then holds what `--resume` needs from any working
    directory. Hub ids, demo:// and paths missing here (the checks refuse those) stay as typed."""
    changes = {}
    for name in PATH_FIELDS:
        spec = getattr(config, name)
        if not spec or spec.startswith("demo://"):
            continue
        path = Path(spec).expanduser()
        if os.path.lexists(path) and os.path.abspath(path) != spec:
            changes[name] = os.path.abspath(path)
    return config.with_values(**changes) if changes else config


def file_folder_path_refusal(in_file: Mapping[str, Any], path: Path,
                             overridden: Iterable[str] = ()) -> str | None:
    """A relative path in a --config file is read from the working directory, as the same
    value given by a flag or a KDENGINE_ variable is (one value, one meaning, whichever layer
    sets it). One that names nothing there but a file or folder beside the config file was
    meant from the file's folder: refused (where it was looked for, and the fix) before it
    passes for a hub id (`in/teacher` is shaped like `org/name`). `overridden`: fields a flag
    sets. None when no such path."""
    cwd, folder = Path.cwd(), path.expanduser().resolve().parent
    for key, value in in_file.items():
        name = RENAMED.get(key, key)
        if name not in PATH_FIELDS or name in overridden or not isinstance(value, str) \
                or not value or value.startswith("demo://"):
            continue
        typed = Path(value).expanduser()
        if typed.is_absolute() or os.path.lexists(typed) or folder == cwd.resolve() \
                or not os.path.lexists(folder / typed):
            continue
        return (f"{key} in {path}: {value} is read from the working directory ({cwd}), which "
                f"has no {value}; the file's folder has it: write it as {folder / typed} in "
                f"{path}, or run from {folder}")
    return None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a run config from .toml or .json; errors name the file and the fix."""
    try:
        # TOML is UTF-8, whatever the locale says; a byte-order mark (Notepad) is no statement
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"cannot read {path}: not UTF-8 text (byte {exc.start}); "
                          "save it as UTF-8") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError("config", f"{path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = path.suffix[1:].upper()
        raise ConfigError("config", f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a table of fields")
    return data


def default_runs_dir() -> Path:
    """Where runs live unless run_dir says: $KDENGINE_RUNS_DIR, else the user's data dir."""
    import os

    env = os.environ.get("KDENGINE_RUNS_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("kdengine") / "runs"


def demo_config(**overrides: Any) -> RunConfig:
    """The first-use preset: a tiny teacher trained once on this machine, distilled into a
    smaller student, on the Python standard library's own sources. No network, no GPU."""
    values: dict[str, Any] = dict(
        teacher=DEMO_TEACHER, student=DEMO_STUDENT, data=DEMO_DATA, steps=500, batch_size=16,
        seq_len=128, lr=3e-3, warmup_steps=25, temperature=2.0, alpha=0.3, eval_every=100,
        eval_batches=4, log_every=5, checkpoint_every=250,
        # half of seq_len: the default 128 would leave an on-policy prompt no token
        # (`kdengine train --demo --lmbda 1`, docs/on-policy.md)
        max_new_tokens=DEMO_MAX_NEW_TOKENS,
    )
    values.update(overrides)
    return RunConfig.from_mapping(values)


def validate_with_preset(config: RunConfig, preset: RunConfig | None, chosen: Iterable[str], *,
                         require_models: bool = True) -> RunConfig:
    """`config.validate()`, where a rule between two fields broken by a value of the --demo
    preset (`preset`; None: no preset) names that value as the preset's and gives the fix, not
    as a flag the user gave. `chosen`: the fields the user set (by flag, file or variable)."""
    try:
        return config.validate(require_models=require_models)
    except UnusedValueError as exc:  # the value alone is the problem, whoever set the others
        if preset is not None and exc.field == "max_new_tokens" and not config.is_demo:
            # leaving the flag out gives the preset's (the run's own teacher or not)
            raise UnusedValueError(exc.field, exc.message.replace(
                f"({FIELDS_BY_NAME['max_new_tokens'].default})",
                f"(the demo preset's {DEMO_MAX_NEW_TOKENS})")) from None
        raise
    except ConfigError as exc:
        if preset is None:
            raise
        picked = set(chosen)

        def preset_s(name: str) -> bool:
            return name not in picked and getattr(config, name) == getattr(preset, name)

        better = _preset_refusal(exc.field, config, preset_s)
        if better is None:
            raise
        raise ConfigError(exc.field, better) from None


def _preset_refusal(field: str | None, config: RunConfig, preset_s: Any) -> str | None:
    """The refusal of rule `field` where one side is the --demo preset's (`preset_s(name)`)."""
    if field == "warmup_steps":
        warmup, steps = config.warmup_steps, config.steps
        if preset_s("warmup_steps") and not preset_s("steps"):
            return (f"the --demo preset's {warmup} must be below --steps {steps}: give a "
                    f"--warmup-steps below {steps} (0 for none), or --steps above {warmup}")
        if preset_s("steps") and not preset_s("warmup_steps"):
            return (f"must be below the --demo preset's steps ({steps}) (got {warmup}): give a "
                    f"--warmup-steps below {steps}, or --steps above {warmup}")
    if field == "max_new_tokens":
        new, seq_len = config.max_new_tokens, config.seq_len
        if preset_s("max_new_tokens") and not preset_s("seq_len"):
            return (f"the --demo preset's {new} must be below --seq-len {seq_len} so a prompt "
                    f"keeps a token: give --max-new-tokens {seq_len // 2} (or any value below "
                    f"{seq_len}), or a --seq-len above {new}")
        if preset_s("seq_len") and not preset_s("max_new_tokens"):
            return (f"must be below the --demo preset's seq_len ({seq_len}) so a prompt keeps a "
                    f"token (got {new}): give a --max-new-tokens below {seq_len}, or a --seq-len "
                    f"above {new}")
    return None


def file_key_refusal(exc: ConfigError, config_file: str | None, in_file: Mapping[str, Any],
                     over: set[str]) -> str | None:
    """The refusal of a value the --config file set, named as the file spells it ('student in
    run.toml: ...'), not as a --flag the user never typed; where the fix is to allow teacher ==
    student, it names the file's key. `over`: the fields a flag (or a variable) set over the
    file. None: the refused value is not the file's."""
    if not config_file or not exc.field or exc.field in over or \
            exc.field not in {RENAMED.get(k, k) for k in in_file}:
        return None
    message = exc.message
    if message.endswith(ALLOW_SAME_FIX) and "allow_same_teacher_student" not in over:
        message = message[:-len(ALLOW_SAME_FIX)] + \
            f"set allow_same_teacher_student = true in {config_file}"
    return f"{spelled_in(exc.field, in_file)} in {config_file}: {message}"


def groups(items: Iterable[Field] = FIELDS) -> dict[str, list[Field]]:
    out: dict[str, list[Field]] = {}
    for f in items:
        out.setdefault(f.group, []).append(f)
    return out
