"""Data whose names the validation hash holds out none of: the last example was held out even
when it had nothing to train (a trailing user-only or system-only record), and the run was
refused for validation rows without trained tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_chat_pair

    root = tmp_path_factory.mktemp("audit8-val")
    teacher, student = write_chat_pair(root)
    rows = [{"messages": [{"role": "user", "content": f"q{i}?"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(40)]
    rows.append({"messages": [{"role": "user", "content": "a prompt left with no answer"}]})
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"teacher": teacher, "student": student, "data": data}


def test_fallback_validation_example_is_one_that_trains(made, capsys) -> None:
    """No name hashed into validation (--val-fraction 0.0001), the last record user-only:
    refused with `the 1 validation rows hold no trained tokens`. Now the last example that
    trains is held out, and the check passes."""
    code = main(["train", "--teacher", str(made["teacher"]), "--student", str(made["student"]),
                 "--data", str(made["data"]), "--seq-len", "128", "--batch-size", "2",
                 "--val-fraction", "0.0001", "--device", "cpu", "--check"])
    assert code == 0, capsys.readouterr().err
