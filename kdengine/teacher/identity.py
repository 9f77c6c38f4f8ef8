"""What a teacher cache's bytes depend on, computed cheaply (file stats, config.json and a sample
of the weights, the tokenizer's fingerprint): the writer records it in the manifest and a run
compares it with its own. Imports no torch."""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path
from typing import Any

from kdengine.config import DEMO_DATA, DEMO_TEACHER, RunConfig

# The run fields that decide which rows the data becomes (and so which rows a cache holds).
# Not among them: seed, batch_size, steps, lr, alpha, temperature, eval_* ... (a sweep over
# those reuses one cache; kdengine.teacher.rows says why).
ROW_FIELDS = ("seq_len", "val_fraction", "data_split", "data_fields", "train_on", "on_long",
              "on_bad_file")


def teacher_identity(spec: str, directory: Path | None) -> str:
    """The teacher's weights, by what makes two model directories the same model
    (kdengine.sources.model_identity); the demo teacher by its training recipe."""
    if spec == DEMO_TEACHER:
        from kdengine.demo import _recipe_id

        return f"demo:{_recipe_id()}"
    from kdengine.sources import model_identity

    return model_identity(Path(directory)) if directory is not None else f"unresolved:{spec}"


def tokenizer_identity(tokenizer: Any) -> str:
    fingerprint = getattr(tokenizer, "fingerprint", None)
    return str(fingerprint) if fingerprint else f"demo-bytes-{tokenizer.vocab_size}"


def data_identity(config: RunConfig, tokenizer: Any, template_dir: Path | None) -> str:
    """The data as the run reads it, by what its files hold (not their times: a `touch`, a
    copy or a checkout that rewrites them unchanged keeps a cache): example data as its token
    store's key would be with each file's digest for its time, raw text by each file's name,
    size and digest, the demo data by this Python's standard library."""
    return _data_identity(config, tokenizer, template_dir, by_content=True)


def legacy_data_identity(config: RunConfig, tokenizer: Any, template_dir: Path | None) -> str:
    """The identity a cache written before content identities recorded ("store:" or "files:",
    by the files' paths, sizes and mtimes): such a cache is still taken while its files have
    the times it was written with."""
    return _data_identity(config, tokenizer, template_dir, by_content=False)


def is_legacy_identity(identity: str) -> bool:
    return identity.startswith(("store:", "files:"))


def _data_identity(config: RunConfig, tokenizer: Any, template_dir: Path | None,
                   by_content: bool) -> str:
    from kdengine.data.formats import is_example_data, parse_fields

    if config.data == DEMO_DATA:
        return f"demo:{sysconfig.get_paths()['stdlib']}:{platform.python_version()}"
    from kdengine.data.store import _file_identity, content_identity

    identify = content_identity if by_content else _file_identity
    if is_example_data(config.data, parse_fields(config.data_fields)):
        from kdengine.data.chat import load_chat_template
        from kdengine.data.formats import find_sources
        from kdengine.data.store import DataOptions, store_key

        template = load_chat_template(template_dir) if template_dir is not None else None
        options = DataOptions(split=config.data_split, fields=parse_fields(config.data_fields),
                              train_on=config.train_on, on_bad_file=config.on_bad_file)
        sources = find_sources(config.data, options.split, options.fields)
        key = store_key(sources, tokenizer, template, options, identify)
        return f"examples-content:{key}" if by_content else f"store:{key}"
    import hashlib
    import json

    files = identify(Path(config.data).expanduser())
    if by_content:  # the reader's version too: a reading change (a BOM dropped) is new rows
        from kdengine.data.text_cache import TEXT_FORMAT

        files = [TEXT_FORMAT, files]
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:24]
    return f"text-content:{digest}" if by_content else f"files:{digest}"


def row_options(config: RunConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ROW_FIELDS}
