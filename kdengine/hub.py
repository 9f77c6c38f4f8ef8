"""What the hub is to a spec, torch-free and without the network: whether `org/name` names a hub
repo (not a local path), and whether HF_HUB_OFFLINE forbids downloading. Models
(kdengine.sources) and datasets (kdengine.data.formats) both ask."""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def shaped_like_repo_id(spec: str) -> bool:
    """`org/name` by its shape alone (a path on another host cannot be looked at here)."""
    return bool(_REPO_ID.match(spec))


def is_repo_id(spec: str) -> bool:
    return shaped_like_repo_id(spec) and not Path(spec).expanduser().exists()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub itself reads it (read now, so tests may set it)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")
