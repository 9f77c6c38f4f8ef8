"""The declared schema of aprender's `apr distill` CLI, and how a kdengine run config maps onto it.

Every kdengine.config field is in exactly one of three places: `FIELD_TO_FLAG` (it reaches apr
as a flag), `NOT_APPLIED` (apr cannot take it: it is shown and recorded as NOT applied, never
dropped quietly), or `LOCAL_ONLY` (kdtui itself uses it). A test pins that, so a new kdengine field
cannot slip through. Preflight checks every declared flag against the remote's
`apr distill --help` (`check_against_help`), so the seed's flag-drift defect cannot recur.

Facts about `apr distill` come from aprender's crates/apr-cli/src/commands/distill.rs: backends
`fixture` (CPU stubs, no learning signal) and `cuda` (needs `--features cuda,training`); teacher
and student are `.apr` checkpoint files; `--output` is the directory the student is written to;
`--json` replaces the final `✓ Distillation complete` line by one JSON object; the loss is
`alpha*CE + (1-alpha)*T^2*KL(teacher||student)`, so alpha means what kdengine's alpha means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from kdengine.config import ALLOW_SAME_FIX, FIELD_NAMES, FIELDS_BY_NAME, ConfigError, RunConfig

DEFAULT_REPO_URL = "https://github.com/paiml/aprender.git"
BACKENDS = ("cuda", "fixture")


@dataclass(frozen=True)
class AprFlag:
    """One argument of `apr distill`: its name there, its type, and what feeds it."""

    name: str  # "--student"; a positional is named in capitals ("TEACHER")
    kind: type
    source: str  # the kdengine.config field (or AprSettings field) whose value it carries
    help: str
    required: bool = True  # preflight fails when the remote's --help lacks it
    choices: tuple[str, ...] | None = None

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")


# The CLI as kdtui uses it, in the order of the command line.
DISTILL_FLAGS: tuple[AprFlag, ...] = (
    AprFlag("TEACHER", str, "teacher", "teacher checkpoint (.apr file on the host)"),
    AprFlag("--student", str, "student", "student checkpoint to train (.apr file on the host)"),
    AprFlag("--epochs", int, "steps", "whole passes over apr's batch source (kdtui maps steps)"),
    AprFlag("--temperature", float, "temperature", "softmax temperature T of the KD term"),
    AprFlag("--alpha", float, "alpha", "weight of the hard-label CE term (KD gets 1 - alpha)"),
    AprFlag("--backend", str, "device", "compute backend", choices=BACKENDS),
    AprFlag("--output", str, "run_dir", "directory the distilled student is written to"),
    AprFlag("--json", bool, "json_summary", "end with one JSON object (losses, steps, status)",
            required=False),
)
FLAGS_BY_NAME: dict[str, AprFlag] = {f.name: f for f in DISTILL_FLAGS}

# kdengine field -> the apr argument it becomes.
# Run fields whose default for apr differs from kdengine's: kdengine's KD defaults come from a
# sweep of kdengine's own loss (docs/hyperparameters.md); an apr run keeps what it had
APR_DEFAULTS: dict[str, Any] = {"temperature": 4.0}

FIELD_TO_FLAG: dict[str, str] = {
    f.source: f.name for f in DISTILL_FLAGS if f.source in FIELDS_BY_NAME
}

_NO_EVAL = ("apr distill has no held-out evaluation: its initial/final losses are "
            "training-batch losses")
# kdengine field -> why `apr distill` cannot take it.
NOT_APPLIED: dict[str, str] = {
    "data": "apr distill has no training-text flag: it trains on its own batch source "
            "(synthetic smoke batches)",
    "batch_size": "apr distill has no batch-size flag (its CUDA student trains one row a step)",
    "seq_len": "apr distill has no sequence-length flag (APR_DISTILL_SMOKE_SEQ_LEN on the host "
               "sets it)",
    "lr": "apr distill has no learning-rate flag: it uses its built-in default",
    "warmup_steps": "apr distill has no warm-up flag",
    "lr_schedule": "apr distill has no learning-rate schedule flag",
    "weight_decay": "apr distill has no weight-decay flag",
    "grad_clip": "apr distill has no gradient-clipping flag",
    "loss": "apr's KD term is fixed (its kd_step computes KL(teacher||student)); it is not "
            "selectable",
    "beta": "apr distill has no JSD loss",
    "eval_every": _NO_EVAL,
    "eval_batches": _NO_EVAL,
    "val_fraction": _NO_EVAL,
    "log_every": "apr logs every step itself",
    "checkpoint_every": "apr decides itself when to save checkpoints",
    "seed": "apr distill has no seed flag",
    "dtype": "apr picks the compute dtype from each checkpoint",
    "teacher_dtype": "apr picks the teacher's dtype from its checkpoint (no FP8 teacher flag)",
    "student_matmuls": "apr distill has no FP8 training flag: its student trains in its own "
                       "dtype",
    "data_split": "apr distill has no training-data flag, so no split of it",
    "data_fields": "apr distill has no training-data flag, so no column mapping",
    "train_on": "apr distill has no training-data flag: its batch source decides what trains",
    "on_long": "apr distill has no sequence-length or example packing flag",
    "on_bad_file": "apr distill reads no data files",
    "teacher_cache": "apr distill runs its teacher live: it has no teacher-cache flag",
    **dict.fromkeys(("lmbda", "seq_kd", "max_new_tokens", "gen_temperature", "top_p", "top_k",
                     "stop", "sample_every", "eval_prompts"),
                    "apr distill trains off-policy only: it cannot sample completions"),
}

# kdengine field -> what kdtui does with it (it never reaches apr as a flag).
LOCAL_ONLY: dict[str, str] = {
    "run_name": "names the run directory on the host",
    "allow_same_teacher_student": "kdtui refuses teacher == student before launch unless set",
}


@dataclass(frozen=True)
class AprSettings:
    """What the apr profile needs beyond a run config: where apr comes from and how it counts."""

    repo_url: str = DEFAULT_REPO_URL
    git_ref: str = "main"
    build: bool = True  # False: use apr_bin as installed on the host, no git, no cargo
    cargo_package: str = "apr-cli"
    cargo_features: str = "cuda,training"
    apr_bin: str = ""  # empty: SRC/target/release/apr when building, else `apr` on PATH
    steps_per_epoch: int = 31  # apr's epoch length in steps (the seed's 500 steps = 17 epochs)
    json_summary: bool = True  # pass --json when the host's apr offers it

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ConfigError("steps_per_epoch", "must be an integer >= 1 (apr's steps per epoch)")
        for name in ("git_ref", "cargo_package"):
            value = getattr(self, name)
            if not value or value.startswith("-"):
                raise ConfigError(name, f"must be a name that does not start with '-' "
                                  f"(got {value!r})")
        if not self.repo_url.strip() or self.repo_url.startswith("-"):
            # git would take a leading '-' as one of its own options (--upload-pack=...)
            raise ConfigError("repo_url", "must be a git URL or path that does not start with "
                              f"'-' (got {self.repo_url!r})")
        if re.search(r"[\s\x00-\x1f\x7f~^:?*\[\\]|\.\.|@\{", self.git_ref):
            raise ConfigError("git_ref", "must be a branch, tag or commit name: no spaces, "
                              f"control characters, '..' or any of ~^:?*[\\ (got {self.git_ref!r})")
        if self.cargo_features and (not re.fullmatch(r"[A-Za-z0-9_,/-]+", self.cargo_features)
                                    or self.cargo_features.startswith("-")):
            raise ConfigError("cargo_features", "must be feature names separated by commas, "
                              f"not starting with '-' (got {self.cargo_features!r})")
        if self.apr_bin.startswith("-"):  # sh and env would read it as one of their options
            raise ConfigError("apr_bin", "must be a path or command name that does not start "
                              f"with '-' (got {self.apr_bin!r})")
        for name in ("repo_url", "cargo_package", "apr_bin"):
            # a newline would split the probe's `tool.NAME=PATH` answer and the shown commands
            if re.search(r"[\x00-\x1f\x7f]", getattr(self, name)):
                raise ConfigError(name, "must not hold control characters such as a newline "
                                  f"(got {getattr(self, name)!r})")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AprSettings:
        """From a TOML/JSON table; an unknown key is an error naming it and the known ones."""
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, "is not an apr profile setting (known: "
                                  f"{', '.join(known)})")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            default = known[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(key, f"must be true or false (got {value!r})")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(key, f"must be an integer (got {value!r})")
            elif not isinstance(value, str):
                raise ConfigError(key, f"must be text (got {value!r})")
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_values(self, **values: Any) -> AprSettings:
        return replace(self, **values)


# -- the mapping -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    field: str
    value: Any
    flag: str
    arg: str  # the text that reaches apr
    note: str = ""

    def line(self) -> str:
        shown = self.flag if self.flag.startswith("-") else f"{self.flag} (positional)"
        text = f"applied  {self.field}={_show(self.value)} -> {shown} {self.arg}"
        return text + (f"  ({self.note})" if self.note else "")


@dataclass(frozen=True)
class NotApplied:
    field: str
    value: Any
    reason: str
    changed: bool  # the value differs from kdengine's default: the user asked for something

    def line(self) -> str:
        mark = "  <- you set this; apr will not use it" if self.changed else ""
        return f"NOT applied  {self.field}={_show(self.value)}: {self.reason}{mark}"


@dataclass(frozen=True)
class AprInvocation:
    """`apr distill ...` for one run: the argument list, and the account of every field."""

    args: tuple[str, ...]  # after the apr program: ("distill", TEACHER, "--student", ...)
    applied: tuple[Applied, ...]
    not_applied: tuple[NotApplied, ...]
    notes: tuple[str, ...]  # visible notes: the steps->epochs mapping, omitted optional flags
    epochs: int
    effective_steps: int  # epochs * steps_per_epoch: what apr will actually train

    def lines(self) -> list[str]:
        """The whole account, for the dry run, the stage output and the log pane."""
        return ([a.line() for a in self.applied] + [n.line() for n in self.not_applied]
                + [f"note  {n}" for n in self.notes])

    def manifest(self) -> dict[str, Any]:
        """What dispatch.json records: applied and NOT-applied values, side by side."""
        return {
            "engine": "apr",
            "apr_args": list(self.args),
            "applied": {a.field: {"value": a.value, "flag": a.flag, "arg": a.arg,
                                  **({"note": a.note} if a.note else {})} for a in self.applied},
            "not_applied": {n.field: {"value": n.value, "reason": n.reason,
                                      "changed_from_default": n.changed}
                            for n in self.not_applied},
            "notes": list(self.notes),
            "epochs": self.epochs,
            "effective_steps": self.effective_steps,
        }


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def steps_to_epochs(steps: int, steps_per_epoch: int) -> tuple[int, str]:
    """apr counts whole epochs: the fewest epochs covering `steps`, and the note that says so."""
    epochs = max(1, math.ceil(steps / steps_per_epoch))
    effective = epochs * steps_per_epoch
    note = (f"steps={steps} -> --epochs {epochs}: apr counts whole epochs of {steps_per_epoch} "
            f"steps (steps_per_epoch), so it trains {effective} steps")
    if effective != steps:
        note += f", {effective - steps} more than asked"
    return epochs, note


def backend_for_device(device: str) -> tuple[str, str]:
    """kdengine's device -> apr's --backend, and a note when something does not carry over."""
    if device in ("auto", "cuda"):
        return "cuda", ""
    if device.startswith("cuda:"):
        return "cuda", (f"device={device}: apr has no GPU index flag; the index is NOT applied "
                        "(set CUDA_VISIBLE_DEVICES in the host's env)")
    raise ConfigError("device", f"apr distill has no {device} backend (its only CPU backend, "
                      "fixture, is a stub with no learning signal): use device=cuda or auto")


# run fields that reach apr (or the agent) as a word of their own: a leading '-' would be read
# as one of its options (`apr pull -x`, `apr distill --json ...`), so it is refused up front
_NOT_AN_OPTION = {"teacher": "a path on the host (./{v}) or a ref `apr pull` takes",
                  "student": "a path on the host (./{v}) or a ref `apr pull` takes",
                  "run_dir": "./{v} or an absolute path"}


def refuse_option_like(name: str, value: Any) -> None:
    """ConfigError naming `name` when its value starts with '-' (see _NOT_AN_OPTION)."""
    if name in _NOT_AN_OPTION and isinstance(value, str) and value.startswith("-"):
        raise ConfigError(name, "must not start with '-': apr would read it as one of its "
                          f"options; give {_NOT_AN_OPTION[name].format(v=value)} (got {value!r})")


def build_invocation(config: RunConfig, settings: AprSettings, *, teacher: str | None = None,
                     student: str | None = None, output: str | None = None,
                     omit_optional: frozenset[str] = frozenset()) -> AprInvocation:
    """Map `config` onto `apr distill`.

    teacher/student: the checkpoint paths on the host (after `apr pull`), when they differ from
    the config's values; output: apr's --output directory (default RUN_DIR/student);
    omit_optional: optional flags the host's apr lacks (preflight found them missing).
    """
    if config.teacher and config.teacher == config.student and \
            not config.allow_same_teacher_student:
        raise ConfigError("student", "is the same model as the teacher, so the KD signal is zero; "
                          f"pick another student or {ALLOW_SAME_FIX}")
    for name in ("teacher", "student"):
        if not getattr(config, name):
            raise ConfigError(name, "is required for apr distill "
                              f"(give {FIELDS_BY_NAME[name].flag})")
    if not config.run_dir:
        raise ConfigError("run_dir", "the apr plan needs the run directory on the host")
    for name in _NOT_AN_OPTION:
        refuse_option_like(name, getattr(config, name))
    epochs, epoch_note = steps_to_epochs(config.steps, settings.steps_per_epoch)
    backend, backend_note = backend_for_device(config.device)
    out_dir = output or f"{config.run_dir.rstrip('/')}/student"
    values: dict[str, tuple[Any, str, str]] = {
        # flag -> (config value, text passed to apr, note)
        "TEACHER": (config.teacher, teacher or config.teacher,
                    "" if not teacher or teacher == config.teacher else "resolved by apr pull"),
        "--student": (config.student, student or config.student,
                      "" if not student or student == config.student else "resolved by apr pull"),
        "--epochs": (config.steps, str(epochs),
                     f"{epochs} x {settings.steps_per_epoch} = {epochs * settings.steps_per_epoch}"
                     " steps, see the note"),
        "--temperature": (config.temperature, repr(config.temperature), ""),
        "--alpha": (config.alpha, repr(config.alpha),
                    "same meaning in apr: the weight of the hard-label CE term"),
        "--backend": (config.device, backend, backend_note),
        "--output": (config.run_dir, out_dir, "apr writes the distilled student here"),
    }
    args: list[str] = ["distill"]
    applied: list[Applied] = []
    notes: list[str] = [epoch_note]
    if backend_note:
        notes.append(backend_note)
    for flag in DISTILL_FLAGS:
        if flag.name in values:
            value, arg, note = values[flag.name]
            args += [arg] if flag.positional else [flag.name, arg]
            applied.append(Applied(flag.source, value, flag.name, arg, note))
        elif flag.name == "--json":
            if not settings.json_summary:
                continue
            if flag.name in omit_optional:
                notes.append("the host's apr distill has no --json: the final losses come from "
                             "its '✓ Distillation complete' line instead")
                continue
            args.append(flag.name)
    not_applied = tuple(
        NotApplied(name, getattr(config, name), NOT_APPLIED[name],
                   getattr(config, name) != FIELDS_BY_NAME[name].default)
        for name in FIELD_NAMES if name in NOT_APPLIED)
    return AprInvocation(tuple(args), tuple(applied), not_applied, tuple(notes), epochs,
                         epochs * settings.steps_per_epoch)


# -- checking the host's CLI ------------------------------------------------------------------
@dataclass(frozen=True)
class HelpCheck:
    """Which declared flags the host's `apr distill --help` lacks."""

    missing: tuple[str, ...]  # every declared flag it lacks, required or not
    missing_required: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing_required

    def message(self, where: str = "the host") -> str:
        if self.ok:
            extra = f" (optional, not passed: {', '.join(self.missing)})" if self.missing else ""
            return f"apr distill on {where} offers every flag kdtui passes{extra}"
        return (f"apr distill on {where} lacks {', '.join(self.missing_required)}: its --help "
                "does not list "
                + ("it" if len(self.missing_required) == 1 else "them")
                + "; build a git_ref whose apr has "
                + ("it" if len(self.missing_required) == 1 else "them")
                + ", or update kdtui's apr schema (kdtui/profiles/apr/schema.py)")


