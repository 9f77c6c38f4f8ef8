"""The engine's cache directory, torch-free: KDENGINE_CACHE, else the user's cache dir
(platformdirs). It holds the demo teacher (demo/), torch.compile's artifacts (compile/), the
tokenized data (data/), the CPU thread registry and the teacher caches `kdengine cache-teacher`
writes by default (teacher/<key>). The preflight (kdengine.preflight.check_cache_root) refuses
one that cannot be made or written before a run directory exists."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KDENGINE_CACHE"


def cache_root() -> Path:
    """$KDENGINE_CACHE (with ~ expanded), else the user's cache dir for kdengine."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("kdengine")
