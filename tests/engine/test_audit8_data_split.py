"""--data-split on a single file: trained on the whole file as if it were that split."""

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

    root = tmp_path_factory.mktemp("audit8-split")
    teacher, student = write_chat_pair(root)
    return {"root": root, "teacher": teacher, "student": student,
            "chats": write_jsonl(root / "chats.jsonl", [chat(i) for i in range(40)])}


def check(made: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
            "--data", str(data), "--seq-len", "128", "--batch-size", "2", "--device", "cpu",
            "--check", *extra]


def test_data_split_on_a_single_file_is_refused(made, capsys) -> None:
    """`--data-split test` on one JSONL file trained on the whole file as if it were the test
    split; the docs promise a split the data lacks is refused. Now it is, naming the flag."""
    line = one_line(capsys, main(check(made, made["chats"], "--data-split", "test")), "train")
    assert line.startswith("kdengine train: error: --data-split: ")
    assert "has no split 'test' (one file, whose name says no split: train only)" in line
