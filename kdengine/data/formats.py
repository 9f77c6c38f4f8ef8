"""Training examples from files, saved datasets and hub datasets, detected per record.

A record is one of (TRL's conventions):
    {"text": "..."}                                        plain text, every token trains
    {"messages": [{"role": ..., "content": ...}, ...]}     a conversation (system, user,
                                                           assistant, tool turns)
    {"prompt": ..., "completion": ...}                     both strings, or both message lists
    {"conversations": [{"from": "human", "value": ...}]}   ShareGPT's, read as messages
                                                           (kdengine.data.sharegpt)
A field mapping renames columns first ({"messages": "dialog"}); turns written ShareGPT's way
(from/value) are messages wherever messages are read.

Sources: .jsonl, .json (an array of records), .parquet, .arrow (IPC stream or file), text files
(one `text` record each), a folder of them, a `datasets` save_to_disk folder, and a hub dataset
id resolved through huggingface_hub's cache (offline first; HF_HUB_OFFLINE=1 never downloads).
pyarrow and `datasets` (the `data` extra) are imported only when such data is given. Every bad
record is a BadRecord naming its file and line (or row); the caller decides to skip or fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdengine.config import ConfigError
from kdengine.data.sharegpt import UnknownFrom, is_sharegpt, to_messages
from kdengine.data_source import (  # noqa: F401 - kdengine.data's and tests' names
    DATA_SUFFIXES,
    RECORD_SUFFIXES,
    TEXT_SUFFIXES,
    cached_dataset_dir,
    check_data_file,
    check_data_source,
    hub_dataset_dir,
    upper_case_suffixes,
)

SPLITS = ("train", "validation", "test")
# the words a file's or folder's name says a split with, as `datasets` reads a folder's splits
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation",
               "valid": "validation", "dev": "validation", "val": "validation", "test": "test",
               "testing": "test", "eval": "test", "evaluation": "test"}
KINDS = ("text", "messages", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")
# metadata that hub repos and save_to_disk folders keep beside the data: never records
METADATA = ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json")
DATA_EXTRA = "pip install 'kdtui[data]' (the datasets library and pyarrow)"


class BadRecord(Exception):
    """One record (or a whole file) that cannot be read; `where` is "file:line" or "file:row N"."""

    def __init__(self, where: str, message: str) -> None:
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


def json_kind(value: object) -> str:
    """What a record's value is, in JSON's words ("a number", "an object"), not Python's ("int",
    "dict"): a refusal names what the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return kinds.get(type(value), f"a value of type {type(value).__name__}")


def not_utf8(head: bytes, start: int) -> str:
    """Why text whose bytes open with `head` is no UTF-8 (the first bad byte at `start`):
    UTF-16, which PowerShell's `>` and Notepad's "Unicode" write, is named for what it is."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is UTF-16 text, not UTF-8 (PowerShell's > and Notepad's 'Unicode' write it)"
    return f"is not UTF-8 text (byte {start})"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """"1 example", "2 examples": a count with its noun in the number it takes."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def json_error_text(exc: json.JSONDecodeError) -> str:
    """The decoder's reason with where on the line it is ("Unterminated string starting at
    column 12"): exc.msg alone stops at "starting at". The line is named by the caller."""
    at = "" if exc.msg.endswith(" at") else " at"
    return f"{exc.msg}{at} column {exc.colno}"


