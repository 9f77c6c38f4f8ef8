"""docs/data.md's promises about bad --data, through the real CLI on tiny models: every bad-data
case stops before training with one line naming --data and the fix, exit 2, no run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_TEXT  # noqa: E402

TIMEOUT = 300
FORMATS = ("(records: .jsonl, .json, .parquet, .arrow; raw text: .txt, .md, .py, .rst, .text)")


def _check(inputs: dict[str, str], tiny_args, run_dir: Path, data: Path, *extra: str,
           check: bool = True, engine=None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a process of its own; `engine`: through it instead
    (engine_in_process: kdengine.cli.main in this process, no torch import to pay again)."""
    args = [*tiny_args({**inputs, "data": str(data)}, run_dir), *extra,
            *(["--check"] if check else [])]
    if engine is not None:
        return engine(*args)
    return subprocess.run([sys.executable, "-m", "kdengine", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_text_file_with_an_upper_case_suffix_is_refused_with_the_rename(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal, check, engine_in_process) -> None:
    # data.md: a file of another suffix is refused naming --data, its suffix and the formats
    # read. NOTES.TXT was told ".TXT is not a format ... raw text: .txt" and to "convert it to
    # one, e.g. JSONL"; the fix is a rename
    notes = tmp_path / "NOTES.TXT"
    notes.write_text(TINY_TEXT)
    # the plain run as a user's process; --check through the CLI in this process
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", notes, check=check,
                  engine=engine_in_process if check else None)
    line = one_line_refusal(done, "train", f"--data: {notes} is a .TXT file, not a format "
                            f"kdengine reads {FORMATS}; ")
    assert line.endswith("rename it to NOTES.txt (suffixes are read in lower case)"), line
    assert not (tmp_path / "run").exists()


def test_a_csv_file_is_still_told_to_convert(tiny_run_inputs, tiny_args, tmp_path,
                                             one_line_refusal, engine_in_process) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\n1,2\n")
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", pairs, engine=engine_in_process)
    assert one_line_refusal(done, "train", "--data: ") == (
        f"kdengine train: error: --data: {pairs} is a .csv file, not a format kdengine reads "
        f"{FORMATS}; convert it to one, e.g. JSONL")


@pytest.mark.parametrize(("names", "said"), [
    (["A.TXT"], "A.TXT ends in an upper-case suffix, which kdengine does not read: rename it "
                "to A.txt"),
    (["A.TXT", "b.Md", "c.JSONL"], "A.TXT and 2 more end in an upper-case suffix, which "
                                   "kdengine does not read: rename them to lower case"),
], ids=["one", "three"])
def test_a_folder_of_upper_case_suffixes_names_them(tiny_run_inputs, tiny_args, tmp_path,
                                                    one_line_refusal, names, said,
                                                    engine_in_process) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in names:
        (folder / name).write_text(json.dumps({"text": TINY_TEXT}) if "JSON" in name
                                   else TINY_TEXT)
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", folder, engine=engine_in_process)
    line = one_line_refusal(done, "train", f"--data: {folder} holds no ")
    assert line.endswith(said), line


def test_a_folder_with_nothing_readable_says_so_without_a_rename(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal, engine_in_process) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "table.csv").write_text("a,b\n")
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", folder, engine=engine_in_process)
    line = one_line_refusal(done, "train", f"--data: {folder} holds no ")
    assert "rename" not in line and line.endswith("beside *.bin shards)"), line


def _tokens(done: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["preflight"]
    return found["train_tokens"], found["val_tokens"]


def test_a_jsonl_file_opening_with_a_byte_order_mark_is_utf8_as_any_other(
        tiny_run_inputs, tiny_args, tmp_path, engine_in_process) -> None:
    # getting-started: "every file must be UTF-8"; a UTF-8 file that Notepad or PowerShell
    # saved with a byte-order mark was refused ("Unexpected UTF-8 BOM (decode using
    # utf-8-sig)") as if its first line were not JSON
    lines = "".join(json.dumps({"text": TINY_TEXT[i:i + 2000]}) + "\n"
                    for i in range(0, len(TINY_TEXT), 2000))
    plain, marked = tmp_path / "plain" / "notes.jsonl", tmp_path / "marked" / "notes.jsonl"
    for path, data in ((plain, lines.encode()), (marked, b"\xef\xbb\xbf" + lines.encode())):
        path.parent.mkdir()
        path.write_bytes(data)
    without = _check(tiny_run_inputs, tiny_args, tmp_path / "run", plain,
                     engine=engine_in_process)
    with_mark = _check(tiny_run_inputs, tiny_args, tmp_path / "run", marked,
                       engine=engine_in_process)
    assert _tokens(with_mark) == _tokens(without)  # the same documents, the mark in none


def test_example_files_opening_with_a_byte_order_mark_are_read(tiny_run_inputs, tiny_args,
                                                               tmp_path, engine_in_process) -> None:
    records = [{"prompt": f"Q{i}: what is {i} + {i}?", "completion": f" {2 * i}."}
               for i in range(200)]
    jsonl, array = tmp_path / "pairs.jsonl", tmp_path / "pairs.json"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in records).encode())
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())
    for data in (jsonl, array):
        done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", data, engine=engine_in_process)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("value", "kind"), [("null", "null"), ("5", "a number"),
                                             ('["a"]', "a list")])
def test_a_text_field_of_another_kind_says_what_it_is(tiny_run_inputs, tiny_args, tmp_path,
                                                      one_line_refusal, value, kind,
                                                      engine_in_process) -> None:
    # data.md: a JSONL line without a text string is refused naming file:line; a null text
    # was told it has no text field, "(its fields: text)"
    data = tmp_path / "notes.jsonl"
    data.write_text(json.dumps({"text": TINY_TEXT}) + "\n" + f'{{"text": {value}}}\n')
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", data, engine=engine_in_process)
    line = one_line_refusal(done, "train", f"--data: {data}:2 has a text field that is {kind}, "
                            "not a string; give each line a text string")
    # the only file: skipping it would leave nothing to train on, so it is not offered
    assert line.endswith("not a string; give each line a text string"), line
