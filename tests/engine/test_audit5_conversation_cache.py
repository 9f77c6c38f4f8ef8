"""A teacher cache of conversations as a new user meets it: `kdengine cache-teacher` on chat data
with a bad record, and a run whose field mapping is not the cache's. Each is one line, exit 2,
naming the flag and the fix, before any directory is made."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process as one_line  # noqa: E402


def conversation(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{2 * i}."}]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny teacher and student with a ChatML template, and chat data whose records carry
    the same conversation as `messages` and as `dialog` (read either way)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit5-chat-cache")
    teacher, student = write_chat_pair(root)
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": conversation(i),
                                        "dialog": conversation(i)}) + "\n"
                            for i in range(120)))
    return {"teacher": str(teacher), "student": str(student), "data": str(data),
            "root": str(root)}


def cache_args(made: dict[str, str], data: str, out: Path, *extra: str) -> list[str]:
    return ["cache-teacher", "--teacher", made["teacher"], "--data", data, "--seq-len", "128",
            "--top-k", "8", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.parametrize("cached, run, said", [
    ((), ("--data-fields", "messages=dialog"),
     "was written for no data_fields, the run has data_fields=messages=dialog: drop "
     "--data-fields, or write a cache for this run (kdengine cache-teacher ... --data-fields "
     "messages=dialog)"),
    (("--data-fields", "messages=dialog"), (),
     "was written for data_fields=messages=dialog, the run has no data_fields: set data_fields "
     "to messages=dialog, or write a cache for this run (kdengine cache-teacher ... without "
     "--data-fields)"),
])
def test_a_field_mapping_only_one_side_gave_is_named_as_given_or_not(
        made, tmp_path, capsys, cached, run, said) -> None:
    """The cache written without --data-fields, the run with it: the refusal said `written
    for data_fields=, ...: set data_fields to , or ... ` (an empty value printed as is); now
    it says which side gave none, and the flag to drop or give."""
    cache = tmp_path / "cache"
    assert main(cache_args(made, made["data"], cache, *cached)) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    code = main(["train", "--teacher-cache", str(cache), "--student", made["student"],
                 "--data", made["data"], "--seq-len", "128", "--steps", "2", "--device", "cpu",
                 "--run-dir", str(run_dir), "--check", *run])
    err = one_line(capsys, code, "train")
    assert err == f"kdengine train: error: --teacher-cache: {cache} {said}", err
    assert not run_dir.exists()


@pytest.mark.parametrize("check", [True, False], ids=["check", "job"])
def test_a_bad_record_is_refused_before_the_cache_directory_exists(
        made, tmp_path, capsys, check) -> None:
    """A chat JSONL whose line 5 is cut short: `kdengine cache-teacher --check` said ok (it
    never read the data) and the job then made --out, failed in its data stage with exit 1 and
    a traceback in its launch.log. Now both refuse it as `kdengine train` does, one line
    naming --data and the line, exit 2, no --out made."""
    lines = Path(made["data"]).read_text().splitlines(keepends=True)
    lines[4] = lines[4][:40] + "\n"
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(lines))
    out = tmp_path / "cache"
    err = one_line(capsys, main(cache_args(made, str(data), out,
                                           *(["--check"] if check else []))), "cache-teacher")
    assert err.startswith(f"kdengine cache-teacher: error: --data: {data}:5: is not JSON "), \
        err
    assert not out.exists()
