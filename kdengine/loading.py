"""Turn a config's teacher, student and data specs into providers, a tokenizer and token splits,
with the checks the seed's runs lacked: one shared tokenizer, a padded teacher vocab trimmed
(never zero-padded), no silent teacher == student; and write the distilled student back out in
HF layout with its tokenizer files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdengine import demo
from kdengine.config import ConfigError, RunConfig
from kdengine.data import (
    ByteTokenizer,
    TokenSplits,
    is_token_shards,
    read_token_shards,
    split_token_shards,
    split_tokens,
)
from kdengine.data.examples import ExampleData, load_examples
from kdengine.data.formats import is_example_data, parse_fields
from kdengine.data.text_cache import document_tokens
from kdengine.diskspace import DiskFull, human, is_disk_full
from kdengine.models import UnsupportedArchitecture, load_decoder, save_decoder, stored_dtype
from kdengine.preflight import check_vocab, require_fp8
from kdengine.providers import ModelStudent, ModelTeacher
from kdengine.sources import check_distinct, resolve_model_dir
from kdengine.tokenizer import TOKENIZER_FILES, HFTokenizer, check_same_tokenizer, load_tokenizer


def _load_model(path: Path, field: str, dtype: torch.dtype, device: Any):
    try:
        return load_decoder(path, dtype=dtype, device=device)
    except UnsupportedArchitecture as exc:
        raise ConfigError(field, str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(field, str(exc)) from None


def load_teacher(config: RunConfig, device: torch.device, dtype: torch.dtype, log: Any):
    """The frozen teacher (in the compute dtype) and the tokenizer the run will use."""
    if config.teacher.startswith("demo://"):
        path = demo.teacher_path(log.line)
        tokenizer: Any = ByteTokenizer()
    else:
        path = resolve_model_dir(config.teacher, "teacher", log.line)
        tokenizer = load_tokenizer(path, "teacher")
    model = _load_model(path, "teacher", dtype, device)
    teacher = ModelTeacher(model)
    if config.teacher_dtype == "float8":
        _to_fp8(model, device, log)
    teacher.source_dir = path  # type: ignore[attr-defined]
    return teacher, tokenizer


# the narrowest student whose FP8 MLPs measured faster end to end on an H200 (Qwen2.5-0.5B at
# 896: +2.9 %; docs/performance.md, issue 16 round 9)
FP8_STUDENT_PAYS_FROM = 896
# where FP8 runs on the CPU: torch's reference kernel, for tests and small runs
_CPU_FP8 = " (on the CPU through torch's reference FP8 matmul: the same numbers, no speed-up)"


def _to_fp8(model: Any, device: torch.device, log: Any) -> None:
    """The teacher's block projections in rowwise-scaled e4m3 (kdengine.models.fp8)."""
    from kdengine.models.fp8 import quantize_teacher

    require_fp8("teacher_dtype", device)
    before = sum(t.numel() * t.element_size() for t in model.parameters())
    layers = quantize_teacher(model)
    after = sum(t.numel() * t.element_size() for t in model.parameters())
    note = _CPU_FP8 if device.type == "cpu" else ""
    head = ("the lm head's copy too" if getattr(model, "lm_head_fp8", None) is not None else
            "the lm head kept in the compute dtype: a dimension not a multiple of 16")
    log.line(f"teacher: {layers} linear layers in float8 e4m3 (rowwise scales, {head}), "
             f"weights {human(before)} -> {human(after)}{note}")


def _student_fp8(model: Any, device: torch.device, log: Any) -> None:
    """The student's MLPs through FP8 matmuls (kdengine.models.fp8_train)."""
    from kdengine.models.fp8_train import use_fp8_matmuls

    require_fp8("student_matmuls", device)
    fp8, kept = use_fp8_matmuls(model)
    rest = (f"; {kept} left in the compute dtype (a bias, or a dimension not a multiple of 16)"
            if kept else "")
    note = _CPU_FP8 if device.type == "cpu" else ""
    hidden = model.config.hidden_size
    if device.type == "cuda" and hidden < FP8_STUDENT_PAYS_FROM:
        note = (f"; at hidden size {hidden} it is likely no faster than the compute dtype (on an "
                f"H200 it paid from {FP8_STUDENT_PAYS_FROM}: docs/models.md)")
    log.line(f"student: {fp8} MLP{'' if fp8 + kept == 1 else 's'} of {fp8 + kept} through "
             f"float8 e4m3 matmuls (forward and input gradients, rowwise scales; weight "
             f"gradients in the compute dtype, fp32 master weights){rest}{note}")


