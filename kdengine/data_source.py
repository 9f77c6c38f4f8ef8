"""What `--data` names, checked without reading it and without torch (the dashboard's form and
the engine's preflight both ask): the file suffixes kdengine reads, a local path or a hub
dataset id, and a hub dataset's local snapshot (from the cache, else downloaded unless
HF_HUB_OFFLINE=1). The readers themselves are kdengine.data.formats (records) and kdengine.data
(raw text); kdengine.data imports torch, so none of this lives there."""

from __future__ import annotations

from pathlib import Path

from kdengine.config import ConfigError
from kdengine.hub import hub_offline, is_repo_id

# raw text, one document (or `text` record) a file: the one list, kdengine.data's reader takes it
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
DATA_SUFFIXES = RECORD_SUFFIXES + TEXT_SUFFIXES  # what a file given as --data may end with


def check_data_file(path: Path, spec: str) -> None:
    """Refuse a file given as --data that no reader takes (a .csv, a .yaml, no suffix): read as
    one raw-text document it would train on nonsense without a word."""
    if path.suffix in DATA_SUFFIXES:
        return
    what = f"a {path.suffix} file" if path.suffix else "a file without a suffix"
    fix = (f"rename it to {path.stem}{path.suffix.lower()} (suffixes are read in lower case)"
           if path.suffix.lower() in DATA_SUFFIXES else "convert it to one, e.g. JSONL")
    raise ConfigError("data", f"{spec} is {what}, not a format kdengine reads (records: "
                      f"{', '.join(RECORD_SUFFIXES)}; raw text: {', '.join(TEXT_SUFFIXES)}); "
                      + fix)


def upper_case_suffixes(files: list[Path], readable: tuple[str, ...]) -> str:
    """For a folder with no file kdengine reads: '; ...' naming those whose suffix is one of
    `readable` but for its case (NOTES.TXT), else ''."""
    near = [f for f in files if f.suffix != f.suffix.lower() and f.suffix.lower() in readable]
    if not near:
        return ""
    if len(near) == 1:
        return (f"; {near[0].name} ends in an upper-case suffix, which kdengine does not read: "
                f"rename it to {near[0].stem}{near[0].suffix.lower()}")
    return (f"; {near[0].name} and {len(near) - 1} more end in an upper-case suffix, which "
            "kdengine does not read: rename them to lower case")


def check_data_source(spec: str) -> None:
    """Refuse --data that cannot be read, before any run: a missing path that is no hub id, a
    file of a format no reader takes, a hub dataset missing from the cache while HF_HUB_OFFLINE=1
    forbids downloading it. Nothing is read or downloaded (the data check does that)."""
    path = Path(spec).expanduser()
    if path.is_file():
        check_data_file(path, spec)
    elif path.exists():
        return
    elif not is_repo_id(spec) or path.suffix in DATA_SUFFIXES:  # data/x.jsonl: a typo, no repo
        raise ConfigError("data", f"{spec} does not exist (give a text/jsonl file, a directory "
                          "of them, a pre-tokenized shard directory, a saved dataset, a hub "
                          "dataset id like org/name, or demo://python-stdlib)")
    elif hub_offline() and cached_dataset_dir(spec) is None:
        raise offline_missing(spec)


DATASET_PATTERNS = [f"*{s}" for s in RECORD_SUFFIXES] + [f"*{s}" for s in TEXT_SUFFIXES] \
    + ["**/*.json"]


def cached_dataset_dir(repo_id: str) -> Path | None:
    """The snapshot of hub dataset `repo_id` in the local hub cache, or None (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset",
                                      allow_patterns=DATASET_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def offline_missing(repo_id: str) -> ConfigError:
    return ConfigError("data", f"{repo_id} is not a local path, and not in the local hub cache "
                       "as a dataset while HF_HUB_OFFLINE=1 forbids downloading it (give an "
                       "existing file or folder, download the dataset first, or unset "
                       "HF_HUB_OFFLINE)")


def hub_dataset_dir(repo_id: str) -> Path:
    """The local snapshot of a hub dataset repo: from the cache, else downloaded (unless
    HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = cached_dataset_dir(repo_id)
    if cached is not None:
        return cached
    if hub_offline():
        raise offline_missing(repo_id)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset",
                                      allow_patterns=DATASET_PATTERNS))
    except GatedRepoError:
        raise ConfigError("data", f"{repo_id} is a gated hub dataset: accept its terms on its "
                          "hub page and log in (hf auth login), or give a local copy") from None
    except RepositoryNotFoundError:
        raise ConfigError("data", f"{repo_id} is not a local path, and the hub has no dataset "
                          f"{repo_id} (a private one needs hf auth login): give an existing "
                          "file or folder, or a hub dataset id like org/name") from None
    except Exception as exc:  # network and the rest: one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError("data", f"cannot download the dataset {repo_id} ("
                          f"{type(exc).__name__}: {first}): check the network, or download it "
                          "first and set HF_HUB_OFFLINE=1") from None
