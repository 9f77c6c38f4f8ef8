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
           check: bool = True) -> subprocess.CompletedProcess[str]:
    args = tiny_args({**inputs, "data": str(data)}, run_dir)
    return subprocess.run([sys.executable, "-m", "kdengine", *args, *extra,
                           *(["--check"] if check else [])],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_a_text_file_with_an_upper_case_suffix_is_refused_with_the_rename(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal, check) -> None:
    # data.md: a file of another suffix is refused naming --data, its suffix and the formats
    # read. NOTES.TXT was told ".TXT is not a format ... raw text: .txt" and to "convert it to
    # one, e.g. JSONL"; the fix is a rename
    notes = tmp_path / "NOTES.TXT"
    notes.write_text(TINY_TEXT)
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", notes, check=check)
    line = one_line_refusal(done, "train", f"--data: {notes} is a .TXT file, not a format "
                            f"kdengine reads {FORMATS}; ")
    assert line.endswith("rename it to NOTES.txt (suffixes are read in lower case)"), line
    assert not (tmp_path / "run").exists()


def test_a_csv_file_is_still_told_to_convert(tiny_run_inputs, tiny_args, tmp_path,
                                             one_line_refusal) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\n1,2\n")
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", pairs)
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
                                                    one_line_refusal, names, said) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in names:
        (folder / name).write_text(json.dumps({"text": TINY_TEXT}) if "JSON" in name
                                   else TINY_TEXT)
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", folder)
    line = one_line_refusal(done, "train", f"--data: {folder} holds no ")
    assert line.endswith(said), line


def test_a_folder_with_nothing_readable_says_so_without_a_rename(
        tiny_run_inputs, tiny_args, tmp_path, one_line_refusal) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "table.csv").write_text("a,b\n")
    done = _check(tiny_run_inputs, tiny_args, tmp_path / "run", folder)
    line = one_line_refusal(done, "train", f"--data: {folder} holds no ")
    assert "rename" not in line and line.endswith("beside *.bin shards)"), line