def load_student(config: RunConfig, device: torch.device, tokenizer: Any, teacher: Any,
                 log: Any) -> ModelStudent:
    """The trainable student in fp32 master weights (autocast gives the compute dtype)."""
    if config.student.startswith("demo://"):
        model = demo.fresh_student(config.seed)
        student_tokenizer: Any = ByteTokenizer()
        path, saved_dtype = None, torch.float32
    else:
        path = resolve_model_dir(config.student, "student", log.line)
        teacher_dir = getattr(teacher, "source_dir", None)
        if teacher_dir is not None:
            check_distinct(teacher_dir, path, config.allow_same_teacher_student)
        student_tokenizer = load_tokenizer(path, "student")
        saved_dtype = stored_dtype(path)
        model = _load_model(path, "student", torch.float32, "cpu")
    # the preflight's rules (kdengine.preflight), again on what was loaded: a hub model may
    # have been downloaded after the preflight ran
    check_same_tokenizer(tokenizer, student_tokenizer)
    vocab = model.config.vocab_size
    check_vocab(teacher.vocab_size, vocab, student_tokenizer)
    if vocab < teacher.vocab_size:
        log.line(f"teacher vocab {teacher.vocab_size} > student vocab {vocab}: the teacher's "
                 f"padding ids {vocab}..{teacher.vocab_size - 1} are dropped from its logits")
    if config.student_matmuls == "float8":
        _student_fp8(model, device, log)
    student = ModelStudent(model.to(device).train())
    student.source_dir = path  # type: ignore[attr-defined]
    student.saved_dtype = saved_dtype  # type: ignore[attr-defined]
    return student


def load_data(config: RunConfig, tokenizer: Any, template_dir: Path | None = None,
              progress: Callable[[str], None] | None = None) -> TokenSplits | ExampleData:
    """config.data, checked to hold at least one batch: train and validation token streams of
    raw text (or pre-tokenized shards), or, for conversations, prompt/completion pairs and
    columnar datasets (kdengine.data.formats.is_example_data), packed rows of whole examples
    from the cached token store, with the chat template of the tokenizer in `template_dir`
    (the teacher's). `progress(line)` hears of a long tokenization."""
    if is_example_data(config.data, parse_fields(config.data_fields)):
        return load_examples(config, tokenizer, template_dir, progress)
    path = Path(config.data).expanduser()
    if not config.data.startswith("demo://") and is_token_shards(path):
        return split_token_shards(read_token_shards(config.data), config.val_fraction,
                                  config.seq_len, config.batch_size,
                                  vocab_size=tokenizer.vocab_size, spec=config.data)
    skipped: list[list[str]] = []
    # tokenized once, then read back from KDENGINE_CACHE by every later run and resume
    names, ids, offsets = document_tokens(config.data, tokenizer, on_bad_file=config.on_bad_file,
                                          skipped=skipped, progress=progress)
    splits = split_tokens(names, ids, offsets, tokenizer.eos_id, config.val_fraction,
                          config.seq_len, config.batch_size, spec=config.data)
    splits.skipped = skipped
    return splits


def save_final_student(config: RunConfig, student: ModelStudent, run_dir: Path,
                       tokenizer: Any) -> Path:
    """The distilled student in HF layout (config.json, model.safetensors in the dtype the
    student was stored in, tokenizer files), written beside and renamed into RUN_DIR/final."""
    final = Path(run_dir) / "final"
    tmp = final.with_name(".tmp-final")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = getattr(student, "saved_dtype", torch.float32)
    try:
        _write_final_student(config, student, tmp, tokenizer, dtype)
    except Exception as exc:  # nothing half-written is left; a full disk says its numbers
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            from kdengine.checkpoint import latest_checkpoint

            sizes = {t.untyped_storage().data_ptr(): t.numel()  # a tied head once
                     for t in student.model.state_dict().values()}
            raise DiskFull(final.parent, "the final student", sum(sizes.values()) * dtype.itemsize,
                           latest_checkpoint(run_dir), Path(run_dir)) from exc
        raise
    if final.exists():
        old = final.with_name(".old-final")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def _write_final_student(config: RunConfig, student: ModelStudent, tmp: Path, tokenizer: Any,
                         dtype: torch.dtype) -> None:
    save_decoder(student.model, tmp, dtype=dtype)
    if isinstance(tokenizer, HFTokenizer):
        # the student's own files first (its chat template), the teacher's for what it lacks
        sources = [d for d in (getattr(student, "source_dir", None), tokenizer.directory) if d]
        for name in TOKENIZER_FILES:
            src = next((Path(d) / name for d in sources if (Path(d) / name).exists()), None)
            if src is not None:
                shutil.copy2(src, tmp / name)
        written = HFTokenizer(tmp, "student")
        if written.fingerprint != tokenizer.fingerprint:
            raise RuntimeError(f"the tokenizer written to {tmp} differs from the run's "
                               f"({tokenizer.difference(written)})")
    for name in ("generation_config.json",):
        src = getattr(student, "source_dir", None)
        if src is not None and (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, tmp / name)
    (tmp / "kdengine.json").write_text(json.dumps(
        {"distilled_from": config.teacher, "student_init": config.student,
         "config": config.to_dict()}, indent=2) + "\n")
