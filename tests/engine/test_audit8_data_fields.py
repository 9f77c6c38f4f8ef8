"""--data-fields naming a column the data does not have: silently unused, or refused as "got str
and NoneType" without naming the column or the flag."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import one_line_in_process as one_line  # noqa: E402


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}?"},
                         {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit8-fields")
    teacher, student = write_chat_pair(root)
    return {"root": root, "teacher": teacher, "student": student,
            "chats": write_jsonl(root / "chats.jsonl", [chat(i) for i in range(40)])}


def check(made: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
            "--data", str(data), "--seq-len", "128", "--batch-size", "2", "--device", "cpu",
            "--check", *extra]


def test_data_fields_column_no_record_has_is_refused(made, capsys) -> None:
    """`--data-fields text=body` on data with no `body` column trained on the records' other
    fields as if the flag were not given. Now --check refuses it, naming the column and the
    fields the data has."""
    line = one_line(capsys, main(check(made, made["chats"], "--data-fields", "text=body")),
                    "train")
    assert line.startswith("kdengine train: error: --data-fields: text=body names column "
                           "'body', which no record of")
    assert "(their fields: messages)" in line


def test_data_fields_column_missing_from_a_pair_names_the_mapping(made, tmp_path,
                                                                  capsys) -> None:
    """A typo in the mapped column (`completion=answr`) was refused as `prompt and completion
    must both be strings or both be message lists (got str and NoneType)`: not the column, nor
    the flag. Now the line names the column the record lacks, the mapping and its fields."""
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"}
                                               for i in range(20)])
    line = one_line(capsys, main(check(made, data, "--data-fields",
                                       "prompt=question,completion=answr")), "train")
    assert f"{data}:1: has no column 'answr' (--data-fields completion=answr; its fields: " \
           "answer, question)" in line