@dataclass(frozen=True)
class Example:
    """One training example. `name` is where it came from ("chat.jsonl:12", "part.parquet:row
    3"): errors name it, and its hash decides the validation split. `record` holds the keys of
    its kind only: text; messages; prompt and completion."""

    name: str
    kind: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Source:
    """One file (or saved dataset) of records; `examples()` reads it lazily."""

    path: Path
    name: str  # as shown in errors and example names: relative to the data root
    split: str
    fields: tuple[tuple[str, str], ...] = ()

    def examples(self, columns: set[str] | None = None) -> Iterator[Example]:
        """The source's examples; `columns` (when given) gathers every record's field names,
        by which a --data-fields column that no record has is found (kdengine.data.store)."""
        for where, row in self._rows():
            if columns is not None and isinstance(row, dict):
                columns.update(map(str, row))
            yield to_example(where, row, dict(self.fields))

    def _rows(self) -> Iterator[tuple[str, Any]]:
        suffix = self.path.suffix
        if self.path.is_dir():
            return _saved_dataset_rows(self.path, self.name, self.split)
        if suffix == ".jsonl":
            return _jsonl_rows(self.path, self.name)
        if suffix == ".json":
            return _json_rows(self.path, self.name)
        if suffix == ".parquet":
            return _parquet_rows(self.path, self.name)
        if suffix == ".arrow":
            return _arrow_rows(self.path, self.name)
        return _text_rows(self.path, self.name)