def _flag_pattern(flag: str) -> re.Pattern[str]:
    # "--out" must not match "--output", nor "--student" match "--student-init"
    return re.compile(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])")


def check_against_help(help_text: str) -> HelpCheck:
    """Name every declared flag that `help_text` (the host's `apr distill --help`) lacks."""
    missing = tuple(f.name for f in DISTILL_FLAGS
                    if not f.positional and not _flag_pattern(f.name).search(help_text))
    required = tuple(name for name in missing if FLAGS_BY_NAME[name].required)
    return HelpCheck(missing, required)


def classify_field(name: str) -> str:
    """'applied', 'not_applied' or 'local' for a kdengine.config field (KeyError if none)."""
    if name in FIELD_TO_FLAG:
        return "applied"
    if name in NOT_APPLIED:
        return "not_applied"
    if name in LOCAL_ONLY:
        return "local"
    raise KeyError(name)


# -- the dashboard's launch form ----------------------------------------------------------------
# kdtui.screens.launch generates the apr form from these: the kdengine fields apr takes or kdtui
# uses (the NOT_APPLIED ones are not shown: apr would ignore them), then AprSettings. Each field
# parses and checks its text as `kdtui launch --profile apr` does, and `form_error_text` words a
# ConfigError as that command prints it after "error: ".
SETTING_HELP: dict[str, str] = {
    "repo_url": "The aprender git repository apr is built from",
    "git_ref": "Branch, tag or commit of it to build (--apr-ref)",
    "build": "Build apr on the host with git and cargo (off: use apr_bin as installed)",
    "cargo_package": "The Cargo package whose apr binary is built",
    "cargo_features": "Cargo features of the build (--backend cuda needs cuda,training)",
    "apr_bin": "The apr to run (empty: SRC/target/release/apr when building, else apr on PATH)",
    "steps_per_epoch": "apr's steps per epoch: steps are mapped to whole epochs of this length",
    "json_summary": "Pass --json when the host's apr offers it (the final losses as JSON)",
}
assert set(SETTING_HELP) == {f.name for f in fields(AprSettings)}, (
    "every AprSettings field needs its help line in SETTING_HELP (the launch form shows it)"
)
SETTINGS_GROUP = "apr build"
FORM_RUN_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in NOT_APPLIED)
_FORM_BOUNDS = {"device": "auto, cuda or cuda:N (apr has no cpu or mps backend)"}
# where kdengine's own help says what only kdengine does with the value (HF directories, RUNS_DIR)
_FORM_HELP = {
    "teacher": "Teacher checkpoint: a .apr file on the host (/, ./ or ~/ path), or a ref "
               "that `apr pull` fetches (hf://org/name/model.apr)",
    "student": "Student checkpoint to train: a .apr file on the host, or a ref `apr pull` "
               "fetches",
    "steps": "Steps to train, rounded up to whole epochs of steps_per_epoch",
    "device": "GPU to train on: auto and cuda are apr's cuda backend; cuda:N is noted, not "
              "applied",
    "run_dir": "Run directory on the host (empty: WORK_DIR/runs/<run_name>); apr writes the "
               "student into RUN_DIR/student",
}


