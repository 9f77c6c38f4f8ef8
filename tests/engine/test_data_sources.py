"""What --data may name, refused before any run when no reader takes it: a hub dataset id
(read from a local hub cache the test writes, HF_HUB_OFFLINE=1), one list of text suffixes for
raw text and example folders, a file of another format, JSONL whose fields are named otherwise,
and a folder without the chosen split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.config import ConfigError, RunConfig
from kdengine.data import read_documents
from kdengine.data.formats import find_sources
from kdengine.sources import check_sources

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import (  # noqa: E402
    TINY_TEXT,
    offline_hub,
    put_in_hub_cache,
    write_tiny_inputs,
)

CHAT = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]



@pytest.fixture
def hub_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A local hub cache holding the dataset kd-test/code (text records, train and test files);
    HF_HUB_OFFLINE=1, for this process and the commands it starts."""
    cache = tmp_path / "hub"
    records = [TINY_TEXT[i * 300:(i + 1) * 300] for i in range(40)]
    lines = "".join(json.dumps({"text": r}) + "\n" for r in records)
    put_in_hub_cache(cache, "kd-test/code", {"data/train.jsonl": lines,
                                             "data/test.jsonl": lines[:2000],
                                             "README.md": "# code\n"}, kind="dataset")
    return offline_hub(monkeypatch, cache, tmp_path / "hf-home")


def _engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdengine", *args], capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())


def test_a_hub_dataset_id_is_read_from_the_local_cache_by_both_commands(
        hub_data: dict, tmp_path: Path, engine_in_process) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")
    models = ["--teacher", inputs["teacher"], "--student", inputs["student"]]
    assert check_sources(RunConfig(teacher=inputs["teacher"], student=inputs["student"],
                                   data="kd-test/code")) is not None
    assert [s.name for s in find_sources("kd-test/code")] == ["data/train.jsonl"]
    done = engine_in_process("train", *models, "--data", "kd-test/code", "--seq-len", "32",
                             "--check")
    assert done.returncode == 0, done.stderr
    done = engine_in_process("cache-teacher", "--teacher", inputs["teacher"], "--data",
                             "kd-test/code", "--seq-len", "32", "--check")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_hub_dataset_missing_offline_is_one_line_naming_data_before_any_run_dir(
        hub_data: dict, tmp_path: Path, one_line_refusal, engine_in_process) -> None:
    inputs = write_tiny_inputs(tmp_path / "in")
    for command, models in (("train", ["--teacher", inputs["teacher"], "--student",
                                       inputs["student"]]),
                            ("cache-teacher", ["--teacher", inputs["teacher"]])):
        for check in ([], ["--check"]):
            # train's run as a user's process; the others in this process (the same CLI)
            run = _engine if (command, check) == ("train", []) else engine_in_process
            done = run(command, *models, "--data", "kd-test/missing", "--seq-len", "32", *check)
            line = one_line_refusal(done, command, "--data: kd-test/missing is not a local "
                                    "path, and not in the local hub cache as a dataset")
            assert "HF_HUB_OFFLINE=1 forbids downloading it" in line
            assert "download the dataset first, or unset HF_HUB_OFFLINE" in line
    assert not (tmp_path / "runs").exists()