def parse_fields(text: str) -> tuple[tuple[str, str], ...]:
    """"messages=conversations,prompt=question" -> (("messages", "conversations"), ...): our
    name, then the column that holds it."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        ours, sep, theirs = part.partition("=")
        if not sep or ours.strip() not in ("text", "messages", "prompt", "completion") \
                or not theirs.strip():
            raise ConfigError("data_fields", f"{part!r} is not NAME=COLUMN with NAME one of "
                              "text, messages, prompt, completion (e.g. messages=dialog)")
        pairs.append((ours.strip(), theirs.strip()))
    return tuple(pairs)


def find_sources(spec: str, split: str = "train",
                 fields: tuple[tuple[str, str], ...] = ()) -> list[Source]:
    """The sources of `spec`: a file, a folder (its files, or a saved dataset), or a hub id."""
    path = Path(spec).expanduser()
    if not path.exists():
        from kdengine.hub import is_repo_id

        if not is_repo_id(spec):
            raise ConfigError("data", f"{spec} does not exist (give a file, a folder, a saved "
                              "dataset or a hub dataset id like org/name)")
        path = hub_dataset_dir(spec)
    if path.is_file():
        check_data_file(path, spec)
        named = _split_of(path, path.parent)
        if split != "train" and split != named:  # a split the data lacks, as for a folder
            has = f"one file, named for split {named!r}" if named else \
                "one file, whose name says no split: train only"
            raise ConfigError("data_split", f"{spec} has no split {split!r} ({has})")
        return [Source(path, path.name, split, fields)]
    if is_saved_dataset(path):
        named = _saved_split(path)
        if split != "train" and split != named and not (path / "dataset_dict.json").is_file():
            # one Dataset, not a DatasetDict: train (or the split it was loaded as) only
            has = f"one saved Dataset, of split {named!r}" if named else \
                "one saved Dataset, not a DatasetDict: train only"
            raise ConfigError("data_split", f"{spec} has no split {split!r} ({has})")
        return [Source(path, path.name, split, fields)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)
                   and p.suffix in DATA_SUFFIXES and p.name not in METADATA
                   and p.stem.upper() != "README")  # a dataset card, not data
    if not files:
        near = upper_case_suffixes(sorted(p for p in path.rglob("*") if p.is_file()
                                          and not _hidden(p, path)), DATA_SUFFIXES)
        raise ConfigError("data", f"{spec} holds no {', '.join(RECORD_SUFFIXES)} or text "
                          f"({', '.join(TEXT_SUFFIXES)}) files{near}")
    chosen, splits = _of_split(files, path, split)
    if not chosen:
        has = ", ".join(splits) if splits else \
            "train only: no file name says a split, so every file is train"
        raise ConfigError("data_split", f"{spec} has no split {split!r} (it has {has})")
    return [Source(f, str(f.relative_to(path)), split, fields) for f in chosen]


def is_example_data(spec: str, fields: tuple[tuple[str, str], ...] = ()) -> bool:
    """Whether `spec` goes through examples (this module) rather than kdengine.data's packed
    document stream, which raw text keeps: a hub id, a saved dataset, a .json, .parquet or
    .arrow file, JSONL whose first record is a conversation or a prompt/completion pair, or
    JSONL with a field mapping."""
    from kdengine.hub import is_repo_id

    path = Path(spec).expanduser()
    if spec.startswith("demo://") or (path / "tokens.json").is_file():  # pre-tokenized shards
        return False
    if is_repo_id(spec) or is_saved_dataset(path):
        return True
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)) if path.is_dir() \
        else []
    if any(f.suffix in (".parquet", ".arrow") for f in files):
        return True
    if path.is_file() and path.suffix == ".json":
        return True
    # in a folder, a .json file is data when it holds records (a raw-text folder, the stdlib
    # say, may hold .json files of other kinds: its text stays the document stream)
    ours = {ours: theirs for ours, theirs in fields}
    keys = {"text", "messages", "conversations", "prompt", "completion", *ours.values()}
    if any(_holds_records(f, keys) for f in files
           if f.suffix == ".json" and f.name not in METADATA):
        return True
    jsonl = [f for f in files if f.suffix == ".jsonl"]
    if jsonl and fields:  # the document stream reads `text` only: columns are mapped here
        return True
    for f in jsonl:
        try:
            _, row = next(_jsonl_rows(f, f.name), ("", None))
        except BadRecord:
            continue  # the reader that takes it names the error
        if isinstance(row, dict):  # any file's: a folder may hold text and conversations
            keys = set(row) | {k for k, v in ours.items() if v in row}
            if keys & {"messages", "conversations", "prompt", "completion"}:
                return True
    return False


_RECORDS_START = re.compile(r'^\s*(\{\s*"data"\s*:\s*)?\[\s*')


def _holds_records(path: Path, keys: set[str]) -> bool:
    """Whether a .json file starts as an array of records (or {"data": [...]}) whose first
    record has one of `keys`, from its first 64 kB (a longer first record: a key in them)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace").removeprefix("\ufeff")
            start = _RECORDS_START.match(head)
            if start is None:  # most JSON that is not data: read no further
                return False
            head += f.read((1 << 16) - 4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    try:
        first, _ = json.JSONDecoder().raw_decode(head, start.end())
    except json.JSONDecodeError:
        return any(f'"{key}"' in head for key in keys)
    return isinstance(first, dict) and bool(set(first) & keys)


def _hidden(path: Path, root: Path) -> bool:
    """Whether `path` is hidden under `root` (its name or a folder on the way starts with '.':
    .DS_Store, .git/, macOS's ._name copies): no data folder reads it."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def empty_refusal(spec: str, what: str, skipped: list[list[str]]) -> ConfigError:
    """The refusal of data that holds nothing to train on (`what`: "is empty: no text to train
    on", "holds no examples"): every file bad and skipped (their count, the first named), or
    none holding a record or any text; with the fix."""
    if not skipped:
        return ConfigError("data", f"{spec} {what}; give data that holds text or records")
    if len(skipped) == 1:
        return ConfigError("data", f"{spec} {what} (its one file skipped: {skipped[0][1]}); "
                           "fix that file, or give other data")
    return ConfigError("data", f"{spec} {what} (all {len(skipped)} files skipped; first: "
                       f"{skipped[0][1]}); fix those files (the first is named), or give "
                       "other data")


def visible_files(root: Path) -> list[Path]:
    """Every file under the folder `root` that is not hidden (_hidden), sorted by path."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))


# a split's word between separators anywhere in a file's or folder's name, as `datasets` reads a
# folder's splits (its NON_WORDS_CHARS): alpaca_train.jsonl, data/sft-test-00000.parquet, dev/
_SPLIT_IN_NAME = re.compile(r"(?:^|[-._ 0-9])(" + "|".join(SPLIT_WORDS) + r")(?=[-._ 0-9]|$)")


def _split_of(path: Path, root: Path) -> str | None:
    """The split a file's path names (train.jsonl, data/test-00000-of-00002.parquet,
    alpaca_test.jsonl, dev/...: validation, eval.jsonl: test)."""
    for part in path.relative_to(root).with_suffix("").parts:
        if m := _SPLIT_IN_NAME.search(part):
            return SPLIT_WORDS[m.group(1)]
    return None


# push_to_hub's layout, whose split names are any (ultrachat_200k's train_sft, test_gen, ...):
# data/<split>-00000-of-00003[-<hash>].<suffix>, as `datasets` reads it (SPLIT_PATTERN_SHARDED)
_SHARDED_SPLIT = re.compile(r"^data/(\w+(?:\.\w+)*)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/.]+$")


def _of_split(files: list[Path], root: Path, split: str) -> tuple[list[Path], list[str]]:
    """The files of `split` and the splits the folder has, as `datasets` tells a folder's
    splits, first rule that applies: the dataset card's `configs` (README.md's YAML, its default
    config's data_files by split); push_to_hub's data/<split>-NNNNN-of-NNNNN files, any split
    name (train_sft is its own split, not train); a split's word in file names (train.jsonl,
    alpaca_test.jsonl, dev/...); else every file is "train" (and no split is listed)."""
    splits = _card_splits(files, root)
    if splits is None:
        sharded = {f: _SHARDED_SPLIT.match(f.relative_to(root).as_posix()) for f in files}
        if any(sharded.values()):  # the files outside the layout are no split's, as datasets'
            splits = {f: m.group(1) if m else None for f, m in sharded.items()}
        else:
            splits = {f: _split_of(f, root) for f in files}
    if not any(splits.values()):
        return (files if split == "train" else []), []
    have = sorted({s for s in splits.values() if s},
                  key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    return [f for f in files if splits[f] == split], have


def _card_splits(files: list[Path], root: Path) -> dict[Path, str | None] | None:
    """Each file's split as the dataset card (root/README.md) assigns it: its YAML header's
    `configs`, the default one's (default: true, or named "default", or the only one)
    data_files, a path or list (train) or [{split, path}, ...]; None when the card says none
    (no card, no configs, no YAML reader: the next rule then applies)."""
    card = root / "README.md"
    try:
        text = card.read_text(encoding="utf-8-sig") if card.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    try:
        import yaml

        header = yaml.safe_load(text[3:].split("\n---", 1)[0])
    except Exception:  # noqa: BLE001 - no yaml, or a card it cannot read: the files decide
        return None
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    chosen = next((c for c in configs if isinstance(c, dict) and c.get("default")), None) or \
        next((c for c in configs if isinstance(c, dict) and c.get("config_name") == "default"),
             None) or (configs[0] if len(configs) == 1 else None)
    data_files = chosen.get("data_files") if isinstance(chosen, dict) else None
    if isinstance(data_files, (str, list)) and not (
            isinstance(data_files, list) and data_files and isinstance(data_files[0], dict)):
        data_files = [{"split": "train", "path": data_files}]
    if not isinstance(data_files, list):
        return None
    patterns: list[tuple[str, str]] = []
    for entry in data_files:
        if isinstance(entry, dict) and isinstance(entry.get("split"), str):
            paths = entry.get("path")
            for path in [paths] if isinstance(paths, str) else paths or []:
                patterns.append((str(path).removeprefix("./"), entry["split"]))
    if not patterns:
        return None
    from fnmatch import fnmatchcase

    return {f: next((split for pattern, split in patterns
                     if fnmatchcase(f.relative_to(root).as_posix(), pattern)), None)
            for f in files}


def _saved_split(path: Path) -> str | None:
    """The split a saved Dataset says it is (state.json's `_split`, set where it was loaded
    with split=...), or None."""
    try:
        split = json.loads((path / "state.json").read_text(encoding="utf-8")).get("_split")
    except (OSError, ValueError, AttributeError):
        return None
    return split if isinstance(split, str) else None


def is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or
                              (path / "dataset_dict.json").is_file())


def to_example(where: str, row: Any, fields: dict[str, str]) -> Example:
    """The record `row` as an Example of its kind, or a BadRecord saying what is wrong."""
    if not isinstance(row, dict):
        raise BadRecord(where, f"is {json_kind(row)}, not a record (an object of fields): "
                        "write it as an object with a text, messages, or prompt and "
                        "completion field")
    absent = [(ours, theirs) for ours, theirs in fields.items() if theirs not in row]
    try:
        return _to_example(where, row, fields)
    except BadRecord:
        if not absent:
            raise
        ours, theirs = absent[0]  # the mapping the user gave names a column this record lacks
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise BadRecord(where, f"has no column {theirs!r} (--data-fields {ours}={theirs}; its "
                        f"fields: {keys})") from None


def _to_example(where: str, row: dict[str, Any], fields: dict[str, str]) -> Example:
    for ours, theirs in fields.items():
        if theirs in row:
            row = {**row, ours: row[theirs]}
    system = row.get("system")  # ShareGPT's record-level system prompt
    if row.get("messages") is not None:
        return Example(where, "messages", {"messages": _messages(where, row["messages"],
                                                                 "messages", system)})
    if row.get("conversations") is not None:  # ShareGPT's column, detected as messages is
        return Example(where, "messages", {"messages": _messages(where, row["conversations"],
                                                                 "conversations", system)})
    if row.get("prompt") is not None or row.get("completion") is not None:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            return Example(where, "prompt_completion", {"prompt": prompt,
                                                        "completion": completion})
        if isinstance(prompt, list) and isinstance(completion, list):
            return Example(where, "prompt_completion", {
                "prompt": _messages(where, prompt, "prompt", system),
                "completion": _messages(where, completion, "completion")})
        if prompt is None or completion is None:
            has, lacks = ("completion", "prompt") if prompt is None else ("prompt", "completion")
            raise BadRecord(where, f"has a {has} but no {lacks} (a pair needs both; name "
                            f"another column with --data-fields, e.g. {lacks}=COLUMN)")
        raise BadRecord(where, f"has a prompt that is {json_kind(prompt)} and a completion "
                        f"that is {json_kind(completion)}: make both strings, or both lists "
                        "of {role, content} messages")
    if row.get("text") is not None:
        if not isinstance(row["text"], str):
            raise BadRecord(where, f"has a text field that is {json_kind(row['text'])}, not a "
                            "string: give it a string")
        return Example(where, "text", {"text": row["text"]})
    raise BadRecord(where, no_fields_text(row))


def answers_of(example: Example) -> tuple[int, int]:
    """(answers, empty ones) of an example: the assistant turns that train (a conversation's,
    a prompt/completion pair's completion) or a completion string. An empty one (content ""
    or blanks, no tool_calls, no reasoning) trains only the end-of-turn text: as TRL and
    transformers train it, but almost always a sign of broken data."""
    record = example.record
    if example.kind == "text":
        return 0, 0
    if example.kind == "prompt_completion" and isinstance(record["completion"], str):
        return 1, int(not record["completion"].strip())
    turns = record["messages"] if example.kind == "messages" else record["completion"]
    answers = [m for m in turns if m.get("role") == "assistant"]
    return len(answers), sum(1 for m in answers if _is_empty_answer(m))


def _is_empty_answer(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return (not message.get("tool_calls") and isinstance(content, str) and not content.strip()
            and not any(message.get(k) for k in ("reasoning_content", "thinking", "reasoning")))


def no_fields_text(row: dict[str, Any]) -> str:
    """What a record with none of our fields lacks, its fields, and the --data-fields that
    would name one (a list column as messages, a string column as text)."""
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    column = next((k for k, v in row.items() if isinstance(v, list)), None)
    example = f"messages={column}" if column is not None else next(
        (f"text={k}" for k, v in row.items() if isinstance(v, str)), "messages=dialog")
    return (f"has no text, messages, conversations or prompt+completion field (its fields: "
            f"{keys}); name the columns with --data-fields, e.g. {example}")


def _messages(where: str, value: Any, name: str, system: Any = None) -> list[dict[str, Any]]:
    """`value` checked as a list of messages; ShareGPT turns (from/value) translated first,
    with the record's `system` string opening them."""
    if is_sharegpt(value):
        try:
            value = to_messages(value, system)
        except UnknownFrom as exc:
            raise BadRecord(where, f"{name}{exc}") from None
    if not isinstance(value, list) or not value:
        raise BadRecord(where, f"{name} must be a non-empty list of {{role, content}} messages")
    value = list(value)  # content parts are replaced by their text below, not in the caller's
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRecord(where, f"{name}[{i}] is not a {{role, content}} message")
        if message["role"] == "function":  # OpenAI's legacy name for what a tool returned
            raise BadRecord(where, f"{name}[{i}] has role 'function', OpenAI's legacy role for "
                            "a function's result; write it as role 'tool' (its name and "
                            "content as they are; the call before it as the assistant's "
                            "tool_calls)")
        if message["role"] not in ROLES:
            raise BadRecord(where, f"{name}[{i}] has role {message['role']!r}; roles are "
                            f"{', '.join(ROLES)}{_role_hint(message['role'])}")
        if message.get("function_call") is not None and not message.get("tool_calls"):
            # OpenAI's legacy call: templates read tool_calls, so it would train as nothing
            raise BadRecord(where, f"{name}[{i}] ({message['role']}) has a function_call, "
                            "OpenAI's legacy form of a tool call; write it as tool_calls: "
                            "[{\"type\": \"function\", \"function\": {\"name\": ..., "
                            "\"arguments\": ...}}]")
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list)
                                      and all(isinstance(c, dict) for c in calls)):
            raise BadRecord(where, f"{name}[{i}] ({message['role']}) has tool_calls that are "
                            f"{json_kind(calls)}, not a list of calls: write "
                            "[{\"type\": \"function\", \"function\": {\"name\": ..., "
                            "\"arguments\": ...}}]")
        content = message.get("content")
        if isinstance(content, list):
            value[i] = message = {**message, "content": _text_of_parts(where, content,
                                                                       f"{name}[{i}]")}
        elif not (isinstance(content, str) or
                  (content is None and message.get("tool_calls"))):
            what = "no content" if content is None else \
                f"content that is {json_kind(content)}"
            raise BadRecord(where, f"{name}[{i}] ({message['role']}) has {what}: give it a "
                            "string (\"\" where it says nothing), a list of text parts, or, for "
                            "the assistant, tool_calls")
    return value


# role names other formats use, and the role each means here
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "ai": "assistant", "developer": "system", "function": "tool",
                 "ipython": "tool"}


