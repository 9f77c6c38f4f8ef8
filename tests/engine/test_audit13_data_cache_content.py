"""A teacher cache knows its data by what the files hold, not by their times: `touch data.txt`
made a finished cache unusable ("its files' paths, sizes or times differ"); an unchanged file now
keeps its cache, a changed one is refused saying the contents changed, and a cache an older
kdengine wrote (by the files' times) keeps working while they are its times."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import chat_record, write_chat_pair


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("content")
    teacher, student = write_chat_pair(root)
    text = root / "text"
    text.mkdir()
    for i in range(3):
        (text / f"doc{i}.txt").write_text("".join(f"line {i} {j} of the text\n"
                                                  for j in range(60)))
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps(chat_record(i)) + "\n" for i in range(40)))
    return {"teacher": teacher, "student": student, "text": text, "chats": chats}


def _cache(engine_in_process, inputs: dict[str, Path], data: Path, out: Path) -> None:
    done = engine_in_process("cache-teacher", "--teacher", str(inputs["teacher"]), "--data",
                             str(data), "--seq-len", "64", "--device", "cpu", "--dtype",
                             "float32", "--top-k", "4", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr


def _check(engine_in_process, inputs: dict[str, Path], data: Path, cache: Path):
    return engine_in_process("train", "--teacher-cache", str(cache), "--student",
                             str(inputs["student"]), "--data", str(data), "--seq-len", "64",
                             "--batch-size", "2", "--check")


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.mark.parametrize("kind", ["text", "chats"])
def test_audit13_a_touched_file_keeps_its_teacher_cache(engine_in_process, one_line_refusal,
                                                        inputs, tmp_path, kind) -> None:
    data = tmp_path / kind
    if inputs[kind].is_dir():
        data.mkdir()
        for f in inputs[kind].iterdir():
            (data / f.name).write_bytes(f.read_bytes())
        changed = data / "doc1.txt"
    else:
        data = data.with_suffix(".jsonl")
        data.write_bytes(inputs[kind].read_bytes())
        changed = data
    cache = tmp_path / "cache"
    _cache(engine_in_process, inputs, data, cache)
    _touch(changed)
    done = _check(engine_in_process, inputs, data, cache)
    assert done.returncode == 0, done.stderr
    # each file digested once for its stat, remembered for the next check
    memo = json.loads((Path(os.environ["KDENGINE_CACHE"]) / "data" / "digests.json").read_text())
    st = changed.stat()
    assert f"{changed.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}" in memo
    with changed.open("a") as f:  # the same size would do too: the bytes decide
        f.write(json.dumps(chat_record(99)) + "\n" if kind == "chats" else "one more line\n")
    line = one_line_refusal(_check(engine_in_process, inputs, data, cache), "train",
                            f"--teacher-cache: {cache} was written from {data}, which is not "
                            f"the run's data {data} now (its files' contents, names or sizes")
    assert "changed since" in line and line.endswith("write the cache again for this data")


def test_audit13_an_older_cache_works_until_its_files_times_change(
        engine_in_process, one_line_refusal, inputs, tmp_path) -> None:
    """A cache written before content identities (its data 'files:<hash of path, size,
    mtime>') is taken, by `kdengine train` and by the same `kdengine cache-teacher` command
    (complete already, not 'another teacher cache'), and refused once a file is touched, with
    a line that says why."""
    from kdengine.config import RunConfig
    from kdengine.data import ByteTokenizer
    from kdengine.teacher.cache import cache_key
    from kdengine.teacher.identity import legacy_data_identity

    data = tmp_path / "text"
    data.mkdir()
    for f in inputs["text"].iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "cache"
    _cache(engine_in_process, inputs, data, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    # as an older writer recorded it (the tokenizer is the teacher's byte-level BPE: the
    # identity of raw text does not depend on it)
    old = legacy_data_identity(RunConfig(data=str(data)), ByteTokenizer(), None)
    assert old.startswith("files:")
    manifest["identity"]["data"] = manifest["data"]["identity"] = old
    manifest["key"] = cache_key(manifest["identity"])
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert _check(engine_in_process, inputs, data, cache).returncode == 0
    again = engine_in_process("cache-teacher", "--teacher", str(inputs["teacher"]), "--data",
                              str(data), "--seq-len", "64", "--device", "cpu", "--dtype",
                              "float32", "--top-k", "4", "--out", str(cache))
    assert again.returncode == 0, again.stderr
    assert "is complete already" in again.stdout
    _touch(data / "doc0.txt")
    line = one_line_refusal(_check(engine_in_process, inputs, data, cache), "train",
                            f"--teacher-cache: {cache} was written from {data}")
    assert "an older kdengine wrote the cache, and knew the data by its files' paths, sizes " \
        "and times, which changed since" in line
