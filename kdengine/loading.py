"""Turn a config's teacher, student and data specs into providers, a tokenizer and token splits,
with the checks the seed's runs lacked: a shared tokenizer, no silent teacher == student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from kdengine import demo
from kdengine.config import ConfigError, RunConfig
from kdengine.data import ByteTokenizer, read_documents, split_documents
from kdengine.models import load_decoder, save_decoder
from kdengine.providers import ModelStudent, ModelTeacher
from kdengine.sources import resolve_model_dir
from kdengine.tokenizer import HFTokenizer, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_teacher(config: RunConfig, device: torch.device, dtype: torch.dtype, log: Any):
    """The frozen teacher (in the compute dtype) and the tokenizer the run will use."""
    if config.teacher.startswith("demo://"):
        path = demo.teacher_path(log.line)
        tokenizer: Any = ByteTokenizer()
    else:
        path = resolve_model_dir(config.teacher, "teacher")
        tokenizer = load_tokenizer(path, "teacher")
    model = load_decoder(path, dtype=dtype, device=device)
    return ModelTeacher(model), tokenizer


def load_student(config: RunConfig, device: torch.device, tokenizer: Any, teacher: Any,
                 log: Any) -> ModelStudent:
    """The trainable student in fp32 master weights (autocast gives the compute dtype)."""
    if config.student.startswith("demo://"):
        model = demo.fresh_student(config.seed)
        student_tokenizer: Any = ByteTokenizer()
    else:
        path = resolve_model_dir(config.student, "student")
        model = load_decoder(path, dtype=torch.float32, device="cpu")
        student_tokenizer = load_tokenizer(path, "student")
    check_same_tokenizer(tokenizer, student_tokenizer)
    if model.config.vocab_size > teacher.vocab_size:
        raise ConfigError("student", f"vocab ({model.config.vocab_size}) is larger than the "
                          f"teacher's ({teacher.vocab_size}): they cannot share a tokenizer")
    if model.config.vocab_size < teacher.vocab_size:
        log.line(f"teacher vocab {teacher.vocab_size} > student vocab {model.config.vocab_size}:"
                 " the teacher's padding ids are dropped")
    return ModelStudent(model.to(device).train())


def check_same_tokenizer(a: Any, b: Any) -> None:
    if isinstance(a, ByteTokenizer) and isinstance(b, ByteTokenizer):
        return
    if isinstance(a, HFTokenizer) and isinstance(b, HFTokenizer) and a.fingerprint == b.fingerprint:
        return
    raise ConfigError("student", "does not share the teacher's tokenizer (its vocabulary or "
                      "merges differ); KD needs one tokenizer for both")


def load_data(config: RunConfig, tokenizer: Any):
    docs = read_documents(config.data)
    encode = getattr(tokenizer, "encode_tensor", None) or (
        lambda text: torch.tensor(tokenizer.encode(text), dtype=torch.int64))
    return split_documents(docs, encode, tokenizer.eos_id, config.val_fraction,
                           config.seq_len)


def save_final_student(config: RunConfig, student: ModelStudent, run_dir: Path,
                       tokenizer: Any) -> Path:
    """The distilled student in HF layout (config.json, model.safetensors, tokenizer files)."""
    final = Path(run_dir) / "final"
    tmp = final.with_name(".tmp-final")
    shutil.rmtree(tmp, ignore_errors=True)
    save_decoder(student.model, tmp)
    if isinstance(tokenizer, HFTokenizer):
        for name in TOKENIZER_FILES:
            src = tokenizer.directory / name
            if src.exists():
                shutil.copy2(src, tmp / name)
    (tmp / "kdengine.json").write_text(json.dumps(
        {"distilled_from": config.teacher, "student_init": config.student,
         "config": config.to_dict()}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