@dataclass(frozen=True)
class AprFormField:
    """One input of the dashboard's apr launch form: a run field or an AprSettings field."""

    name: str
    kind: type  # str, int, float or bool
    default: Any
    help: str
    group: str
    setting: bool  # an AprSettings field (else a kdengine.config field)
    choices: tuple[str, ...] | None = None
    bounds: str = ""

    def bounds_text(self) -> str:
        return self.bounds

    def parse(self, raw: Any) -> Any:
        """The checked value of the form's text, or ConfigError with the message
        `kdtui launch --profile apr` gives for the same value."""
        if not self.setting:
            value = FIELDS_BY_NAME[self.name].parse(raw)
            if self.name == "device":
                backend_for_device(value)  # cpu/mps: the plan refuses them, say so at once
            refuse_option_like(self.name, value)  # as the plan does, at once
            return value
        value = raw
        if isinstance(raw, str):
            value = raw.strip()
            if self.kind is int:
                try:
                    value = int(value.replace("_", ""))
                except ValueError:
                    value = raw  # AprSettings says "must be an integer (got ...)"
        return getattr(AprSettings.from_mapping({self.name: value}), self.name)


def _run_form_field(name: str) -> AprFormField:
    spec = FIELDS_BY_NAME[name]
    help_text = _FORM_HELP.get(name, spec.help)
    if name in FIELD_TO_FLAG:
        help_text += f" -> apr {FIELD_TO_FLAG[name]}"
    else:
        help_text += f"; kdtui only: {LOCAL_ONLY[name]}"
    return AprFormField(name, spec.kind, APR_DEFAULTS.get(name, spec.default), help_text,
                        spec.group, False, spec.choices,
                        _FORM_BOUNDS.get(name, spec.bounds_text()))


