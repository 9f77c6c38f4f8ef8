"""docs/data.md, as a new user meets it (the twelfth audit): an empty `.json` file is empty data,
as an empty `.jsonl` or Parquet file is, not a JSON syntax error. Before, a 0-byte `chat.json`
was refused as `chat.json:1: is not JSON (Expecting value at column 1)`, and one beside good
files in a folder stopped the run (or was skipped as a bad file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import chat_record, one_line_in_process, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit12-data")
    teacher, student = write_chat_pair(root)
    return {"root": root, "teacher": teacher, "student": student}


def _check(made: dict[str, Path], data: Path, *extra: str) -> int:
    return main(["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
                 "--data", str(data), "--seq-len", "64", "--batch-size", "2", "--steps", "2",
                 "--device", "cpu", "--run-dir", str(data.parent / "run"), *extra, "--check"])


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_json_file_is_refused_as_holding_no_examples(made, tmp_path, capsys,
                                                              content: str) -> None:
    data = tmp_path / "chat.json"
    data.write_text(content)
    line = one_line_in_process(capsys, _check(made, data), "train")
    assert line.startswith(f"kdengine train: error: --data: {data} holds no examples"), line
    assert not (tmp_path / "run").exists()


def test_an_empty_json_file_beside_good_ones_in_a_folder_adds_nothing(made, tmp_path,
                                                                      capsys) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [chat_record(i) for i in range(40)])
    (folder / "b.json").write_text(json.dumps([chat_record(i) for i in range(40, 80)]))
    (folder / "c.json").write_text("")
    code = _check(made, folder)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["ok"] is True