def test_a_hub_dataset_the_hub_does_not_have_is_one_line_naming_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Online (no network in tests: the hub's answer is stood in for)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    def snapshot_download(repo_id: str, *, local_files_only: bool = False, **_):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        exc = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(exc, "404 Client Error: Repository Not Found")
        raise exc

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    check_sources(RunConfig(teacher="demo://teacher", student="demo://student",
                            data="kd-test/nothing"))  # left to the reader: it may download
    with pytest.raises(ConfigError) as info:
        find_sources("kd-test/nothing")
    assert info.value.field == "data"
    assert info.value.message.startswith("kd-test/nothing is not a local path, and the hub "
                                         "has no dataset kd-test/nothing")
    assert "\n" not in info.value.message


def test_a_folder_of_examples_reads_its_py_files_as_text_like_a_raw_text_folder(
        tmp_path: Path) -> None:
    import kdengine.data
    import kdengine.data.formats

    assert kdengine.data.TEXT_SUFFIXES is kdengine.data.formats.TEXT_SUFFIXES
    assert ".py" in kdengine.data.TEXT_SUFFIXES
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    (folder / "tool.py").write_text("def f(x):\n    return x\n")
    kinds = [(e.name, e.kind) for s in find_sources(str(folder)) for e in s.examples()]
    assert kinds == [("chat.jsonl:1", "messages"), ("tool.py", "text")]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.md").write_text("# notes\n")
    (raw / "tool.py").write_text("def f(x):\n    return x\n")
    assert [d.name for d in read_documents(str(raw))] == ["notes.md", "tool.py"]


@pytest.mark.parametrize("name", ["pairs.csv", "config.yaml", "LICENSE"])
def test_a_file_of_another_format_is_refused_naming_its_suffix(
        name: str, tmp_path: Path, one_line_refusal, engine_in_process) -> None:
    path = tmp_path / name
    path.write_text("question,answer\n" + "what is it,a test\n" * 500)
    suffix = f"a {path.suffix} file" if path.suffix else "a file without a suffix"
    said = f"--data: {path} is {suffix}, not a format kdengine reads (records: .jsonl, " \
        ".json, .parquet, .arrow; raw text: .txt, .md, .py, .rst, .text)"
    for read in (read_documents, find_sources):
        with pytest.raises(ConfigError, match="data: ") as info:
            read(str(path))
        assert f"--{info.value}".startswith(said)
    inputs = write_tiny_inputs(tmp_path / "in")
    done = engine_in_process("train", "--teacher", inputs["teacher"], "--student",
                             inputs["student"], "--data", str(path), "--seq-len", "64", "--check")
    one_line_refusal(done, "train", said)


@pytest.mark.parametrize("suffix", [".txt", ".md", ".py", ".rst", ".text"])
def test_every_documented_raw_text_suffix_is_still_one_document(suffix: str,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / f"doc{suffix}"
    path.write_text(TINY_TEXT)
    assert [d.text for d in read_documents(str(path))] == [TINY_TEXT]


@pytest.mark.parametrize("line, said", [
    ({"dialog": CHAT}, "has no text, messages, conversations or prompt+completion field (its "
     "fields: dialog); name the columns with --data-fields, e.g. messages=dialog"),
    ({"body": "x", "id": 3}, "has no text, messages, conversations or prompt+completion field "
     "(its fields: "
     "body, id); name the columns with --data-fields, e.g. text=body"),
    ([1, 2], "is a list, not a record (an object of fields); give each line a JSON object "
     "with a text field (or messages, or prompt and completion)"),
])
def test_jsonl_without_our_fields_lists_its_fields_and_names_data_fields(
        line: object, said: str, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ConfigError) as info:
        read_documents(str(path))
    assert info.value.field == "data"
    assert info.value.message.startswith(f"{path}:1 {said}"), info.value.message


def test_the_data_fields_the_hint_names_read_the_jsonl(tmp_path: Path) -> None:
    from kdengine.data.formats import is_example_data, parse_fields

    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"conversations": CHAT}) + "\n")
    body = tmp_path / "body.jsonl"
    body.write_text(json.dumps({"text": "first"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    for path, fields, kinds in ((conv, "messages=conversations", ["messages"]),
                                (body, "text=body", ["text", "text"])):
        mapping = parse_fields(fields)
        assert is_example_data(str(path), mapping)
        assert [e.kind for s in find_sources(str(path), fields=mapping)
                for e in s.examples()] == kinds


def test_a_folder_without_the_split_names_data_split_and_the_splits_it_has(
        tmp_path: Path) -> None:
    named = tmp_path / "named"
    named.mkdir()
    for split in ("train", "test"):
        (named / f"{split}.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(ConfigError) as info:
        find_sources(str(named), split="validation")
    assert (info.value.field, info.value.message) == (
        "data_split", f"{named} has no split 'validation' (it has train, test)")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "chats.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(ConfigError) as info:
        find_sources(str(plain), split="test")
    assert info.value.field == "data_split"
    assert info.value.message.startswith(f"{plain} has no split 'test' (it has train only")


def test_the_cli_blames_data_split_for_a_missing_split(tmp_path: Path, one_line_refusal,
                                                       engine_in_process) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    inputs = write_tiny_inputs(tmp_path / "in")
    done = engine_in_process("train", "--teacher", inputs["teacher"], "--student",
                             inputs["student"], "--data", str(folder), "--data-split",
                             "validation", "--seq-len", "64", "--check")
    one_line_refusal(done, "train", f"--data-split: {folder} has no split 'validation' (it "
                     "has train, test)")


def test_a_missing_file_path_shaped_like_a_repo_id_is_a_missing_file(tmp_path, monkeypatch):
    """`data/x.jsonl` that is not there is a typo, not a hub dataset to look up."""
    from kdengine.config import ConfigError
    from kdengine.data.formats import check_data_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_data_source("data/x.jsonl")
    assert "data/x.jsonl does not exist" in str(refused.value)