def _setting_form_field(name: str) -> AprFormField:
    default = AprSettings.__dataclass_fields__[name].default
    kind = type(default)
    bounds = {bool: "true or false", int: "an integer >= 1"}.get(kind, "text")
    return AprFormField(name, kind, default, SETTING_HELP[name], SETTINGS_GROUP, True,
                        bounds=bounds)


def form_fields() -> tuple[AprFormField, ...]:
    """The apr launch form, in order: the run fields apr takes, then apr's settings."""
    return (tuple(_run_form_field(n) for n in FORM_RUN_FIELDS)
            + tuple(_setting_form_field(f.name) for f in fields(AprSettings)))


def form_error_text(exc: ConfigError) -> str:
    """A ConfigError worded as `kdtui launch --profile apr` prints it after "error: ": a run
    field by its flag (--steps), an apr setting by its name (git_ref)."""
    if not exc.field:
        return exc.message
    name = FIELDS_BY_NAME[exc.field].flag if exc.field in FIELDS_BY_NAME else exc.field
    return f"{name}: {exc.message}"


__all__ = [
    "DISTILL_FLAGS", "FIELD_TO_FLAG", "NOT_APPLIED", "LOCAL_ONLY", "AprFlag", "AprSettings",
    "AprInvocation", "Applied", "NotApplied", "HelpCheck", "build_invocation",
    "check_against_help", "steps_to_epochs", "backend_for_device", "classify_field",
    "AprFormField", "FORM_RUN_FIELDS", "SETTING_HELP", "form_fields", "form_error_text",
]
