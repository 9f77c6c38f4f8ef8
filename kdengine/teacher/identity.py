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
    """The data as the run reads it: example data by its token store's key (files, tokenizer,
    chat template, labelling options), raw text by each file's path, size and mtime, the demo
    data by this Python's standard library."""
    from kdengine.data.formats import is_example_data, parse_fields

    if config.data == DEMO_DATA:
        return f"demo:{sysconfig.get_paths()['stdlib']}:{platform.python_version()}"
    if is_example_data(config.data, parse_fields(config.data_fields)):
        from kdengine.data.chat import load_chat_template
        from kdengine.data.formats import find_sources
        from kdengine.data.store import DataOptions, store_key

        template = load_chat_template(template_dir) if template_dir is not None else None
        options = DataOptions(split=config.data_split, fields=parse_fields(config.data_fields),
                              train_on=config.train_on, on_bad_file=config.on_bad_file)
        sources = find_sources(config.data, options.split, options.fields)
        return "store:" + store_key(sources, tokenizer, template, options)
    import hashlib
    import json

    from kdengine.data.store import _file_identity

    files = _file_identity(Path(config.data).expanduser())
    return "files:" + hashlib.sha256(json.dumps(files).encode()).hexdigest()[:24]


def row_options(config: RunConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ROW_FIELDS}
