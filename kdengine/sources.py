"""Where teacher, student and data come from: demo://, a local HF-layout directory, or a hub
repo id resolved through huggingface_hub's own cache API (snapshot_download; never by guessing
cache paths). Offline first: the local cache is asked before the network, HF_HUB_OFFLINE=1
forbids the network, and a download prints its progress into the run's log."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdengine.config import DEMO_DATA, DEMO_STUDENT, DEMO_TEACHER, ConfigError, RunConfig
from kdengine.hub import hub_offline, is_repo_id

# what a KD run needs from a model repo: config, weights, tokenizer (no .bin/.pt, no GGUF)
MODEL_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]


def check_sources(config: RunConfig) -> dict[str, Path]:
    """The teacher's and student's directories that exist here now (hub ids from the local
    cache; demo models and hub ids still to download are left out), refusing a source that
    cannot work: the first step of kdengine.preflight.check_run_inputs."""
    dirs: dict[str, Path] = {}
    for name, demo in (("teacher", DEMO_TEACHER), ("student", DEMO_STUDENT)):
        spec = getattr(config, name)
        if spec.startswith("demo://"):
            if spec != demo:
                raise ConfigError(name, f"{spec} is not a demo model (use {demo})")
            continue
        if is_repo_id(spec):
            cached = cached_snapshot(spec)
            if cached is None and hub_offline():
                raise ConfigError(name, _not_cached(spec, as_folder=True))
            if cached is not None:
                dirs[name] = cached
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(name, f"{spec} does not exist{_looked_in(path)} (give an "
                              "HF-layout directory or a hub repo id like org/name)")
        if not (path / "config.json").exists():
            raise ConfigError(name, f"{spec} has no config.json (not an HF-layout model)")
        dirs[name] = path
    if len(dirs) == 2:
        check_distinct(dirs["teacher"], dirs["student"], config.allow_same_teacher_student)
    if config.data.startswith("demo://"):
        if config.data != DEMO_DATA:
            raise ConfigError("data", f"{config.data} is not demo data (use {DEMO_DATA})")
    else:  # a local path or a hub dataset id (from the cache when HF_HUB_OFFLINE=1)
        from kdengine.data_source import check_data_source

        check_data_source(config.data)
    return dirs


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of `repo_id` in the local hub cache, or None (no network). A
    snapshot without the model's config or weights (AutoConfig or AutoTokenizer fetched only
    their files) is not the model: None, so the run downloads the rest."""
    snapshot = _snapshot_in_cache(repo_id)
    return snapshot if snapshot is not None and not _lacks_model_files(snapshot) else None


