"""Where teacher, student and data come from: demo://, a local HF-layout directory, or a hub
repo id resolved through huggingface_hub's cache (never by guessing cache paths)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kdengine.config import DEMO_DATA, DEMO_STUDENT, DEMO_TEACHER, ConfigError, RunConfig

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not Path(spec).expanduser().exists()


def check_sources(config: RunConfig) -> None:
    """Fail fast, before any run directory exists, on a model or data source that cannot work."""
    for name, demo in (("teacher", DEMO_TEACHER), ("student", DEMO_STUDENT)):
        spec = getattr(config, name)
        if spec.startswith("demo://"):
            if spec != demo:
                raise ConfigError(name, f"{spec} is not a demo model (use {demo})")
            continue
        if is_repo_id(spec):
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(name, f"{spec} does not exist (give an HF-layout directory or a "
                              "hub repo id like org/name)")
        if not (path / "config.json").exists():
            raise ConfigError(name, f"{spec} has no config.json (not an HF-layout model)")
    if config.data.startswith("demo://"):
        if config.data != DEMO_DATA:
            raise ConfigError("data", f"{config.data} is not demo data (use {DEMO_DATA})")
    elif not Path(config.data).expanduser().exists():
        raise ConfigError("data", f"{config.data} does not exist (give a text/jsonl file, a "
                          f"directory of them, or {DEMO_DATA})")


def resolve_model_dir(spec: str, field: str) -> Path:
    """A local directory for a model spec; hub ids come from the local cache first."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not is_repo_id(spec):
        raise ConfigError(field, f"{spec} is neither a directory nor a hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
                "generation_config.json", "special_tokens_map.json"]
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(field, f"{spec} is not in the local hub cache and HF_HUB_OFFLINE=1 "
                              "forbids downloading it") from None
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as exc:  # hub errors have many types; the message is what matters
        raise ConfigError(field, f"cannot download {spec}: {type(exc).__name__}: {exc}") from None