def _role_hint(role: str) -> str:
    """How to write an unknown role that means one of ours (a capitalised one, another
    format's name for it); "" when none is known."""
    ours = role.lower() if role.lower() in ROLES else _ROLE_ALIASES.get(role.lower())
    return f" (write {ours!r} for {role!r})" if ours else ""


def _text_of_parts(where: str, parts: list[Any], name: str) -> str:
    """OpenAI's content as a list of parts ([{"type": "text", "text": ...}]) as the text its
    parts hold, joined with nothing between them, as the templates that read parts (Llama 4,
    Gemma 3, Qwen2-VL, Mistral's) join them: a template that prints `{{ content }}` would
    otherwise render the list's Python repr, and the model would learn to write it. A part
    that is not text (an image, audio) is a bad record: the engine trains on text."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        what = ("a text part whose text is no string" if kind == "text" else
                f"a {kind!r} part" if isinstance(kind, str) else "not a {type, text} part")
        raise BadRecord(where, f"{name} content[{j}] is {what}; kdengine trains on text parts "
                        "only ({\"type\": \"text\", \"text\": ...}): drop the other parts, "
                        "or the record")
    return "".join(texts)


def _decoded_lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:  # the first line may open with a byte-order mark (Windows editors)
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                        raise BadRecord(name, f"{not_utf8(raw, 0)}: save it as UTF-8") from None
                    raise BadRecord(f"{name}:{number}", f"is not UTF-8 text (byte {exc.start} "
                                    "of the line): save the file as UTF-8") from None
    except OSError as exc:
        raise BadRecord(name, f"cannot be read: {exc.strerror or exc}") from None


def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    for number, line in _decoded_lines(path, name):
        if not line.strip():
            continue
        try:
            # without its line end: an error there is at the line's last column, not at
            # column 1 of a line after it
            yield f"{name}:{number}", json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            why = json_error_text(exc)
            raise BadRecord(f"{name}:{number}", f"is not JSON ({why}): fix the line (one "
                            "JSON object a line)") from None


def _json_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no error
        # an empty file is no data, as an empty .jsonl or Parquet file is, not bad JSON
        data = json.loads(text) if text.strip() else []
    except OSError as exc:
        raise BadRecord(name, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadRecord(name, f"{not_utf8(exc.object[:2], exc.start)}: save it as UTF-8") \
            from None
    except json.JSONDecodeError as exc:
        why = json_error_text(exc)
        raise BadRecord(f"{name}:{exc.lineno}", f"is not JSON ({why}): fix that line of the "
                        "file") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]}, as some exporters write it
    if not isinstance(data, list):
        raise BadRecord(name, "must hold a JSON array of records (or use .jsonl, one a line)")
    for i, row in enumerate(data):
        yield f"{name}:record {i}", row


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("data", f"parquet and arrow data need pyarrow: {DATA_EXTRA}") from None
    return pyarrow


def _batches_rows(batches, name: str) -> Iterator[tuple[str, Any]]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield f"{name}:row {row}", record
            row += 1


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    pa = _pyarrow()
    try:
        batches = pa.parquet.ParquetFile(path).iter_batches(batch_size=1024)
        yield from _batches_rows(batches, name)
    except (OSError, pa.ArrowException) as exc:
        raise BadRecord(name, f"is not a readable parquet file ({exc})") from None


def _arrow_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """Arrow IPC: the stream format (what `datasets` writes) or the file format (feather v2)."""
    pa = _pyarrow()
    try:
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                file_reader = pa.ipc.open_file(source)
                reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            yield from _batches_rows(reader, name)
    except (OSError, pa.ArrowException) as exc:
        raise BadRecord(name, f"is not a readable arrow file ({exc})") from None


def _saved_dataset_rows(path: Path, name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError("data", f"a saved dataset needs the datasets library: "
                          f"{DATA_EXTRA}") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several kinds for a damaged folder
        raise BadRecord(name, f"is not a readable saved dataset ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError("data_split", f"{path} has no split {split!r} (it has "
                              f"{', '.join(loaded)})")
        loaded, name = loaded[split], f"{name}[{split}]"
    for start in range(0, len(loaded), 1024):
        rows = loaded[start:start + 1024]  # a dict of columns
        columns = list(rows)
        for i, values in enumerate(zip(*(rows[c] for c in columns), strict=True)):
            yield f"{name}:row {start + i}", dict(zip(columns, values, strict=True))


def _text_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")  # a byte-order mark
    except OSError as exc:
        raise BadRecord(name, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadRecord(name, f"{not_utf8(exc.object[:2], exc.start)}: save it as UTF-8") \
            from None
    if text.strip():
        yield name, {"text": text}