def _snapshot_in_cache(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _lacks_model_files(snapshot: Path) -> str:
    """What a cached snapshot lacks of a model's config and weights ('' when whole): the shards
    its index names count too. The tokenizer is not asked for: a repo may have none, which the
    loader names."""
    if not (snapshot / "config.json").exists():
        return "no config.json"
    if (snapshot / "model.safetensors").exists():
        return ""
    index = snapshot / "model.safetensors.index.json"
    if not index.exists():
        return "no model.safetensors or model.safetensors.index.json"
    try:
        names = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""  # the loader's refusal names a broken index
    absent = sorted(n for n in names if isinstance(n, str) and not (snapshot / n).exists())
    return f"no {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}" if absent else ""


def _looked_in(path: Path) -> str:
    """Where a relative path was looked for, for a refusal: ' in the working directory (DIR)'
    ('' for an absolute one): a path from a --config file is read from there too."""
    return "" if path.is_absolute() else f" in the working directory ({Path.cwd()})"


def _not_cached(spec: str, as_folder: bool = False) -> str:
    """Why `spec` is not in the local hub cache, for a refusal while HF_HUB_OFFLINE=1.
    `as_folder`: it was looked for as a folder first (`in/teacher` is shaped like a hub id):
    say where, and the fix for a folder too."""
    snapshot = _snapshot_in_cache(spec)
    lacks = _lacks_model_files(snapshot) if snapshot is not None else ""
    if lacks:
        return (f"{spec} is only partly in the local hub cache ({lacks}) and HF_HUB_OFFLINE=1 "
                "forbids downloading the rest (download it first, or unset HF_HUB_OFFLINE)")
    if as_folder:
        return (f"{spec} is no folder in the working directory ({Path.cwd()}) and is not in the "
                "local hub cache, and HF_HUB_OFFLINE=1 forbids downloading it (a folder: give "
                "its path from there, or an absolute one; a hub id: download it first, or "
                "unset HF_HUB_OFFLINE)")
    return (f"{spec} is not in the local hub cache and HF_HUB_OFFLINE=1 forbids downloading it "
            "(download it first, or unset HF_HUB_OFFLINE)")


def resolve_model_dir(spec: str, field: str,
                      say: Callable[[str], None] | None = None) -> Path:
    """A local directory for a model spec; hub ids come from the local cache first, then (when
    online and allowed) from the hub, with progress lines through `say`."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not is_repo_id(spec):
        raise ConfigError(field, f"{spec} is neither a directory{_looked_in(path)} nor a hub "
                          "repo id (org/name)")
    cached = cached_snapshot(spec)
    if cached is not None:
        if say:
            say(f"{field}: {spec} from the local hub cache ({cached})")
        return cached
    if hub_offline():
        raise ConfigError(field, _not_cached(spec, as_folder=True))
    from huggingface_hub import snapshot_download

    if say:
        say(f"{field}: downloading {spec} from the hub (config, safetensors, tokenizer)")
    try:
        got = Path(snapshot_download(spec, allow_patterns=MODEL_FILES,
                                     tqdm_class=line_progress(field, say)))
    except Exception as exc:  # hub errors have many types; the message is what matters
        # `in/teacher` is shaped like a hub id: a folder meant, but missing here, ends up here
        raise ConfigError(field, f"cannot download {spec} (no folder {spec} in the working "
                          f"directory ({Path.cwd()}) either): {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from None  # the hub's lines: one
    if say:
        say(f"{field}: {spec} downloaded to {got}")
    return got


def line_progress(field: str, say: Callable[[str], None] | None) -> Any:
    """A tqdm class for huggingface_hub that reports whole lines (every 10 %) through `say`
    instead of redrawing a bar with carriage returns: launch.log stays readable."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class LineProgress(hub_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._reported = -1  # display() runs inside tqdm's __init__ already
            # every update reaches display(), which prints only when the tenth changes
            kwargs.update(disable=say is None, mininterval=0, miniters=1)
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if say is None or not self.total:
                return True
            tenth = int(10 * self.n / self.total)
            if tenth != self._reported:
                self._reported = tenth
                desc = f"{self.desc} " if self.desc else ""
                say(f"{field}: download {desc}{100 * self.n / self.total:.0f}% "
                    f"({self.n / 1e6:.1f} of {self.total / 1e6:.1f} MB)")
            return True

    return LineProgress


def model_identity(path: Path) -> str:
    """What makes two model directories the same model: their config.json and a sample of every
    weight file's bytes (head and tail, 1 MiB each) with its size. Cheap for a 70B checkpoint."""
    digest = hashlib.sha256()
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        config = None
    digest.update(json.dumps(config, sort_keys=True).encode())
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{size}".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()


def check_distinct(teacher: Path, student: Path, allowed: bool) -> None:
    """Teacher == student (same directory, or the same weights under another name) gives a KD
    signal of zero: refused unless allow_same_teacher_student is set."""
    if allowed:
        return
    same_dir = teacher.resolve() == student.resolve()
    if same_dir or model_identity(teacher) == model_identity(student):
        how = "is the same directory as" if same_dir else "holds the same weights as"
        raise ConfigError("student", f"{student} {how} the teacher {teacher}, so the KD signal "
                          "is zero; pick another student or set --allow-same-teacher-student")
