"""Every --data refusal names the file or folder it is about by its full path, as the run has it
(not `tokens.json:`, `a.bin`, `chat.jsonl:1` or no path at all), with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def check(tiny_run_inputs, tmp_path, capsys):
    """check(data) -> the one line `kdengine train --check` refused it with (exit 2)."""
    from kdengine.cli import main

    def run(data: Path, *extra: str) -> str:
        code = main(["train", "--teacher", tiny_run_inputs["teacher"], "--student",
                     tiny_run_inputs["student"], "--data", str(data), "--seq-len", "32",
                     "--batch-size", "4", "--device", "cpu", "--run-dir",
                     str(tmp_path / "run"), "--check", *extra])
        out = capsys.readouterr()
        assert code == 2 and out.out == "", out
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.err, out.err
        assert not (tmp_path / "run").exists()
        return lines[0]
    return run


def _shards(folder: Path, ids: list[int], eos_id: int = 256) -> Path:
    folder.mkdir()
    (folder / "tokens.json").write_text(json.dumps({"format": "kdengine-tokens",
                                                    "dtype": "uint16", "eos_id": eos_id}))
    np.array(ids, dtype="<u2").tofile(folder / "shard-000.bin")
    return folder


def test_text_shorter_than_a_batch_names_its_path(check, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("tiny text\n")
    line = check(short)
    assert f"--data: {short} has 11 tokens (0 train, 11 validation), shorter than" in line
    assert "give more data, or a smaller --seq-len or --batch-size)" in line


def test_shards_shorter_than_a_batch_name_their_folder(check, tmp_path) -> None:
    folder = _shards(tmp_path / "shards", [1, 2, 256])
    assert f"--data: {folder} has 3 tokens" in check(folder)


def test_a_shard_id_beyond_the_vocab_names_the_shards_path(check, tmp_path) -> None:
    folder = _shards(tmp_path / "shards", [300] + [5] * 4999)
    line = check(folder)
    assert f"--data: {folder / 'shard-000.bin'} holds token id 300" in line
    assert "tokenize it with the teacher's" in line


def test_an_eos_id_beyond_the_vocab_names_tokens_json_by_its_path(check, tmp_path) -> None:
    folder = _shards(tmp_path / "shards", [5] * 5000, eos_id=999)
    line = check(folder)
    assert f"--data: {folder / 'tokens.json'}: eos_id 999 is beyond" in line
    assert "tokenize it with the teacher's" in line


def test_a_bad_record_names_its_files_path_and_line(check, tmp_path) -> None:
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "good.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (chats / "chat.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}) + "\n")
    line = check(chats)
    assert f"--data: {chats / 'chat.jsonl'}:1: messages[1] has role 'robot'" in line
    assert "(skip bad files with --on-bad-file skip)" in line


def test_examples_too_few_for_a_batch_name_their_path(check, tmp_path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    line = check(pairs)
    assert f"--data: {pairs} has 1 example, packed into" in line
    assert "give more data, or a smaller --batch-size)" in line  # the flag one types


def test_a_conversation_without_a_chat_template_names_its_files_path(check, tmp_path) -> None:
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "train.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    line = check(chats)
    assert f"--data: {chats / 'train.jsonl'}:1 is a conversation, but the teacher's " in line
    assert "add chat_template.jinja" in line


@pytest.mark.parametrize("kind", ["text", "examples"])
def test_data_with_nothing_to_train_on_says_the_fix(check, tmp_path, kind) -> None:
    empty = tmp_path / ("empty.jsonl" if kind == "text" else "empty.json")
    empty.write_text("\n\n" if kind == "text" else "[]")
    line = check(empty)
    assert line.startswith(f"kdengine train: error: --data: {empty} ")
    assert line.endswith("; give data that holds text or records")


def test_data_whose_every_file_is_skipped_says_the_fix(check, tmp_path) -> None:
    folder = tmp_path / "allbad"
    folder.mkdir()
    (folder / "a.jsonl").write_text("{bad\n")
    (folder / "b.txt").write_bytes(b"\xff\xfe")
    line = check(folder, "--on-bad-file", "skip")
    assert f"--data: {folder} is empty: no text to train on (all 2 files skipped; first: " in line
    assert line.endswith("; fix those files (the first is named), or give other data")
